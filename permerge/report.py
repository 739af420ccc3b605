"""Files to take away from a run: a chart's image (PNG, SVG) and data (CSV) under a safe file name,
and the lecture pack, one static HTML page of a run's figures and tables that opens offline in
any browser (plotly.js inlined).  Pure functions of result objects; no Streamlit here.
"""
from __future__ import annotations

import functools
import html
import io
import re
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from . import __version__
from .bidi import escape_bidi

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
MAX_NAME = 180  # characters of a file name before its extension (file systems allow 255 bytes)


def safe_name(*parts) -> str:
    """A file name (without extension) from its parts, e.g. the pair, the figure and the options:
    every run of characters other than letters, digits and ``._+-`` becomes ``-``, parts are joined
    with ``__``, no leading dot or dash, at most ``MAX_NAME`` characters."""
    cleaned = [_UNSAFE.sub("-", re.sub(r"\s*\+\s*", "+", str(p))).strip("-.")
               for p in parts if p is not None and str(p).strip()]
    name = "__".join(c for c in cleaned if c) or "figure"
    return name[:MAX_NAME].rstrip("-.") or "figure"


# --- a chart's data and images --------------------------------------------------------------------------

def _as_list(v):
    if v is None:
        return None
    a = np.asarray(v, dtype=object) if not isinstance(v, np.ndarray) else v
    return a


