"""Every ```python block of README.md and of the documentation pages (docs/**/*.md) runs:
the blocks of one page in order, as one script, so a page may set up what its later blocks
use. A page's blocks run in a fresh interpreter in a temporary folder (files they write
land there)."""

import argparse
import contextlib
import doctest
import importlib
import inspect
import io
import os
import pathlib
import pkgutil
import re
import shlex
import subprocess
import sys
import textwrap

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
PAGES = [page for page in PAGES if not {"_build", "_generated"} & set(page.parts)]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(page):
    return BLOCK.findall(page.read_text(encoding="utf-8"))


def script_of(page):
    """The page's blocks joined, each announced by a marker naming its number."""
    parts = []
    for number, block in enumerate(python_blocks(page), start=1):
        parts.append(f"print('--- block {number}', flush=True)\n{block}")
    return "\n".join(parts)


def test_the_pages_hold_examples():
    assert sum(len(python_blocks(page)) for page in PAGES) >= 5


@pytest.mark.parametrize("page", [page for page in PAGES if python_blocks(page)], ids=lambda page: str(page.relative_to(ROOT)))
def test_every_python_block_of_a_page_runs_in_order(page, tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", script_of(page)], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env
    )
    last_block = [line for line in result.stdout.splitlines() if line.startswith("--- block")][-1:]
    assert result.returncode == 0, f"{page.name}, {last_block}: {result.stderr[-3000:]}"


# The command lines of the pages ------------------------------------------------------------
# Every nnlab command line a page shows, in a shell block or as inline code, is parsed with
# the command's own parser (nothing runs), and each option must be one that --help shows:
# an old spelling the command still accepts quietly is refused here too.
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"(?<!`)`((?:python -m |torchrun [^`]*?-m )?nnlab [^`]*)`(?!`)")
LAUNCHER = re.compile(r"^(?:[A-Z_]+=\S+\s+)*(?:nnlab|python -m nnlab|torchrun\s.*?-m nnlab)(?:\s|$)")


def command_lines(page):
    """The nnlab command lines of a page: shell prompts, comments and continuation lines
    resolved, ``a && b`` split. Inline code counts when it gives options (``nnlab train``
    alone names the command) and holds no placeholder (``a|b``, ``...``)."""
    text = page.read_text(encoding="utf-8")
    lines = []
    for language, block in FENCE.findall(text):
        if language.startswith(("python", "{")):
            continue
        for line in block.replace("\\\n", " ").splitlines():
            lines += [part.strip() for part in line.removeprefix("$ ").split("&&")]
    for span in INLINE.findall(text):
        if " -" in span and "|" not in span and "..." not in span:
            lines.append(" ".join(span.split()))
    return [line for line in lines if LAUNCHER.match(line)]


def nnlab_arguments(line):
    """The arguments nnlab gets from a command line: what follows ``nnlab`` or ``-m nnlab``."""
    words = shlex.split(line, comments=True)
    start = next(index for index, word in enumerate(words) if word == "nnlab" and (index == 0 or words[index - 1] == "-m" or "=" in words[index - 1]))
    return words[start + 1 :]


