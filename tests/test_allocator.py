"""nnlab.allocator: glibc's malloc keeps freed memory for reuse once asked, and the nnlab
command asks. Judged by glibc's own count of mmapped blocks (mallinfo2), in fresh processes."""

import ctypes
import subprocess
import sys

import pytest

import nnlab.cli as cli

COUNT_MMAPPED_BLOCKS = r"""
import ctypes, sys, torch
from nnlab import allocator

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
kept = allocator.keep_freed_memory() if sys.argv[1] == "keep" else None
before = libc.mallinfo2().hblks
tensor = torch.empty(2**20)  # 4 MiB
print(kept, libc.mallinfo2().hblks - before, allocator.describe(), sep="|")
"""


def _has_mallinfo2():
    try:
        ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return False
    return sys.platform.startswith("linux")


def _run(mode):
    result = subprocess.run([sys.executable, "-c", COUNT_MMAPPED_BLOCKS, mode], capture_output=True, text=True, check=True)
    kept, new_blocks, description = result.stdout.strip().split("|")
    return kept, int(new_blocks), description


@pytest.mark.skipif(not _has_mallinfo2(), reason="glibc's mallinfo2 is needed to see where a block comes from")
def test_a_4_mib_tensor_comes_from_the_heap_once_freed_memory_is_kept_and_from_mmap_before():
    assert _run("default") == ("None", 1, "the C library's default malloc")
    assert _run("keep") == ("True", 0, "glibc malloc keeping freed memory (nnlab.allocator)")


def test_the_nnlab_command_keeps_freed_memory_before_anything_else(monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append("kept"))
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    assert calls == ["kept"]
