"""User-supplied strings (paths, file names, task names, config values, error messages that quote
them) shown as plain text.  Streamlit renders Markdown, HTML entities, LaTeX (``$...$``), emoji
short codes (``:smile:``), coloured text (``:red[...]``) and bare web addresses in captions, errors,
labels and progress lines; Plotly renders a subset of HTML (``<a href>``, ``<b>``) in titles.  Every
page passes a user's string through ``md`` (anything Streamlit draws as Markdown) or ``plot_text``
(Plotly titles, annotations and hovers) before it reaches the page.
"""
from __future__ import annotations

import html
import re

from permerge.bidi import escape_bidi

# Backslash-escaped wherever they stand: emphasis, code, links and images, strikethrough, tables,
# LaTeX, e-mail addresses.
_ANYWHERE = re.compile(r"([\\`*_\[\]!$~|@])")
# Block syntax that only counts at the start of a line: headings, lists, setext underlines.
_LINE_START = re.compile(r"^(\s*)([#+\-=])", re.M)  # (">" is written &gt;: never a quote)
_ORDERED = re.compile(r"^(\s*\d+)([.)])", re.M)
# Streamlit's directives (":red[...]", ":small[...]", ":help[...]"): the name alone is enough to be
# taken (and dropped from the text), so its colon is escaped; other ":name" stay as typed.
_COLOURS = ("red", "orange", "yellow", "green", "blue", "violet", "gray", "grey", "primary", "rainbow")
_DIRECTIVES = frozenset([*_COLOURS, *(f"{c}-background" for c in _COLOURS), *(f"{c}-badge" for c in _COLOURS),
                         "help", "shimmer", "small", "color", "colour"])
_DIRECTIVE = re.compile(r":([A-Za-z][\w-]*)")
# A zero-width space breaks what the renderer finds in the text itself (after escapes are resolved):
# emoji and icon short codes (":smile:", ":material/home:"), web addresses ("http://", "www.") and
# e-mail addresses ("a@b.c").  It is invisible; a copied string contains it.
_SHORTCODE = re.compile(r":(?=[\w/+-]+:)")
_WEB = re.compile(r"(?i)(?<=:)(?=//)|(?<=www)(?=\.)|(?<=@)")
ZWSP = "\u200b"


def md(value) -> str:
    """``value`` as literal text inside Markdown (also inside ``unsafe_allow_html`` Markdown): no
    image is fetched, no link, emphasis, heading, LaTeX, colour or emoji appears; it reads as typed."""
    s = escape_bidi(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")  # tags and entities as typed
    s = _SHORTCODE.sub(":" + ZWSP, s)
    s = _WEB.sub(ZWSP, s)
    s = _ANYWHERE.sub(r"\\\1", s)
    s = _LINE_START.sub(r"\1\\\2", s)
    s = _ORDERED.sub(r"\1\\\2", s)
    return _DIRECTIVE.sub(lambda m: ("\\:" if m.group(1).lower() in _DIRECTIVES else ":") + m.group(1), s)


def plot_text(value) -> str:
    """``value`` as literal text in a Plotly title, annotation, legend or hover label."""
    return html.escape(escape_bidi(value), quote=False)
