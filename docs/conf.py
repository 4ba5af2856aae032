"""Sphinx configuration of nnlab's documentation site (``sphinx-build -W docs docs/_build``)."""

import json
import os
import pathlib
import sys
import textwrap

sys.path.insert(0, os.path.abspath(".."))
sys.path.insert(0, os.path.abspath("."))
os.environ.setdefault("MPLBACKEND", "Agg")

project = "nnlab"
author = "the nnlab developers"
copyright = "nnlab developers"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "_generated", "examples/*", "auto_examples/*.ipynb", "auto_examples/*.py", "auto_examples/*.zip", "auto_examples/*.md5", "auto_examples/*.codeobj.json"]
myst_heading_anchors = 3

html_theme = "pydata_sphinx_theme"
html_title = "nnlab"
html_theme_options = {"navigation_depth": 2, "show_toc_level": 2}

autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
autodoc_typehints = "none"

sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "image_scrapers": ("matplotlib", "gallery_scrapers.headless_figures"),
}


def docstring_as_written(app, what, name, obj, options, lines):
    """nnlab's docstrings are derivations in plain text (formulas with ``*`` and ``^``,
    shapes such as ``(N, *)``): the reference shows them as written, in a literal block,
    after their first paragraph, rather than reading them as reStructuredText."""
    if not lines:
        return
    end = next((index for index, line in enumerate(lines) if not line.strip()), len(lines))
    summary = " ".join(line.strip() for line in lines[:end])
    body = lines[end:]
    while body and not body[0].strip():
        body = body[1:]
    body, examples = _examples_apart(body)
    lines[:] = [_escaped(summary), ""]
    if any(line.strip() for line in body):
        lines += ["::", ""] + ["    " + line for line in body] + [""]
    for example in examples:
        lines += [".. rubric:: Example", "", "::", ""] + ["    " + line for line in example] + [""]


def _examples_apart(lines):
    """(the other lines, [the lines of each ``Example::`` block]): the examples, which the
    tests run, are shown as code under a heading of their own."""
    rest, examples = [], []
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.strip() not in ("Example::", "Examples::"):
            rest.append(line)
            index += 1
            continue
        indent = len(line) - len(line.lstrip())
        index += 1
        block = []
        while index < len(lines) and (not lines[index].strip() or len(lines[index]) - len(lines[index].lstrip()) > indent):
            block.append(lines[index])
            index += 1
        examples.append(textwrap.dedent("\n".join(block)).strip("\n").splitlines())
    return rest, examples


def _escaped(text):
    """A summary as plain text: reStructuredText's markup characters escaped, ``code`` kept
    where its double backquotes pair up."""
    pieces = text.split("``")
    if len(pieces) % 2 == 0:
        pieces = [text.replace("``", "")]
    for index in range(0, len(pieces), 2):
        pieces[index] = pieces[index].replace("\\", "\\\\").replace("*", "\\*").replace("`", "\\`").replace("|", "\\|").replace("_", "\\_")
    return "``".join(pieces)


HERE = pathlib.Path(__file__).resolve().parent


def bench_tables(record):
    """Markdown tables of a ``nnlab bench --json`` record: times, graph overhead and memory,
    each ratio nnlab / torch, with the machine, date and command the record came from."""
    bench = record["bench"]
    lines = [
        f"Measured on {record['date']} by `{record['command']}` on {record['machine']};",
        f"torch {bench['torch']}, {bench['threads']} threads, medians of {bench['repeats']} interleaved runs"
        + (f"; memory: {bench['allocator']}, for both sides." if "allocator" in bench else "."),
        "The ratio is nnlab / torch: below 1 nnlab is faster.",
        "",
        "| case (forward + backward; steps: forward, loss, backward, SGD) | nnlab ms | torch ms | ratio |",
        "|---|---|---|---|",
    ]
    lines += [f"| {case['name']} | {case['ours_ms']:.2f} | {case['theirs_ms']:.2f} | {case['ratio']:.2f} |" for case in bench["cases"]]
    lines += [f"| geometric mean | | | {bench['cases_geometric_mean']:.2f} |", ""]
    lines += ["| the same layers as a graph model and as a Sequential | graph ms | Sequential ms | ratio |", "|---|---|---|---|"]
    lines += [f"| {case['name']} | {case['ours_ms']:.2f} | {case['theirs_ms']:.2f} | {case['ratio']:.2f} |" for case in bench["graph"]]
    lines += ["", "| bytes kept between forward and backward | nnlab MB | torch MB | ratio |", "|---|---|---|---|"]
    lines += [
        f"| {row['model']} | {row['nnlab_bytes'] / 1e6:.2f} | {row['torch_bytes'] / 1e6:.2f} | {row['ratio']:.2f} |"
        for row in bench["memory"]
    ]
    return "\n".join(lines) + "\n"


def write_bench_tables(app):
    """docs/speed.md includes these tables; they are made from docs/bench.json at every build,
    so the page shows the recorded measurement and nothing typed by hand."""
    record = json.loads((HERE / "bench.json").read_text(encoding="utf-8"))
    generated = HERE / "_generated"
    generated.mkdir(exist_ok=True)
    (generated / "bench.md").write_text(bench_tables(record), encoding="utf-8")


def setup(app):
    app.connect("autodoc-process-docstring", docstring_as_written)
    app.connect("builder-inited", write_bench_tables)
