"""Opening the user's files safely: regular files only, never blocking, text encodings detected.

A FIFO named like a weights file blocks ``open()`` until a writer comes (forever, and SIGTERM
does not interrupt it in C code); a character device can be endless.  Every file permerge opens
on the user's behalf is checked with ``stat`` first, and opened with ``O_NONBLOCK`` so that a file
swapped for a FIFO between the check and the open cannot block either; the opened descriptor is
checked again with ``fstat``.
"""
from __future__ import annotations

import codecs
import fcntl
import os
import stat
from pathlib import Path

NOT_REGULAR = "not a regular file (a FIFO, socket or device)"


class NotRegularFile(OSError):
    """The path is a FIFO, socket, device or folder where a regular file is needed."""

    def __init__(self, path):
        super().__init__(0, NOT_REGULAR, str(path))


def is_regular(path: str | Path) -> bool:
    """A regular file (links followed); False for anything else, missing files included."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def check_regular(path: str | Path) -> None:
    """NotRegularFile unless ``path`` (links followed) is a regular file; OSError if it cannot be stat'ed."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise NotRegularFile(path)


def open_regular(path: str | Path, mode: str = "rb", encoding: str | None = None, newline: str | None = None):
    """Open a regular file for reading without ever blocking: stat, open non-blocking, fstat the
    descriptor, then switch it back to blocking reads.  NotRegularFile for anything else."""
    if mode not in ("r", "rb"):
        raise ValueError(f"open_regular reads only, not {mode!r}")
    check_regular(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped between the stat and the open
            raise NotRegularFile(path)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, mode, encoding=encoding, newline=newline) if mode == "r" else os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | Path) -> bytes:
    with open_regular(path) as fh:
        return fh.read()


def read_text(path: str | Path, errors: str = "strict") -> str:
    """A regular file's text, its encoding detected (see ``detect_encoding``)."""
    raw = read_bytes(path)
    return decode(raw, path, errors=errors)


def non_regular_entries(folder: str | Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Entries of ``folder`` (not recursive) whose names end in one of ``suffixes`` and that are
    not regular files (a FIFO, socket, device, folder, or a link to one)."""
    out = []
    try:
        entries = sorted(Path(folder).iterdir())
    except OSError:
        return out
    for p in entries:
        if p.name.endswith(suffixes):
            try:
                if not stat.S_ISREG(os.stat(p).st_mode):
                    out.append(p)
            except OSError:
                continue  # a dangling link: the loader reports a missing file
    return out


# --- text encodings ---------------------------------------------------------------------------

class EncodingRefused(ValueError):
    """Bytes that are not text permerge reads (binary, or NUL-heavy without a byte-order mark)."""


_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_SNIFF = 4096  # bytes looked at for NULs


def detect_encoding(head: bytes, path: str | Path = "") -> str:
    """The codec of a text file from its first bytes: a byte-order mark names UTF-8, UTF-16 or
    UTF-32 (the UTF-32 marks are tested first: UTF-32-LE's starts like UTF-16-LE's); without one,
    UTF-16/32 text without a mark (NULs at every second or fourth byte) is named by its pattern,
    and any other NUL-heavy start (more than 1 % NUL bytes) is refused as binary."""
    for bom, codec in _BOMS:
        if head.startswith(bom):
            return codec
    sample = head[:_SNIFF]
    nuls = sample.count(0)
    if not nuls:
        return "utf-8"
    n = len(sample) - len(sample) % 4
    if n >= 8:
        quads = [sample[i:i + 4] for i in range(0, n, 4)]
        if all(q[1:] == b"\0\0\0" and q[0] for q in quads):
            return "utf-32-le"
        if all(q[:3] == b"\0\0\0" and q[3] for q in quads):
            return "utf-32-be"
    m = len(sample) - len(sample) % 2
    if m >= 4:
        even, odd = sample[0:m:2], sample[1:m:2]
        if odd.count(0) >= 0.9 * len(odd) and not even.count(0):
            return "utf-16-le"
        if even.count(0) >= 0.9 * len(even) and not odd.count(0):
            return "utf-16-be"
    if nuls > max(1, len(sample) // 100):
        where = f"{path} " if path else ""
        raise EncodingRefused(f"{where}is not text: {nuls} NUL bytes in its first {len(sample)} (a binary file?)")
    return "utf-8"


def decode(raw: bytes, path: str | Path = "", errors: str = "strict") -> str:
    """Bytes of a text file as text, the encoding detected; a leading byte-order mark dropped."""
    codec = detect_encoding(raw[:_SNIFF], path)
    text = raw.decode(codec, errors=errors)
    return text[1:] if text.startswith("\ufeff") else text


class pinned:
    """``with pinned(path) as p``: ``p`` names the very regular file opened here (``/proc/self/fd/N``
    on Linux), for libraries that open a path themselves; swapping the path for a FIFO after the
    check cannot make them block."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self.fh = None

    def __enter__(self) -> str:
        self.fh = open_regular(self.path)
        proc = f"/proc/self/fd/{self.fh.fileno()}"
        return proc if os.path.exists(proc) else self.path

    def __exit__(self, *exc) -> None:
        self.fh.close()
