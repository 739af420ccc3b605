"""Pure Plotly figure builders for the dashboard (no Streamlit here).

Every builder takes result objects or data frames from the library (``study``, ``pipeline``,
``align``) and returns a ``plotly.graph_objects.Figure``.  Large correlation matrices are drawn as
a colour-mapped image (``render_mode`` says which drawing a size gets, so a page can say so).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
try:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
except ImportError as e:  # installed without the dashboard extra
    from .extras import missing

    raise missing("permerge.plots", "plotly", "dashboard") from e

# Diverging colour scale for correlations in [-1, 1] (ColorBrewer RdBu, reversed: red = +1).
RDBU = ["#053061", "#2166ac", "#4393c3", "#92c5de", "#d1e5f0", "#f7f7f7",
        "#fddbc7", "#f4a582", "#d6604d", "#b2182b", "#67001f"]
COLORSCALE = [[i / (len(RDBU) - 1), c] for i, c in enumerate(RDBU)]
PALETTE = ["#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880",
           "#ff97ff", "#fecb52"]

# One colour per method on every chart.  Keys are ``AlignOptions.label()`` strings; the paper's
# table row names (``study.table_label``) map onto the same options, so "Head-Perm" in Table 1 and
# "FF + attn:head-perm" on a curve share a colour.  Vanilla (no alignment) is grey everywhere;
# the default alignment (FF + Head-Perm) is red, which is also "after" on the per-layer chart.
VANILLA_COLOR = "#7f7f7f"
ALIGNED_COLOR = "#d62728"
METHOD_COLORS = {
    "vanilla": VANILLA_COLOR,
    "FF + attn:head-perm": ALIGNED_COLOR,
    "FF": "#1f77b4",
    "attn:head-perm": "#ff7f0e",
    "FF + attn:monotonic": "#2ca02c",
    "FF + attn:ignore-heads": "#9467bd",
    "attn:monotonic": "#98df8a",
    "attn:ignore-heads": "#c5b0d5",
    "res:first": "#8c564b",
    "res:last": "#e377c2",
    "res:all": "#17becf",
    "res:separate": "#bcbd22",
    "FF + attn:head-perm + pooler": "#c51b7d",  # the classifiers' aligned curve: strong enough for a projector
    "weights: FF + attn:head-perm": "#393b79",  # weight matching (see weight_match.py)
    "weights: FF + attn:head-perm + res:all": "#6b6ecf",
}
OFF_DIAGONAL_COLOR = "#9ecae1"


def _table_aliases() -> dict[str, str]:
    """The paper's table row names -> the options' labels (imported lazily: ``study`` loads torch)."""
    from .study import TABLE1, TABLE2, table_label

    return {table_label(o): o.label() for o in TABLE1 + TABLE2}


def method_color(method: str) -> str:
    """The colour of a method on every chart: fixed for the known methods, else a stable pick
    from the palette by the label's text (the same label gets the same colour in every figure)."""
    m = str(method)
    if m in METHOD_COLORS:
        return METHOD_COLORS[m]
    alias = _table_aliases().get(m)
    if alias in METHOD_COLORS:
        return METHOD_COLORS[alias]
    import zlib

    return PALETTE[zlib.crc32(m.encode()) % len(PALETTE)]
LAMBDA_TITLE = "λ  (0 = B′, 1 = A)"
HEATMAP_CELLS = 256  # up to this width: an interactive heatmap with hover values


def render_mode(d: int, max_pixels: int = 1024) -> tuple[str, int]:
    """How a d x d matrix is drawn: ("heatmap", 1), ("image", 1) or ("downsampled image", factor)."""
    if d <= HEATMAP_CELLS:
        return "heatmap", 1
    if d <= max_pixels:
        return "image", 1
    return "downsampled image", int(np.ceil(d / max_pixels))


