"""Host memory: large tensors served from freed memory instead of fresh pages (glibc).

glibc's ``malloc`` hands out blocks above its mmap threshold as fresh anonymous pages and gives
them back to the kernel on ``free``; the threshold follows the largest freed block but stops at
32 MiB. So on a CPU every tensor above 32 MiB that difflens makes and drops again and again (a
decode step's [rows, vocab] logits and their softmax at 163+ rows of a 49k vocabulary, the coherence
grader's [B, T, V] log-probabilities, Patchscope's probabilities) costs a page fault and the
zeroing of every one of its 4 KiB pages, each time. Measured on 2 Xeon cores: a [250, 49152]
float32 softmax 19.9 ms with fresh pages against 4.4 ms from reused ones; the offline coherence
grader over 300 steered texts 48.0 s against 39.7 s (same verdicts).

:func:`reuse_freed_memory` raises both of glibc's thresholds (``mallopt``): blocks up to
:data:`MMAP_THRESHOLD` come from the heap and up to :data:`TRIM_THRESHOLD` of freed memory stays
mapped for the next one. It changes where memory comes from, never a value, and is process-wide:
:func:`difflens.models.pair.load_pair` calls it (``DIFFLENS_MALLOC=0`` leaves malloc as it is).
Elsewhere than glibc (macOS, musl) it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "reuse_freed_memory"]

MMAP_THRESHOLD = 1 << 30
"""Blocks up to 1 GiB from the heap (larger ones keep their own pages)."""
TRIM_THRESHOLD = 1 << 30
"""Up to 1 GiB of freed memory at the heap's top stays mapped for reuse."""

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


@functools.cache
def reuse_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds once per process (see the module doc); True if set."""
    if os.environ.get("DIFFLENS_MALLOC", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
            return False
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) \
            and bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False
