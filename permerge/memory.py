"""Memory a stage frees goes back to the system before the next stage.

On Linux, glibc's ``malloc`` serves a request of at least ``M_MMAP_THRESHOLD`` bytes with a mapping of
its own, which it unmaps on ``free``; smaller requests come from heaps that keep what is freed for
later requests.  By default the threshold adapts: each time a mapped block is freed it moves up to that
block's size (up to 32 MiB).  A permerge job frees large blocks all the time (weight copies,
activations, the float64 statistics once the alignment is computed), so after the first one its large
tensors land in the heaps, and the process keeps the high-water mark of every stage as resident
memory: a MultiBERTs-size pair through the dashboard's job peaked at 4.6 GB, with the statistics
already released, where its stages need at most 3.3 GB at once.  A fixed threshold keeps large
tensors in their own mappings, returned when freed.

``PERMERGE_MMAP_THRESHOLD`` (bytes) sets another threshold; ``0`` leaves glibc's adaptive default.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
MMAP_THRESHOLD = 4 << 20  # bytes: a 768 x 768 float32 matrix (2.4 MB) stays in the heaps, larger blocks are mapped
_set: int | None = None


def release_large_blocks() -> int | None:
    """Fix glibc's mmap threshold for this process (once; later calls do nothing) and return it;
    None where the C library is not glibc or the setting is turned off."""
    global _set
    if _set is not None:
        return _set
    if not sys.platform.startswith("linux"):
        return None
    try:
        threshold = int(os.environ.get("PERMERGE_MMAP_THRESHOLD", MMAP_THRESHOLD))
    except ValueError:
        threshold = MMAP_THRESHOLD
    if threshold <= 0:
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(M_MMAP_THRESHOLD, threshold) != 1:
        return None
    _set = threshold
    return _set