def render_note(d: int, max_pixels: int = 1024) -> str:
    mode, f = render_mode(d, max_pixels)
    if mode == "heatmap":
        return f"{d} x {d}: drawn as an interactive heatmap (hover shows each value)."
    if mode == "image":
        return (f"{d} x {d}: drawn as a picture, one pixel per pair of units, to stay quick; hovering shows "
                "the position but not the value. Drag a rectangle to zoom in.")
    return (f"{d} x {d}: too big for one pixel per pair, so each pixel is the average of a {f} x {f} block "
            f"({int(np.ceil(d / f))} x {int(np.ceil(d / f))} pixels). Zoom into a window of units for exact values.")


def _block_mean(C: np.ndarray, f: int) -> np.ndarray:
    if f <= 1:
        return C
    r, c = C.shape
    R, Cc = int(np.ceil(r / f)) * f, int(np.ceil(c / f)) * f
    pad = np.full((R, Cc), np.nan)
    pad[:r, :c] = C
    return np.nanmean(pad.reshape(R // f, f, Cc // f, f), axis=(1, 3))


def _to_rgb(C: np.ndarray, zmin=-1.0, zmax=1.0) -> np.ndarray:
    """Map values to RGB uint8 with the diverging scale (for image rendering)."""
    stops = np.array([[int(h[1:3], 16), int(h[3:5], 16), int(h[5:7], 16)] for h in RDBU], dtype=float)
    t = np.clip((np.nan_to_num(C) - zmin) / (zmax - zmin), 0, 1) * (len(RDBU) - 1)
    lo = np.floor(t).astype(int).clip(0, len(RDBU) - 2)
    w = (t - lo)[..., None]
    return (stops[lo] * (1 - w) + stops[lo + 1] * w).round().astype(np.uint8)


def live_range(values, min_span: float = 0.5) -> tuple[float, float]:
    """A y range for a curve drawn while its points come in: the points with a margin, and at least
    ``min_span`` wide (nats), so that two nearly equal end points are not stretched into a steep line."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return 0.0, 1.0
    lo, hi = float(v.min()), float(v.max())
    pad = max(0.15 * (hi - lo), (min_span - (hi - lo)) / 2, 0.0)
    return lo - pad, hi + pad


def heatmap(C: np.ndarray, heads: int | None = None, title: str = "", max_pixels: int = 1024,
            x_title: str = "unit of B", y_title: str = "unit of A", zmin: float = -1.0, zmax: float = 1.0,
            offset: tuple[int, int] = (0, 0), row_ids=None, col_ids=None) -> go.Figure:
    """A correlation matrix, rows = A's units, columns = B's (or B′'s), with head-block grid lines
    when ``heads`` is given.  ``offset`` labels the axes of a block cut out of a bigger matrix.
    ``row_ids`` / ``col_ids``: the unit numbers of reordered rows / columns (hover shows them; the
    axes then count positions)."""
    import plotly.express as px

    C = np.asarray(C, dtype=float)
    r, c = C.shape
    mode, f = render_mode(max(r, c), max_pixels)
    if mode == "heatmap" and (row_ids is not None or col_ids is not None):
        ri = np.arange(r) + offset[0] if row_ids is None else np.asarray(row_ids)
        ci = np.arange(c) + offset[1] if col_ids is None else np.asarray(col_ids)
        ids = np.stack(np.broadcast_arrays(ri[:, None], ci[None, :]), axis=-1)
        fig = go.Figure(go.Heatmap(z=C, x=np.arange(c) + offset[1], y=np.arange(r) + offset[0], customdata=ids,
                                   colorscale=COLORSCALE, zmin=zmin, zmax=zmax, colorbar=dict(title="corr"),
                                   hovertemplate="A unit %{customdata[0]}<br>B unit %{customdata[1]}"
                                                 "<br>corr %{z:.3f}<extra></extra>"))
    elif mode == "heatmap":
        fig = go.Figure(go.Heatmap(z=C, x=np.arange(c) + offset[1], y=np.arange(r) + offset[0],
                                   colorscale=COLORSCALE, zmin=zmin, zmax=zmax, colorbar=dict(title="corr"),
                                   hovertemplate="A unit %{y}<br>B unit %{x}<br>corr %{z:.3f}<extra></extra>"))
    else:
        img = _to_rgb(_block_mean(C, f), zmin, zmax)
        fig = px.imshow(img, binary_string=True)
        half = (f - 1) / 2  # pixel i covers units i*f .. i*f + f - 1
        fig.update_traces(x0=offset[1] + half, dx=f, y0=offset[0] + half, dy=f,
                          hovertemplate="A unit ≈%{y}<br>B unit ≈%{x}<extra></extra>")
        # an invisible trace carries the colour bar the image itself cannot have
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", showlegend=False, hoverinfo="skip",
                                 marker=dict(colorscale=COLORSCALE, cmin=zmin, cmax=zmax, color=[0],
                                             showscale=True, colorbar=dict(title="corr"))))
    if heads and heads > 1 and r == c and r % heads == 0:
        dk = r // heads
        for h in range(1, heads):
            pos = h * dk - 0.5 + offset[0]
            fig.add_shape(type="line", x0=pos, x1=pos, y0=offset[0] - 0.5, y1=offset[0] + r - 0.5,
                          line=dict(color="black", width=1))
            fig.add_shape(type="line", y0=pos, y1=pos, x0=offset[1] - 0.5, x1=offset[1] + c - 0.5,
                          line=dict(color="black", width=1))
    fig.update_yaxes(autorange="reversed", title=y_title, scaleanchor="x", constrain="domain")
    fig.update_xaxes(title=x_title, constrain="domain")
    fig.update_layout(title=title, height=520, margin=dict(l=60, r=20, t=50, b=50), plot_bgcolor="white")
    return fig


def diagonal_histogram(C_after: np.ndarray, C_before: np.ndarray | None = None, title: str = "",
                       bins: int = 40) -> go.Figure:
    """How the matched pairs stand out: histograms (as shares of their own kind) of the diagonal of
    the aligned matrix (unit i of A with the unit of B matched to it), of the diagonal before
    alignment (unit i with unit i), and of every other pair (off-diagonal entries)."""
    A = np.asarray(C_after, dtype=float)
    d = min(A.shape)
    off = A[~np.eye(A.shape[0], A.shape[1], dtype=bool)]
    series = [("every other pair (off the diagonal)", off, OFF_DIAGONAL_COLOR)]
    if C_before is not None:
        series.append(("unit i with unit i, before alignment", np.diag(np.asarray(C_before, dtype=float))[:d],
                       VANILLA_COLOR))
    series.append(("matched pairs after alignment (the diagonal)", np.diag(A)[:d], ALIGNED_COLOR))
    fig = go.Figure()
    edges = dict(start=-1.0, end=1.0, size=2.0 / bins)
    for name, v, color in series:
        fig.add_trace(go.Histogram(x=v, name=f"{name}: mean {np.mean(v):.3f}", xbins=edges, histnorm="percent",
                                   marker_color=color, opacity=0.65,
                                   hovertemplate="corr %{x}<br>%{y:.1f}% of these pairs<extra></extra>"))
    fig.update_layout(barmode="overlay", title=title, height=360, margin=dict(l=60, r=20, t=50, b=50),
                      legend=dict(orientation="h", y=-0.3))
    fig.update_xaxes(title="correlation", range=[-1, 1])
    fig.update_yaxes(title="% of the pairs of that kind")
    return fig


def permutation_matrix(perm, heads: int | None = None, title: str = "", highlight_rows=None) -> go.Figure:
    """The permutation as a 0/1 matrix: row i (unit i of B′) has its 1 in column perm[i] (the unit of
    B it takes).  Head grid lines show whether heads move as whole blocks; highlighted rows (the
    current step) are boxed."""
    perm = np.asarray(perm)
    d = len(perm)
    fig = go.Figure(go.Scattergl(x=perm, y=np.arange(d), mode="markers",
                                 marker=dict(color=ALIGNED_COLOR, size=max(2, min(10, 400 // d)), symbol="square"),
                                 hovertemplate="B′ unit %{y} ← B unit %{x}<extra></extra>", showlegend=False))
    if heads and heads > 1 and d % heads == 0:
        dk = d // heads
        for h in range(1, heads):
            pos = h * dk - 0.5
            fig.add_vline(x=pos, line=dict(color="black", width=1))
            fig.add_hline(y=pos, line=dict(color="black", width=1))
    for lo, hi in (highlight_rows or []):
        fig.add_shape(type="rect", x0=-0.5, x1=d - 0.5, y0=lo - 0.5, y1=hi - 0.5, line=dict(color="black", width=1),
                      fillcolor="rgba(255, 215, 0, 0.35)", layer="below")
        rows = np.arange(lo, hi)
        fig.add_trace(go.Scattergl(x=perm[rows], y=rows, mode="markers", showlegend=False,
                                   marker=dict(color="black", size=max(6, min(12, 600 // d)), symbol="square"),
                                   hovertemplate="B′ unit %{y} ← B unit %{x}<extra></extra>"))
    fig.update_yaxes(range=[d - 0.5, -0.5], title="unit of B′", constrain="domain")
    fig.update_xaxes(range=[-0.5, d - 0.5], title="unit of B", scaleanchor="y", constrain="domain")
    fig.update_layout(title=title, height=420, margin=dict(l=60, r=20, t=50, b=50), plot_bgcolor="white")
    return fig


def weight_panels(mats: list[tuple[str, np.ndarray]], axis: int, boxes: list[list[tuple[int, int]]] | None = None,
                  title: str = "", max_cells: int = 96, subtitle: str = "") -> go.Figure:
    """Weight matrices side by side (e.g. A, B, B′), values on a symmetric colour scale.  ``axis``
    is the permuted axis (0: rows, 1: columns); ``boxes`` per panel: (first, last + 1) index ranges
    along that axis to outline.  The other axis is cut to its first ``max_cells`` entries.
    ``subtitle``: a second, smaller title line (a long title on one line runs under the chart's toolbar)."""
    n = len(mats)
    fig = make_subplots(rows=1, cols=n, subplot_titles=[t for t, _ in mats], horizontal_spacing=0.04)
    vmax = max(float(np.nanmax(np.abs(m))) for _, m in mats) or 1.0
    for col, (name, m) in enumerate(mats, start=1):
        m = np.asarray(m, dtype=float)
        m = m[:, :max_cells] if axis == 0 else m[:max_cells, :]
        fig.add_trace(go.Heatmap(z=m, colorscale=COLORSCALE, zmin=-vmax, zmax=vmax, showscale=col == n,
                                 colorbar=dict(title="weight"),
                                 hovertemplate=f"{name}<br>row %{{y}}, column %{{x}}<br>%{{z:.4f}}<extra></extra>"),
                      row=1, col=col)
        for lo, hi in (boxes[col - 1] if boxes else []):
            if axis == 0:
                shape = dict(x0=-0.5, x1=m.shape[1] - 0.5, y0=lo - 0.5, y1=hi - 0.5)
            else:
                shape = dict(y0=-0.5, y1=m.shape[0] - 0.5, x0=lo - 0.5, x1=hi - 0.5)
            fig.add_shape(type="rect", line=dict(color="black", width=2), row=1, col=col, **shape)
        fig.update_yaxes(autorange="reversed", row=1, col=col)
    moved, other = ("unit (row)", "input dimension") if axis == 0 else ("unit (column)", "output dimension")
    fig.update_yaxes(title=moved if axis == 0 else other, row=1, col=1)
    fig.update_xaxes(title=other if axis == 0 else moved)
    text = f"{title}<br><span style='font-size:12px'>{subtitle}</span>" if subtitle else title
    fig.update_layout(title=text, height=480 if subtitle else 460, margin=dict(l=60, r=20, t=95 if subtitle else 70, b=50))
    return fig


def head_block(C: np.ndarray, heads: int, j: int, k: int) -> np.ndarray:
    """The d_k x d_k block of head j of A against head k of the given columns."""
    dk = C.shape[0] // heads
    return np.asarray(C)[j * dk:(j + 1) * dk, k * dk:(k + 1) * dk]


def head_cost(cost: np.ndarray, outer=None, title: str = "Head-pair cost") -> go.Figure:
    """H x H matrix of best inner matched sums; the outer assignment's cells are boxed."""
    cost = np.asarray(cost, dtype=float)
    H = cost.shape[0]
    fig = go.Figure(go.Heatmap(z=cost, x=list(range(H)), y=list(range(H)), colorscale="Viridis",
                               text=np.round(cost, 2), texttemplate="%{text}", colorbar=dict(title="cost"),
                               hovertemplate="head %{y} of A<br>head %{x} of B<br>matched sum %{z:.3f}<extra></extra>"))
    if outer is not None:
        for j, k in enumerate(np.asarray(outer)):
            fig.add_shape(type="rect", x0=k - 0.5, x1=k + 0.5, y0=j - 0.5, y1=j + 0.5,
                          line=dict(color="red", width=3))
    fig.update_yaxes(range=[H - 0.5, -0.5], title="head of A", dtick=1)
    fig.update_xaxes(range=[-0.5, H - 0.5], title="head of B (red box: chosen by the outer assignment)", dtick=1)
    fig.update_layout(title=title, height=420, margin=dict(l=60, r=20, t=50, b=50))
    return fig


def _method_styles(methods, preserving: dict) -> dict:
    return {m: dict(color=method_color(m), dash="solid" if preserving.get(m, True) else "dash") for m in methods}


def curves(df: pd.DataFrame, value: str = "loss", barriers: pd.DataFrame | None = None,
           title: str = "", y_title: str | None = None, log_y: bool = False) -> go.Figure:
    """Curves along lambda, one line per method (df of ``study.curves_frame``).  With ``barriers``
    (``study.barriers_frame``), each method's barrier is marked at its lambda (loss view), and the
    endpoint mean (L(A) + L(B)) / 2 it is measured from is drawn dashed."""
    fig = go.Figure()
    methods = list(dict.fromkeys(df["method"]))
    pres = df.groupby("method")["function_preserving"].first().to_dict() if "function_preserving" in df else {}
    styles = _method_styles(methods, pres)
    for m in methods:
        g = df[df["method"] == m].sort_values("lambda")
        name = m if pres.get(m, True) else f"{m} (NOT function-preserving)"
        fig.add_trace(go.Scatter(x=g["lambda"], y=g[value], mode="lines+markers", name=name,
                                 line=dict(color=styles[m]["color"], dash=styles[m]["dash"]),
                                 hovertemplate=f"{m}<br>λ %{{x:.2f}}<br>{value} %{{y:.4f}}<extra></extra>"))
    top = 50
    if barriers is not None and value == "loss" and len(barriers):
        mid = float((barriers["loss_a"].iloc[0] + barriers["loss_b"].iloc[0]) / 2)
        fig.add_hline(y=mid, line=dict(color="gray", dash="dot", width=1))
        shown = [b for _, b in barriers.iterrows() if b["method"] in styles]
        for n, b in enumerate(shown):
            m, color = b["method"], styles[b["method"]]["color"]
            # the barrier drawn as what it is: a segment from the endpoint mean up to the curve's top,
            # nudged sideways per method so that segments at the same lambda stay apart
            x = float(b["barrier_lambda"]) + 0.012 * (n - (len(shown) - 1) / 2)
            m_mid = float((b["loss_a"] + b["loss_b"]) / 2)
            fig.add_trace(go.Scatter(x=[x, x], y=[m_mid, m_mid + float(b["barrier"])], mode="lines+markers",
                                     line=dict(color=color, width=3), marker=dict(symbol="line-ew", size=10,
                                                                                  line=dict(width=2, color=color)),
                                     showlegend=False, hoverinfo="skip"))
        # labels stacked above the plotting area, one line each: they can overlap neither each
        # other nor the curves
        lines = [(f"<b>{b['method']}</b>: barrier {b['barrier']:.3f} at λ = {b['barrier_lambda']:.2f}",
                  styles[b["method"]]["color"]) for b in shown]
        lines.append(("dotted line: (L(A) + L(B)) / 2, the level each barrier (vertical bar) is measured from",
                      "gray"))
        for n, (text, color) in enumerate(lines):
            fig.add_annotation(xref="paper", yref="paper", x=0.0, y=1.0, yshift=8 + 19 * (len(lines) - 1 - n),
                               xanchor="left", yanchor="bottom", showarrow=False, text=text,
                               font=dict(color=color, size=13))
        top = 60 + 19 * len(lines)
    fig.update_xaxes(title=LAMBDA_TITLE, range=[-0.02, 1.02])
    fig.update_yaxes(title=y_title or value.replace("_", " "), type="log" if log_y else "linear")
    if log_y and len(df) and df[value].notna().any():  # plain numbers on the log axis, not "3 ... 9, 100, 2 ..."
        vals, text = plain_log_ticks(float(df[value].min()), float(df[value].max()))
        if vals:
            fig.update_yaxes(tickvals=vals, ticktext=text, title=(y_title or value.replace("_", " ")) + " (log scale)")
    fig.update_layout(title=dict(text=title, y=0.98, yanchor="top"), height=440 + top - 50, hovermode="x unified",
                      margin=dict(l=60, r=20, t=top, b=50), legend=dict(orientation="h", y=-0.25))
    return fig


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    return f"rgba({int(h[0:2], 16)}, {int(h[2:4], 16)}, {int(h[4:6], 16)}, {alpha})"


def band(df: pd.DataFrame, title: str = "", y_title: str = "loss") -> go.Figure:
    """Mean with a standard-error band per method (df of ``study.band``)."""
    fig = go.Figure()
    for m in dict.fromkeys(df["method"]):
        g = df[df["method"] == m].sort_values("lambda")
        color = method_color(m)
        lo, hi = g["mean"] - g["std_err"], g["mean"] + g["std_err"]
        fig.add_trace(go.Scatter(x=list(g["lambda"]) + list(g["lambda"])[::-1], y=list(hi) + list(lo)[::-1],
                                 fill="toself", fillcolor=_rgba(color, 0.2), line=dict(width=0),
                                 hoverinfo="skip", showlegend=False, legendgroup=m))
        fig.add_trace(go.Scatter(x=g["lambda"], y=g["mean"], mode="lines+markers", name=m, legendgroup=m,
                                 line=dict(color=color), customdata=np.stack([g["std_err"], g["pairs"]], axis=1),
                                 hovertemplate=f"{m}<br>λ %{{x:.2f}}<br>mean %{{y:.4f}} ± %{{customdata[0]:.4f}}"
                                               f"<br>%{{customdata[1]}} pair(s)<extra></extra>"))
    fig.update_xaxes(title=LAMBDA_TITLE, range=[-0.02, 1.02])
    fig.update_yaxes(title=y_title)
    fig.update_layout(title=title, height=420, margin=dict(l=60, r=20, t=50, b=50),
                      legend=dict(orientation="h", y=-0.25))
    return fig


def layer_corr(df: pd.DataFrame, title: str = "Mean feature correlation, before vs after",
               method: str | None = None, view: str = "bars") -> go.Figure:
    """Fig. 5: mean correlation per layer (FF, attention) and per residual point, before and after
    (df of ``study.layer_correlations``), as grouped bars per layer (``view="bars"``, the paper's
    figure; error bars when ``df`` has ``before_se`` / ``after_se``, e.g. the standard error over
    several pairs) or as lines (``view="lines"``).  "before" has vanilla's colour, "after" the colour
    of ``method`` (the default alignment's when not given)."""
    if view not in ("bars", "lines"):
        raise ValueError(f"unknown view {view!r}: bars or lines")
    after_color = method_color(method) if method else ALIGNED_COLOR
    kinds = [k for k in ("ff", "att", "qk", "res", "pooler") if k in set(df["kind"])]
    names = {"ff": "feed-forward", "att": "attention", "qk": "query/key (RoPE)", "res": "residual stream",
             "pooler": "pooler"}
    fig = make_subplots(rows=1, cols=len(kinds), subplot_titles=[names[k] for k in kinds], shared_yaxes=True)
    for col, k in enumerate(kinds, start=1):
        g = df[df["kind"] == k]
        if k == "res":
            g = g.sort_values("position")
            x = list(g["group"])
        elif k == "pooler":
            x = list(g["group"])
        else:
            g = g.sort_values("layer", na_position="first")  # a group outside the layers (ELECTRA's emb) first
            x = [f"layer {int(v)}" if pd.notna(v) else n for v, n in zip(g["layer"], g["group"])]
        for what, color, dash in (("before", VANILLA_COLOR, "dot"), ("after", after_color, "solid")):
            custom = np.stack([g["group"], g["aligned"].astype(str)], axis=1)
            hover = "%{customdata[0]}<br>" + what + " %{y:.3f}<br>aligned: %{customdata[1]}<extra></extra>"
            if view == "bars":
                se = g.get(f"{what}_se")
                fig.add_trace(go.Bar(x=x, y=g[what], name=what, legendgroup=what, showlegend=col == 1,
                                     marker_color=color, customdata=custom, hovertemplate=hover,
                                     error_y=dict(type="data", array=list(se), visible=True) if se is not None else None),
                              row=1, col=col)
            else:
                fig.add_trace(go.Scatter(x=x, y=g[what], mode="lines+markers", name=what, legendgroup=what,
                                         showlegend=col == 1, line=dict(color=color, dash=dash),
                                         customdata=custom, hovertemplate=hover), row=1, col=col)
    fig.update_yaxes(title="mean correlation", row=1, col=1)
    fig.update_layout(title=title, height=420, margin=dict(l=60, r=20, t=70, b=50), barmode="group",
                      legend=dict(orientation="h", y=-0.2))
    return fig


def token_label(n: float) -> str:
    """Token counts for axis ticks: 512, 2k, 16.4k, 1.2M."""
    n = float(n)
    if n >= 1e6:
        return f"{n / 1e6:.3g}M"
    if n >= 1e3:
        return f"{n / 1e3:.3g}k"
    return f"{n:.0f}"


def data_amount(df: pd.DataFrame, title: str = "Barrier vs amount of alignment data") -> go.Figure:
    """Fig. 7: barrier against alignment tokens (df of ``study.data_amount``), on a log axis whose
    ticks are the measured token counts (written 2k, 16.4k); vanilla averaging as a grey reference."""
    g = df.sort_values("tokens")
    method = str(g["method"].iloc[0])
    color = method_color(method)
    fig = go.Figure(go.Scatter(x=g["tokens"], y=g["barrier"], mode="lines+markers", name=method,
                               line=dict(color=color), marker=dict(color=color, size=9),
                               customdata=[[float(f), token_label(t)] for f, t in zip(g["fraction"], g["tokens"])],
                               hovertemplate="%{customdata[1]} tokens (first %{customdata[0]:.0%} of the data)"
                                             "<br>barrier %{y:.4f}<extra></extra>"))
    if "vanilla_barrier" in g:
        fig.add_hline(y=float(g["vanilla_barrier"].iloc[0]), line=dict(color=VANILLA_COLOR, dash="dash"),
                      annotation_text="vanilla (no alignment)", annotation_position="top left",
                      annotation_font_color=VANILLA_COLOR)
    ticks = sorted(set(float(t) for t in g["tokens"]))
    kept = []  # drop ticks closer than a factor 1.5 to the previous one, so that labels stay apart
    for t in ticks:
        if not kept or t / kept[-1] >= 1.5:
            kept.append(t)
    fig.update_xaxes(title="alignment tokens (log scale)", type="log", tickvals=kept,
                     ticktext=[token_label(t) for t in kept], tickangle=0)
    fig.update_yaxes(title="loss barrier")
    fig.update_layout(title=title, height=420, margin=dict(l=60, r=20, t=50, b=50), showlegend=False)
    return fig


def methods_bar(table: pd.DataFrame, title: str = "") -> go.Figure:
    """Barrier mean with standard-error bars per method (df of ``study.methods_table``), each bar in
    its method's colour; not function-preserving methods are hatched."""
    colors = [method_color(m) for m in table["method"]]
    hatch = ["/" if fp == "NO" else "" for fp in table["function_preserving"]]
    fig = go.Figure(go.Bar(x=table["method"], y=table["barrier"], marker=dict(color=colors, pattern_shape=hatch),
                           error_y=dict(type="data", array=table["std_err"].fillna(0.0)),
                           customdata=np.stack([table["std_err"], table["pairs"], table["function_preserving"]], axis=1),
                           hovertemplate="%{x}<br>barrier %{y:.4f} ± %{customdata[0]:.4f}<br>%{customdata[1]} pair(s)"
                                         "<br>function-preserving: %{customdata[2]}<extra></extra>"))
    fig.update_yaxes(title="loss barrier (mean ± s.e.)")
    fig.update_layout(title=title, height=380, margin=dict(l=60, r=20, t=50, b=80))
    return fig


def params_table(spec, group: str | None = None) -> pd.DataFrame:
    """The weights one permutation group touches, with the axis it gathers along: from
    ``spec.params_of(group)``, or given directly as (parameter, axis, label) triples."""
    triples = [(p, ax, spec.axis_label(p, ax)) for p, ax in spec.params_of(group)] if group is not None else spec
    rows = [{"parameter": p, "axis": ax, "permuted": label} for p, ax, label in triples]
    return pd.DataFrame(rows, columns=["parameter", "axis", "permuted"])


def to_html(fig: go.Figure) -> str:
    """Self-contained HTML (plotly.js from the CDN is avoided: the file works offline)."""
    return fig.to_html(include_plotlyjs=True, full_html=True)


def to_image(fig: go.Figure, fmt: str = "png") -> bytes | None:
    """PNG/SVG through kaleido, or None when kaleido cannot find a browser to render with."""
    try:
        return fig.to_image(format=fmt)
    except Exception:
        return None


def mark_dips(fig: go.Figure, curves: pd.DataFrame, shapes: pd.DataFrame, value: str = "loss") -> go.Figure:
    """Marks on a curves figure where each method's curve dips below both of its endpoints
    (``shapes.shapes_frame`` rows: method, dips, dip_losses, m_shaped): a downward triangle at every
    dip, labelled with its lambda, in the method's colour; an M-shaped curve's legend entry says so."""
    if value != "loss":
        return fig
    rows = [s for _, s in shapes.iterrows() if s["dips"]]
    labelled: set = set()
    for n, s in enumerate(rows):
        color = method_color(s["method"])
        label = ("M shape" if s["m_shaped"] else "dip below both ends") + f" ({s['method']})"
        # nudged sideways per method as the barrier bars are; each lambda labelled once
        dx = 0.012 * (n - (len(rows) - 1) / 2)
        text = [f"λ = {x:.2f}" if round(x, 6) not in labelled else "" for x in s["dips"]]
        labelled |= {round(x, 6) for x in s["dips"]}
        fig.add_trace(go.Scatter(x=[x + dx for x in s["dips"]], y=list(s["dip_losses"]), mode="markers+text", name=label,
                                 marker=dict(symbol="triangle-down", size=14, color=color,
                                             line=dict(width=1, color="black")),
                                 customdata=list(s["dips"]), text=text, textposition="middle left",
                                 textfont=dict(color="black", size=12),
                                 hovertemplate=f"{s['method']}: below both ends<br>λ %{{customdata:.2f}}<br>loss %{{y:.4f}}"
                                               "<extra></extra>"))
    return fig


def plain_log_ticks(lo: float, hi: float) -> tuple[list[float], list[str]]:
    """Ticks for a log axis from ``lo`` to ``hi`` written as plain numbers (1, 2, 5 times a power of
    ten; decades only when the range spans more than three), so that no tick reads as a lone digit."""
    lo, hi = float(min(lo, hi)), float(max(lo, hi))
    if not (lo > 0 and np.isfinite(hi)):
        return [], []
    e0, e1 = int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi)))
    steps = (1,) if e1 - e0 > 3 else (1, 2, 5)
    vals = [m * 10.0 ** e for e in range(e0, e1 + 1) for m in steps if lo <= m * 10.0 ** e <= hi]
    if len(vals) < 2:  # a narrow range: its ends and a few even steps between them
        vals = sorted(set(float(f"{v:.2g}") for v in np.geomspace(lo, hi, 4)))
    return vals, [f"{v:,.0f}" if v >= 10 else f"{v:g}" for v in vals]
