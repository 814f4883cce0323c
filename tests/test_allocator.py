"""convac.training.allocator: glibc keeps freed memory for the next training step."""
from __future__ import annotations

import platform

import pytest
import torch

from convac.training.allocator import keep_freed_memory


def test_keep_freed_memory_applies_on_glibc_and_tensors_still_work():
    applied = keep_freed_memory()
    assert applied == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
    big = torch.ones(1 << 22)  # 16 MiB: from the heap now, freed for reuse
    assert float(big.sum()) == 1 << 22
    del big
    assert float(torch.ones(1 << 22).sum()) == 1 << 22


@pytest.mark.skipif(platform.libc_ver()[0] == "glibc", reason="only where the C library is not glibc")
def test_keep_freed_memory_is_a_no_op_elsewhere():
    assert keep_freed_memory() is False
