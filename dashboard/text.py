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

# Backslash-escaped wherever they stand: emphasis, code, links and images, strikethrough, tables,
# LaTeX, e-mail autolinks, directives (":red[...]") and the ":" of web addresses.
_ANYWHERE = re.compile(r"([\\`*_\[\]!$~|@])")
# Block syntax that only counts at the start of a line: headings, lists, quotes, setext underlines.
_LINE_START = re.compile(r"^(\s*)([#+\-=])", re.M)  # (">" is written &gt;: never a quote)
_ORDERED = re.compile(r"^(\s*\d+)([.)])", re.M)
_SHORTCODE = re.compile(r":(?=[\w/+-]+:)")  # ":smile:", ":material/home:" -> a zero-width break after ":"
_SCHEME = re.compile(r":(?=//)")  # "http://x": no bare web address becomes a link
_WWW = re.compile(r"((?i:www))\.")


def md(value) -> str:
    """``value`` as literal text inside Markdown (also inside ``unsafe_allow_html`` Markdown): no
    image is fetched, no link, emphasis, heading, LaTeX or emoji appears; it reads as typed."""
    s = str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")  # tags and entities as typed
    s = _SHORTCODE.sub(":\u200b", s)
    s = _ANYWHERE.sub(r"\\\1", s)
    s = _LINE_START.sub(r"\1\\\2", s)
    s = _ORDERED.sub(r"\1\\\2", s)
    s = _SCHEME.sub(r"\\:", s)
    s = _WWW.sub(r"\1\\.", s)
    return s


def plot_text(value) -> str:
    """``value`` as literal text in a Plotly title, annotation, legend or hover label."""
    return html.escape(str(value), quote=False)
