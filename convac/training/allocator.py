"""The C allocator of a training process: keep freed memory for the next step (glibc only).

PyTorch's CPU tensors come from ``malloc``. With glibc's defaults a block of more than 128 KiB
(a threshold that grows to at most 32 MiB as such blocks are freed) is mapped fresh from the
system and unmapped when freed, and freed memory at the top of the heap is returned to the
system; the big tensors of every training step (activations, gradients, the leaf table) are
then faulted in page by page again, step after step. On a virtual machine, where a page fault
is expensive, this can be half of a 64x64 HT training step and much of the entropy probe's time:
``python scripts/bench.py --only train`` measures it, run as it is and under
``GLIBC_TUNABLES=glibc.malloc.trim_threshold=4294967296:glibc.malloc.mmap_threshold=4294967296``
(which keeps freed memory as :func:`keep_freed_memory` does, set from the environment).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the heap
TRIM_THRESHOLD = (1 << 31) - 1  # the heap keeps up to 2 GiB of free memory at its top


def keep_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep freed memory for reuse: blocks below 1 GiB come from the
    heap (``M_MMAP_THRESHOLD``) and free memory at the top of the heap is not returned to the
    system below 2 GiB (``M_TRIM_THRESHOLD``). The resident memory of the process then stays at
    its peak, which a training loop reaches at every step anyway. Process-wide; returns whether
    it applied (False where the C library is not glibc, e.g. macOS, Windows, musl)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False
