"""The process's memory allocator, tuned for training loops.

A training step frees and allocates tensors of the same sizes step after step. glibc's
``malloc`` serves a large block (from 128 KiB, a threshold it moves up to 32 MiB as it
goes) with a fresh ``mmap`` and hands it back to the operating system when it is freed,
and trims the top of its heap as soon as enough of it is free. Each new tensor then starts
on fresh pages, which the kernel must fault in and zero one by one before the first
operation can write them: on a virtual machine that can cost more than the operation
itself. jemalloc and tcmalloc keep freed memory for reuse, and PyTorch's CPU performance
guide recommends them for that reason; ``keep_freed_memory`` asks glibc's allocator to do
the same. The ``nnlab`` command calls it when it starts (`nnlab bench --course` shows what
it changes, for nnlab and PyTorch alike: they share the process).

The cost: memory freed by the process stays with it, so its resident size does not shrink
after a peak (blocks above 32 MiB are still returned at once).
"""

import ctypes
import sys

__all__ = ["describe", "keep_freed_memory"]

# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it accepts on 64-bit.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
LARGEST_MMAP_THRESHOLD = 32 * 1024 * 1024
NEVER_TRIM = 2**31 - 1

_settings = {"kept": False}


def keep_freed_memory():
    """Makes glibc's malloc serve blocks up to 32 MiB from its heap and never trim it, so
    that memory a step frees is reused by the next step instead of being returned to the
    operating system and faulted in again. Returns True when both settings took effect,
    False where the C library has no ``mallopt`` (not Linux with glibc): nothing changes
    there."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # Both or neither matter: without the trim threshold the heap still shrinks at once.
    kept = bool(mallopt(M_MMAP_THRESHOLD, LARGEST_MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
    _settings["kept"] = _settings["kept"] or kept
    return kept


def describe():
    """How this process allocates memory, in words, for reports of timings."""
    if _settings["kept"]:
        return "glibc malloc keeping freed memory (nnlab.allocator)"
    return "the C library's default malloc"