def shown_options(parser, words):
    """The options --help shows for the (sub)command that ``words`` names."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for index, word in enumerate(words):
                if word in action.choices:
                    return shown_options(action.choices[word], words[index + 1 :])
    return {flag for action in parser._actions if action.help != argparse.SUPPRESS for flag in action.option_strings}


def parse_command_line(line):
    """None when nnlab parses the command line (running nothing) with options its --help
    shows, else what is wrong."""
    from nnlab import bench
    from nnlab.cli import build_parser

    arguments = nnlab_arguments(line)
    parser = build_parser()
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            args, unknown = parser.parse_known_args(arguments)
            if args.command == "bench":
                bench.parse_args(unknown)
                return None
    except SystemExit:
        return errors.getvalue().strip().splitlines()[-1]
    if unknown:
        return f"unrecognized arguments: {' '.join(unknown)}"
    shown = shown_options(parser, arguments)
    hidden = [word for word in arguments if word.startswith("--") and word.partition("=")[0] not in shown]
    return f"options --help does not show: {' '.join(hidden)}" if hidden else None


COMMAND_PAGES = [page for page in PAGES if command_lines(page)]


def test_the_pages_show_command_lines():
    assert sum(len(command_lines(page)) for page in COMMAND_PAGES) >= 20


@pytest.mark.parametrize("page", COMMAND_PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_command_line_of_a_page_parses(page):
    failures = [f"{line}\n    {error}" for line in command_lines(page) if (error := parse_command_line(line))]
    assert not failures, f"{page.name}: command lines the CLI refuses:\n" + "\n".join(failures)


def hidden_options(parser):
    """Every option spelling that nnlab accepts but no --help shows (the old spellings)."""
    hidden = {flag for action in parser._actions if action.help == argparse.SUPPRESS for flag in action.option_strings}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                hidden |= hidden_options(subparser)
    return hidden


def test_no_page_shows_an_old_option_spelling():
    from nnlab.cli import build_parser

    old = hidden_options(build_parser())
    assert "--out-dir" in old
    shown = {page.name: sorted(old & set(re.findall(r"--[a-z][a-z0-9-]*", page.read_text(encoding="utf-8")))) for page in PAGES}
    assert not {name: flags for name, flags in shown.items() if flags}


def test_old_spellings_and_unknown_options_are_caught():
    assert "--out-dir" in parse_command_line("nnlab experiment run -n a --out-dir x")
    assert "unrecognized arguments: --nope" in parse_command_line("nnlab train --nope")
    assert "--nope" in parse_command_line("nnlab bench --threads 2 --nope")
    assert parse_command_line("OMP_NUM_THREADS=1 torchrun --nproc-per-node 2 -m nnlab experiment run -n a -K 8 --out x") is None


# The examples of the docstrings ------------------------------------------------------------
# Every ``Example::`` block in the docstring of a public object of a public nnlab module runs:
# a doctest (``>>>`` lines, their output compared) or a plain script, in a fresh namespace,
# in a temporary folder. Each example imports what it uses.
EXAMPLE = re.compile(r"^( *)Examples?::[ \t]*\n((?:[ \t]*\n|\1 +\S.*\n?)+)", re.M)


def public_modules():
    import nnlab

    names = ["nnlab"] + [
        info.name for info in pkgutil.walk_packages(nnlab.__path__, "nnlab.")
        if not any(part.startswith("_") for part in info.name.split("."))
    ]
    return [importlib.import_module(name) for name in names]


def public_objects():
    """(qualified name, object) of every public module, the names of its ``__all__`` and
    the methods and properties its public classes define; each object once, under the
    name of the module that defines it where that module is public."""
    found = {}
    for module in public_modules():
        found.setdefault(id(module), (module.__name__, module))
        for name in getattr(module, "__all__", ()):
            value = getattr(module, name)
            if not (inspect.isclass(value) or inspect.isroutine(value)):
                continue
            owner = getattr(value, "__module__", module.__name__)
            home = owner if owner.startswith("nnlab") and "._" not in owner else module.__name__
            found.setdefault(id(value), (f"{home}.{name}", value))
            if inspect.isclass(value):
                for attribute, member in vars(value).items():
                    if not attribute.startswith("_") or attribute in ("__init__", "__call__"):
                        member = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
                        found.setdefault(id(member), (f"{home}.{name}.{attribute}", member))
    return sorted(found.values(), key=lambda pair: pair[0])


def docstring_examples():
    """(name, code) of every Example block, numbered within a docstring that has several."""
    examples = []
    for name, value in public_objects():
        blocks = EXAMPLE.findall(inspect.getdoc(value) or "") if inspect.getdoc(value) else []
        for number, (_, block) in enumerate(blocks, start=1):
            examples.append((name if len(blocks) == 1 else f"{name}#{number}", textwrap.dedent(block)))
    return examples


EXAMPLES = docstring_examples()


def run_example(name, code):
    """Runs one example; a doctest's output must match what it shows."""
    if ">>>" not in code:
        exec(compile(code, name, "exec"), {"__name__": "__example__"})
        return
    test = doctest.DocTestParser().get_doctest(code, {"__name__": "__example__"}, name, name, 0)
    output = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test, out=output.write)
    assert runner.failures == 0, output.getvalue()


