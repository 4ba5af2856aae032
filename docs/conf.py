"""Sphinx configuration of nnlab's documentation site (``sphinx-build -W docs docs/_build``)."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))
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
exclude_patterns = ["_build", "examples/*", "auto_examples/*.ipynb", "auto_examples/*.py", "auto_examples/*.zip", "auto_examples/*.md5", "auto_examples/*.codeobj.json"]
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
    lines[:] = [_escaped(summary), ""]
    if any(line.strip() for line in body):
        lines += ["::", ""] + ["    " + line for line in body] + [""]


def _escaped(text):
    """A summary as plain text: reStructuredText's markup characters escaped, ``code`` kept
    where its double backquotes pair up."""
    pieces = text.split("``")
    if len(pieces) % 2 == 0:
        pieces = [text.replace("``", "")]
    for index in range(0, len(pieces), 2):
        pieces[index] = pieces[index].replace("\\", "\\\\").replace("*", "\\*").replace("`", "\\`").replace("|", "\\|").replace("_", "\\_")
    return "``".join(pieces)


def setup(app):
    app.connect("autodoc-process-docstring", docstring_as_written)
