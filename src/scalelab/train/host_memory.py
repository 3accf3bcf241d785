"""Keep freed host memory for reuse instead of handing it back to the OS (glibc Linux).

A CPU training step allocates and frees the same activation-sized tensors every step.
glibc serves blocks above its mmap threshold (at most 32 MB; a 32 x 256 x 1024 fp32
activation is 33.5 MB) with a fresh mmap and unmaps them on free, and trims the heap
top past 128 KB-64 MB: so every step touches its activations' pages anew, and the
kernel zero-fills each 4 KB page on a fault. At 6 x 384, batch 32 x 256 that is ~270,000
page faults and ~0.55 s of system time per step, and it makes elementwise kernels
2-3x slower than on warm memory (docs/bench-train.md). Two mallopt settings stop it:
no mmap for large blocks (they come from the heap, reused like any freed block) and no
trimming. The cost: the process's resident memory stays at its high-water mark, which
a training run reaches every step anyway. (jemalloc / tcmalloc via LD_PRELOAD do the
same job; they are not a pip install away, glibc's mallopt is.)

SCALELAB_HOST_MEMORY=default leaves glibc's behaviour alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameter numbers from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_state: str | None = None  # what keep_freed_host_memory() did: "kept", "default" or a reason


def keep_freed_host_memory() -> str:
    """Apply the setting once per process; returns what was done ("kept", "default" when
    switched off by SCALELAB_HOST_MEMORY, or why it does not apply here)."""
    global _state
    if _state is not None:
        return _state
    if os.environ.get("SCALELAB_HOST_MEMORY", "").strip().lower() == "default":
        _state = "default"
    elif not sys.platform.startswith("linux"):
        _state = f"not glibc Linux ({sys.platform})"
    else:
        _state = _mallopt_keep()
    return _state


def _mallopt_keep() -> str:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        gnu_get_libc_version = libc.gnu_get_libc_version  # absent on musl: glibc only
        mallopt = libc.mallopt
    except (OSError, AttributeError) as e:
        return f"not glibc ({e})"
    gnu_get_libc_version.restype = ctypes.c_char_p
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; the threshold is an int, so "never" is INT_MAX.
    if mallopt(_M_MMAP_MAX, 0) != 1 or mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) != 1:
        return f"mallopt refused (glibc {gnu_get_libc_version().decode()})"
    return "kept"


def host_memory_state() -> str:
    """What this process did ("kept", "default", a reason), or "not set" before any call."""
    return _state or "not set"
