"""Bidirectional control characters (U+202A-202E, U+2066-2069, U+200E/F, U+061C) in a user's
string (a folder name, a task name) reorder the text after them: a right-to-left override in a
folder name turns permerge's own words around it backwards.  Wherever such a string is shown (the
command line, the dashboard's pages, the lecture pack) they are written as their escapes
(``\\u202e``), as the command line writes every non-printable character."""
from __future__ import annotations

import re

BIDI_CONTROLS = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_BIDI = re.compile(f"[{BIDI_CONTROLS}]")


def escape_bidi(value) -> str:
    """``value`` as text with every bidirectional control character written as ``\\uXXXX``."""
    return _BIDI.sub(lambda m: f"\\u{ord(m.group()):04x}", str(value))
