"""The ``.npy`` members of a cache value, read without NumPy's header parser.

``numpy.load`` reads every ``.npy`` header with ``ast.literal_eval``, that is ``ast.parse``.  In
CPython 3.11.7 (the interpreter of this project's environment), as in the other releases that have
the AST constructor's recursion check (gh-95185) but not its fix (gh-106905, backported to 3.11 and
3.12 in December 2023), that check keeps its counter in state shared by all threads: when
two threads build ASTs at once and one hands the GIL to the other in the middle (a garbage
collection running Python code is enough), either can fail with ``SystemError: AST constructor
recursion depth mismatch``.  The dashboard's jobs read cached values on worker threads while
Streamlit parses a page script (``ast.parse``, for its "magic") on the script thread, so the cache
reads headers itself and never builds an AST.

A header is the one ``numpy.save`` writes: format version 1.0 or 2.0 and the dict literal
``{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`` padded with spaces; anything else
is refused with ValueError (the cache then treats the value as damaged and computes it again).
"""
from __future__ import annotations

import math
import re
import struct

import numpy as np

MAGIC = b"\x93NUMPY"
MAX_HEADER = 10_000  # as numpy.load's max_header_size; the header of a cache array is about 128 bytes
_HEADER = re.compile(r"\{'descr': '([<>|=]?[A-Za-z][0-9]{0,9})', 'fortran_order': (True|False), "
                     r"'shape': (\([0-9, ]{0,200}\)), \} *\n?")


def read_header(fh) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` of the ``.npy`` stream ``fh``, positioned at its data."""
    head = fh.read(8)
    if len(head) != 8 or head[:6] != MAGIC:
        raise ValueError("not a .npy array")
    version = (head[6], head[7])
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f"unknown .npy version {version}")
    width = "<H" if version == (1, 0) else "<I"
    raw = fh.read(struct.calcsize(width))
    if len(raw) != struct.calcsize(width):
        raise ValueError("truncated .npy header")
    (size,) = struct.unpack(width, raw)
    if size > MAX_HEADER:
        raise ValueError(f".npy header of {size} bytes")
    text = fh.read(size).decode("latin-1")
    m = _HEADER.fullmatch(text)
    if m is None:
        raise ValueError("not a .npy header written by numpy.save")
    shape = tuple(int(n) for n in m[3][1:-1].split(",") if n.strip())
    if repr(shape) != m[3]:
        raise ValueError(f"malformed .npy shape {m[3]}")
    try:
        dtype = np.dtype(m[1])
    except TypeError:
        raise ValueError(f"unknown .npy dtype {m[1]!r}") from None
    if dtype.hasobject:
        raise ValueError("an object array")
    return shape, m[2] == "True", dtype


def read_array(fh) -> np.ndarray:
    """The array of the ``.npy`` stream ``fh`` (a new, writable array, as ``numpy.load`` gives)."""
    shape, fortran, dtype = read_header(fh)
    flat = np.empty(math.prod(shape), dtype=dtype)
    buf = memoryview(flat.view(np.uint8))
    done = 0
    while done < len(buf):
        n = fh.readinto(buf[done:])
        if not n:
            raise ValueError(f"truncated .npy data ({done} of {len(buf)} bytes)")
        done += n
    return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)
