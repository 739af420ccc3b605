"""Memory a stage frees goes back to the system before the next stage.

On Linux, glibc's ``malloc`` keeps what a program frees in its heaps for later requests.  A permerge
job frees large blocks all the time (weight copies, activations, the float64 statistics once the
alignment is computed), and requests of a different size later cannot always reuse them, so the
process kept the high-water mark of every stage as resident memory: a MultiBERTs-size pair through
the dashboard's job with 21 λ points peaked at 4.7 GB although no stage needs more than about
3.4 GB at once.  ``give_back`` asks glibc to return the free memory of its heaps to the system
(``malloc_trim``); the pipeline calls it at the end of each stage.  It costs milliseconds.  (A fixed
``M_MMAP_THRESHOLD``, which maps every large block on its own, also keeps the peak down, but on the
machines measured it made every run a quarter slower: each activation's fresh pages are faulted in.)

``PERMERGE_TRIM=0`` turns it off.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_trim = None


def _malloc_trim():
    global _trim
    if _trim is None:
        _trim = False
        if sys.platform.startswith("linux"):
            try:
                fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
                fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
                _trim = fn
            except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
                pass
    return _trim


def give_back() -> bool:
    """Return the free memory of the C heaps to the system; True when it was done."""
    if os.environ.get("PERMERGE_TRIM", "1") == "0":
        return False
    fn = _malloc_trim()
    if not fn:
        return False
    fn(0)
    return True
