"""The C allocator's settings for a training process (Linux/glibc)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

OPT_OUT_ENV = "INTRO_LITE_MALLOC"  # "default": leave the allocator as it is
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
_done = False


def keep_freed_memory() -> bool:
    """Keep freed memory in the process's heap instead of handing it back to the OS.

    By default glibc serves every block over its mmap threshold (at most 32 MB) with a fresh mmap and
    unmaps it when freed, so a step that frees and re-allocates its [B, T, V] logits and their
    gradients page-faults hundreds of MB in again every micro-batch: GRPO's step on the step benchmark
    took 5.3 s with that and 3.1 s without (docs/performance.md). No mmap for large blocks and a 2 GB
    trim threshold make freed blocks reusable. The cost is a peak RSS a few % higher, held until exit.
    Returns True if the allocator was changed (glibc only; INTRO_LITE_MALLOC=default opts out)."""
    global _done
    if _done:
        return True
    if os.environ.get(OPT_OUT_ENV, "").lower() == "default" or not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _done