def figure_table(fig) -> pd.DataFrame:
    """The data drawn in a Plotly figure, in long form: one row per point (trace, x, y) or per cell
    of a heatmap (trace, row, column, value).  Used when a page gives no table of its own."""
    frames = []
    for n, t in enumerate(fig.data):
        name = t.name if getattr(t, "name", None) else f"trace {n}"
        z = getattr(t, "z", None)
        if z is not None:
            z = np.asarray(z, dtype=float)
            if z.ndim == 2:
                ys = np.asarray(t.y) if t.y is not None else np.arange(z.shape[0])
                xs = np.asarray(t.x) if t.x is not None else np.arange(z.shape[1])
                r, c = np.meshgrid(np.arange(z.shape[0]), np.arange(z.shape[1]), indexing="ij")
                frames.append(pd.DataFrame({"trace": name, "row": ys[r.ravel()], "column": xs[c.ravel()],
                                            "value": z.ravel()}))
                continue
        x, y = _as_list(getattr(t, "x", None)), _as_list(getattr(t, "y", None))
        if x is None and y is None:
            continue
        k = len(x) if x is not None else len(y)
        frames.append(pd.DataFrame({"trace": name, "x": x if x is not None else np.arange(k),
                                    "y": y if y is not None else [None] * k}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["trace", "x", "y"])


def table_csv(data) -> bytes:
    """CSV bytes of a chart's data: a DataFrame as it is; a 1-D or 2-D array with its indices; a
    dict of arrays in long form (name, row, column, value)."""
    if isinstance(data, pd.DataFrame):
        df = data
    elif isinstance(data, dict):
        parts = []
        for k, v in data.items():
            a = np.atleast_2d(np.asarray(v, dtype=float))
            r, c = np.meshgrid(np.arange(a.shape[0]), np.arange(a.shape[1]), indexing="ij")
            parts.append(pd.DataFrame({"name": k, "row": r.ravel(), "column": c.ravel(), "value": a.ravel()}))
        df = pd.concat(parts, ignore_index=True)
    else:
        a = np.asarray(data)
        df = pd.DataFrame(a) if a.ndim == 2 else pd.DataFrame({"value": a.ravel()})
        if a.ndim == 2:
            df.index.name = "row"
            return df.to_csv().encode()
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    return buf.getvalue().encode()


def image_renderer() -> str | None:
    """The Chrome/Chromium that kaleido renders PNG and SVG with, or None when there is none."""
    try:
        import kaleido  # noqa: F401
        from choreographer.browsers.chromium import Chromium
    except ImportError:
        return None
    try:
        return Chromium.find_browser(skip_local=False) or None
    except Exception:
        return None


@functools.lru_cache(maxsize=32)
def _render(spec: str, fmt: str, width: int, scale: float) -> bytes:
    import plotly.io as pio

    fig = pio.from_json(spec)
    height = fig.layout.height or 500
    return fig.to_image(format=fmt, width=width, height=height, scale=scale)


def figure_image(fig, fmt: str = "png", width: int = 1100, scale: float = 2.0) -> bytes:
    """PNG or SVG bytes of a figure (kaleido; a few seconds the first time, then cached), wide enough
    for a slide; raises RuntimeError with one line when no browser can render."""
    if fmt not in ("png", "svg"):
        raise ValueError(f"unknown image format {fmt!r}")
    if image_renderer() is None:
        raise RuntimeError("PNG and SVG need Chrome or Chromium (kaleido renders with it); none was found")
    return _render(fig.to_json(), fmt, image_width(fig, width), scale if fmt == "png" else 1.0)


def image_width(fig, width: int = 1100) -> int:
    """The width an image of ``fig`` is drawn at: a square chart (a heatmap whose y axis is anchored to
    its x axis) gets the width its height needs, plus the margins and the colour bar, so that no wide
    gap opens between the matrix and its colour bar."""
    layout = fig.layout
    if getattr(layout.yaxis, "scaleanchor", None) == "x":
        m = layout.margin
        height = int(layout.height or 520)
        plot = height - int(m.t if m.t is not None else 80) - int(m.b if m.b is not None else 80)
        return min(width, plot + int(m.l if m.l is not None else 80) + int(m.r if m.r is not None else 80) + 120)
    return width


# --- the lecture pack ---------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; max-width: 1150px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.1em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.caption { color: #555; font-size: 0.92em; } .missing { color: #777; font-style: italic; }
.verdict { padding: 0.6em 0.9em; border-radius: 6px; margin: 1em 0; }
.ok { background: #e6f4ea; border: 1px solid #8ac79a; } .bad { background: #fdecea; border: 1px solid #e6a0a0; }
.warn { background: #fff6e0; border: 1px solid #e6c36a; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; } th { background: #f3f3f3; }
code { background: #f3f3f3; padding: 0 0.25em; border-radius: 3px; }
"""


def _e(s) -> str:
    return html.escape(escape_bidi(s), quote=True)


def _table(df: pd.DataFrame, floats: str = "{:.4f}") -> str:
    df = df.rename(columns=escape_bidi).map(lambda v: escape_bidi(v) if isinstance(v, str) else v)
    return df.to_html(index=False, escape=True, na_rep="–", border=0,
                      float_format=lambda v: floats.format(v))


def _missing(what: str, where: str) -> str:
    return f'<p class="missing">Not computed for this run yet. To include {_e(what)}: {_e(where)}, then ' \
           "download the lecture pack again.</p>"


BAR_COLUMNS = {"barrier_se": "± s.e.", "barrier_lambda": "at λ", "loss_a": "loss of A", "loss_b": "loss of B",
               "function_preserving": "function-preserving"}


def lecture_pack(*, pair: tuple[str, str], about: str, settings: dict, curves: list | None, check: dict | None,
                 function_preserving: bool, fig4: list | None = None, layers: pd.DataFrame | None = None,
                 methods: pd.DataFrame | None = None, amount: pd.DataFrame | None = None,
                 heatmap: dict | None = None, residual: list | None = None, matchers: dict | None = None,
                 classifiers: dict | None = None,
                 version: str = __version__, created: datetime | None = None) -> str:
    """One static HTML page of a run: the loss curves and barriers, the B′ equivalence verdict, the
    paper's Fig. 4 (components), Fig. 5 (feature correlation per layer), Tables 1 and 2 (methods)
    and Fig. 7 (amount of data) on this pair when they were computed, one group's correlation heatmaps
    before and after (``heatmap``: group, C, after, heads), the residual variants against Identity with
    their verdict (``residual``: ``CurveResult`` objects), the matcher comparison (``matchers``: the
    Activation-vs-weight page's result), the classifier curves and Table 3 (``classifiers``: curves and
    bars frames with a task column), captions, the settings and permerge's version.  ``pair``: display names of A and B; ``about``: one line saying what the
    results belong to; ``curves``: the run's vanilla and aligned ``CurveResult`` objects (None: no
    evaluation data); ``methods``: the per-pair barrier table of the Methods page.  Every string is
    escaped; plotly.js is inlined once, so the page needs no network."""
    from plotly.offline import get_plotlyjs

    from . import plots, verdicts
    from .study import TABLE1, TABLE2, barriers_frame, curves_frame, methods_table

    a, b = pair
    created = created or datetime.now(timezone.utc)
    title = f"permerge: {a} (A) vs {b} (B)"
    body, n_fig = [], [0]

    def figure(fig) -> str:
        n_fig[0] += 1
        fig.update_layout(template="plotly_white")
        return fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"figure-{n_fig[0]}",
                           config={"displaylogo": False, "responsive": True})

    def pt(s) -> str:  # a user's string inside a Plotly title
        return html.escape(escape_bidi(s), quote=False)

    def curves_and_barriers(df, bars, title: str) -> None:  # a section's loss curves and its barrier table
        body.append(figure(plots.curves(df, "loss", bars, title=pt(title))))
        body.append(_table(bars[["method", "barrier", "barrier_se", "barrier_lambda"]].rename(columns=BAR_COLUMNS)))

    body.append(f"<h1>{_e(title)}</h1>")
    body.append(f'<p class="caption">Computed for {_e(about)}. Made with permerge {_e(version)} on '
                f"{created:%Y-%m-%d %H:%M} UTC. λ = 0 is B′ (B with its units renamed to match A), λ = 1 is A; the "
                "merged model is θ(λ) = λ·A + (1−λ)·B′. The loss barrier is the highest loss on that path above "
                "the mean of the two ends: lower is better.</p>")

    # B' computes B
    body.append("<h2>Does B′ compute B?</h2>")
    if check is None:
        body.append('<p class="missing">No check was recorded for this run.</p>')
    else:
        rel64 = check.get("max_rel_logit_error_float64")
        rel32 = check.get("max_rel_logit_error")
        if not function_preserving:
            body.append('<div class="verdict warn">These options are not function-preserving: B′ is a different '
                        f"function from B by design (largest relative logit difference {rel32:.1e}).</div>")
        elif check.get("equivalent"):
            body.append('<div class="verdict ok"><b>Equivalent.</b> B′ computes B\'s function: in float64 the '
                        f"logits agree to {rel64:.1e} relative (float32 rounding alone gives {rel32:.1e}).</div>")
        else:
            body.append('<div class="verdict bad"><b>Not equivalent.</b> B′ should compute B\'s function but does '
                        f"not (float64 relative error {rel64:.1e}).</div>")

    # the run's curves
    body.append("<h2>Loss along λ (this run)</h2>")
    if not curves:
        body.append('<p class="missing">This run has no evaluation data with labels, so there is no loss curve; '
                    "the permutations and the check above are still computed.</p>")
    else:
        df, bars = curves_frame(curves), barriers_frame(curves)
        body.append(figure(plots.curves(df, "loss", bars, title=pt(f"Loss along λ: {a} vs {b}"))))
        value = next((c for c in ("pseudo_perplexity", "perplexity", "accuracy") if c in df and df[c].notna().any()),
                     None)
        if value:
            body.append(figure(plots.curves(df, value, title=pt(f"{value.replace('_', '-')} along λ"),
                                            log_y=value.endswith("perplexity"))))
        shown = bars[["method", "barrier", "barrier_se", "barrier_lambda", "loss_a", "loss_b", "function_preserving"]]
        shown = shown.assign(function_preserving=["yes" if v else "NO" for v in shown["function_preserving"]])
        body.append(_table(shown.rename(columns=BAR_COLUMNS)))
        van = bars.iloc[0]
        words = [f"Vanilla averaging: barrier {van['barrier']:.3f} at λ = {van['barrier_lambda']:.2f}."]
        if len(bars) > 1:
            al = bars.iloc[1]
            c = verdicts.change(van["barrier"], al["barrier"], van.get("barrier_se"), al.get("barrier_se"))
            words.append(f"After alignment ({al['method']}): {c['text']}.")
        body.append(f'<p class="caption">{_e(" ".join(words))} Vertical bars: each barrier, from the dotted '
                    "endpoint mean up to the top of its curve. ± one standard error over the scored tokens.</p>")

    # Fig. 4
    body.append("<h2>Paper Fig. 4: which components to align</h2>")
    if fig4:
        curves_and_barriers(curves_frame(fig4), barriers_frame(fig4), f"Fig. 4 on {a} vs {b}")
        body.append('<p class="caption">The paper: aligning the feed-forward and the attention layers each lowers '
                    "the barrier, both together most. The table says what this pair does.</p>")
    else:
        body.append(_missing("Fig. 4", "open Interpolation and press “Compute the Fig. 4 variants”"))

    # Fig. 5
    body.append("<h2>Paper Fig. 5: feature correlation per layer</h2>")
    if layers is not None and len(layers):
        body.append(figure(plots.layer_corr(layers, method=settings.get("options"))))
        body.append('<p class="caption">Mean correlation of matched units of A and B: before pairs unit i with '
                    "unit i, after pairs unit i with the unit the permutation chose.</p>")
    else:
        body.append(_missing("Fig. 5", "open Feature correlation"))

    # Tables 1 and 2
    body.append("<h2>Paper Tables 1 and 2: methods</h2>")
    if methods is not None and len(methods):
        n_pairs = methods["pair"].nunique() if "pair" in methods else 1
        for name, opts in (("Table 1: attention variants (FF aligned too)", TABLE1),
                           ("Table 2: residual variants (residual only)", TABLE2)):
            if not {o.label() for o in opts} <= set(methods["method"]):
                continue
            table = methods_table(methods, opts)
            body.append(f"<h3>{_e(name)}</h3>")
            body.append(_table(table))
            body.append(figure(plots.methods_bar(table, title=pt(name))))
        pairs = ", ".join(dict.fromkeys(str(x) for x in methods["pair"])) if "pair" in methods else f"{a} | {b}"
        body.append(f'<p class="caption">Computed on {n_pairs} pair(s) chosen on Methods, with this run\'s data '
                    f"and settings: {_e(pairs)}. " + (
            "One pair: the standard error is over the scored tokens of that pair, not over pairs. "
            if n_pairs == 1 else "Mean and standard error over pairs. ")
            + "Rows marked NO are not function-preserving: their B′ is not B.</p>")
    else:
        body.append(_missing("Tables 1 and 2", "open Methods and press “Compute the tables”"))

    # Fig. 7
    body.append("<h2>Paper Fig. 7: amount of alignment data</h2>")
    if amount is not None and len(amount):
        body.append(figure(plots.data_amount(amount)))
        body.append(_table(amount))
    else:
        body.append(_missing("Fig. 7", "open Amount of data and press “Compute”"))

    # correlation heatmaps of one group
    body.append("<h2>Correlation heatmaps</h2>")
    if heatmap:
        g = heatmap["group"]
        body.append(figure(plots.heatmap(heatmap["C"], heatmap.get("heads"), title=pt(f"{g}: before (B in its own order)"))))
        body.append(figure(plots.heatmap(heatmap["after"], heatmap.get("heads"), title=pt(f"{g}: after (B′ = B permuted)"),
                                         x_title="matched unit of B′")))
        body.append(f'<p class="caption">Correlation of every unit of A (rows) with every unit of B (columns) on the '
                    f"alignment data, group {_e(g)}: before, B's units in their own order; after, reordered by the "
                    "permutation, so that the matched pairs lie on the diagonal.</p>")
    else:
        body.append(_missing("The correlation heatmaps", "open Correlations"))

    # the residual stream on this pair
    body.append("<h2>The residual stream on this pair</h2>")
    if residual:
        from .study import TABLE2 as _T2, table_label

        rbars = {c.method: c.barrier for c in residual}
        rses = {c.method: c.barrier_se for c in residual}
        named = [o for o in _T2 if o.function_preserving]
        rows_r = verdicts.residual_rows(rbars, named[0].label(), {o.label(): table_label(o) for o in named[1:]}, rses)
        summary = verdicts.residual_summary(rows_r)
        body.append(_table(barriers_frame(residual)[["method", "barrier", "barrier_se", "barrier_lambda"]]
                           .rename(columns=BAR_COLUMNS)))
        body.append(f'<div class="verdict warn">{_e(summary["sentence"])}. This {_e(summary["paper"])}.</div>'
                    if summary["sentence"] else '<p class="missing">No residual variant was measured.</p>')
    else:
        body.append(_missing("The residual verdict", "open Start here and press “Measure the residual variants on "
                                                     "this pair”"))

    # activation against weight matching
    body.append("<h2>Activation vs weight matching</h2>")
    if matchers:
        curves_and_barriers(matchers["curves"], matchers["bars"], f"Activation vs weight matching on {a} vs {b}")
    else:
        body.append(_missing("The matcher comparison", "open Activation vs weight matching and press “Compare the "
                                                        "matchers”"))

    # classifiers (Fig. 8, Table 3)
    body.append("<h2>Paper Fig. 8 and Table 3: fine-tuned classifiers</h2>")
    if classifiers:
        from .shapes import one_pair_tasks, table3

        cdf, cbars = classifiers["curves"], classifiers["bars"]
        for task in dict.fromkeys(cdf["task"]):
            for pair_name in dict.fromkeys(cdf.loc[cdf["task"] == task, "pair"]):
                one = cdf[(cdf["task"] == task) & (cdf["pair"] == pair_name)]
                b3 = cbars[(cbars["task"] == task) & (cbars["pair"] == pair_name)]
                body.append(figure(plots.curves(one, "loss", b3, title=pt(f"{task}, pair {pair_name}: dev-set loss"),
                                                y_title="dev-set loss")))
        t3 = table3(cdf, cbars)
        body.append(_table(t3))
        single = one_pair_tasks(t3)
        body.append('<p class="caption">Table 3: barrier per task, vanilla against aligned, mean ± standard error '
                    "over pairs." + (f" No standard error for {_e(', '.join(single))}: one pair per task, and a "
                                     "standard error over pairs needs at least two." if single else "") + "</p>")
    else:
        body.append(_missing("The classifier curves and Table 3", "open Interpolation and press “Compute the "
                                                                   "classifier curves”"))

    body.append("<h2>Settings</h2>")
    rows = pd.DataFrame([{"setting": k, "value": "" if v is None else str(v)} for k, v in settings.items()])
    body.append(_table(rows))
    body.append(f'<p class="caption">permerge {_e(version)}. Every figure is interactive (hover, zoom); the camera '
                "button above each saves a PNG. This file needs no network.</p>")

    js = get_plotlyjs()
    body = [escape_bidi(part) for part in body]  # what reached the text of the page any other way
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{CSS}</style>"
            f"<script type=\"text/javascript\">{js}</script></head>\n<body>\n" + "\n".join(body)
            + "\n</body></html>\n")


def pack_file_name(pair: tuple[str, str], options: str) -> str:
    return safe_name(*pair, "lecture-pack", options) + ".html"


__all__ = ["safe_name", "figure_table", "table_csv", "image_renderer", "figure_image", "lecture_pack",
           "pack_file_name"]