@pytest.mark.parametrize("name, code", EXAMPLES, ids=[name for name, _ in EXAMPLES])
def test_every_docstring_example_runs(name, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch_threads = torch.get_num_threads()
    state = torch.random.get_rng_state()
    try:
        run_example(name, code)
    finally:
        torch.random.set_rng_state(state)
        torch.set_num_threads(torch_threads)


# Where a user looks for an example: one layer of each family, the trainers, the checkers,
# the optimizers, schedulers, callbacks, saving and loading, the summary.
EXAMPLES_EXPECTED = [
    "nnlab.layers.dense", "nnlab.layers.activations", "nnlab.layers.conv", "nnlab.layers.pooling",
    "nnlab.layers.norm", "nnlab.layers.sample_norm", "nnlab.layers.padding", "nnlab.layers.losses",
    "nnlab.layers.regression_losses", "nnlab.layers.margin_losses", "nnlab.layers.containers",
    "nnlab.layers.embedding", "nnlab.layers.recurrent", "nnlab.layers.attention", "nnlab.layers.transformer",
    "nnlab.layers.unpooling", "nnlab.layers.upsample", "nnlab.layers.merge", "nnlab.layers.residual",
    "nnlab.training.trainers.LayerTrainer", "nnlab.training.trainers.TorchTrainer", "nnlab.training.base.Trainer.fit",
    "nnlab.grad_compare.check_layer", "nnlab.grad_compare.gradcheck", "nnlab.grad_compare.compare_layer_to_torch",
    "nnlab.grad_compare.gradient_errors", "nnlab.grad_compare.finite_difference_errors",
    "nnlab.grad_compare.compare_to_module", "nnlab.grad_compare.backward_before_forward", "nnlab.optimizers", "nnlab.schedulers", "nnlab.training.callbacks",
    "nnlab.serialization.save", "nnlab.serialization.load", "nnlab.summary",
]


@pytest.mark.parametrize("expected", EXAMPLES_EXPECTED)
def test_an_example_is_where_a_user_looks_for_one(expected):
    assert any(name == expected or name.startswith(expected + ".") for name, _ in EXAMPLES), f"no Example in {expected}"


def test_the_example_collector_finds_a_plain_and_a_doctest_block():
    doc = "Summary.\n\nExample::\n\n    a = 1\n    assert a == 1\n\nAfter.\n\n    Example::\n\n        >>> 1 + 1\n        2\n"
    blocks = [textwrap.dedent(block) for _, block in EXAMPLE.findall(doc)]
    assert blocks == ["\na = 1\nassert a == 1\n\n", "\n>>> 1 + 1\n2\n"]
    with pytest.raises(AssertionError, match="Expected"):
        run_example("wrong", ">>> 1 + 1\n3\n")


def test_the_speed_pages_tables_are_made_from_the_recorded_bench_json():
    """What the site build does with docs/bench.json (docs/conf.py's bench_tables), run
    here: a record of the wrong shape fails this test rather than the Sphinx build."""
    spec = importlib.util.spec_from_file_location("docs_conf", ROOT / "docs" / "conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    import json

    record = json.loads((ROOT / "docs" / "bench.json").read_text(encoding="utf-8"))
    tables = conf.bench_tables(record)
    for case in record["bench"]["cases"] + record["bench"]["graph"]:
        assert f"| {case['name']} | {case['ours_ms']:.2f} |" in tables
    for row in record["bench"]["memory"]:
        assert f"| {row['model']} |" in tables
