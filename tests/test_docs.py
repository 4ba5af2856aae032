"""Every ```python block of README.md and of the documentation pages (docs/**/*.md) runs:
the blocks of one page in order, as one script, so a page may set up what its later blocks
use. A page's blocks run in a fresh interpreter in a temporary folder (files they write
land there)."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
PAGES = [page for page in PAGES if "_build" not in page.parts]
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
