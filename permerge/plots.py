"""Pure Plotly figure builders for the dashboard (no Streamlit here).

Every builder takes result objects or data frames from the library (``study``, ``pipeline``,
``align``) and returns a ``plotly.graph_objects.Figure``.  Large correlation matrices are drawn as
a colour-mapped image (``render_mode`` says which drawing a size gets, so a page can say so).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

# Diverging colour scale for correlations in [-1, 1] (ColorBrewer RdBu, reversed: red = +1).
RDBU = ["#053061", "#2166ac", "#4393c3", "#92c5de", "#d1e5f0", "#f7f7f7",
        "#fddbc7", "#f4a582", "#d6604d", "#b2182b", "#67001f"]
COLORSCALE = [[i / (len(RDBU) - 1), c] for i, c in enumerate(RDBU)]
PALETTE = ["#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880",
           "#ff97ff", "#fecb52"]
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
        return (f"{d} x {d}: drawn as an image (px.imshow-style PNG, binary_string) to stay responsive; "
                "hover shows the position only, zoom with the mouse.")
    return (f"{d} x {d}: downsampled by averaging {f} x {f} blocks and drawn as an image "
            f"({int(np.ceil(d / f))} x {int(np.ceil(d / f))} pixels); zoom into a head pair for exact values.")


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


def heatmap(C: np.ndarray, heads: int | None = None, title: str = "", max_pixels: int = 1024,
            x_title: str = "unit of B", y_title: str = "unit of A", zmin: float = -1.0, zmax: float = 1.0,
            offset: tuple[int, int] = (0, 0)) -> go.Figure:
    """A correlation matrix, rows = A's units, columns = B's (or B′'s), with head-block grid lines
    when ``heads`` is given.  ``offset`` labels the axes of a block cut out of a bigger matrix."""
    import plotly.express as px

    C = np.asarray(C, dtype=float)
    r, c = C.shape
    mode, f = render_mode(max(r, c), max_pixels)
    if mode == "heatmap":
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


def reorder_columns(C: np.ndarray, perm) -> np.ndarray:
    """B's columns in A's order: column i of the result is B′'s unit i = B's unit perm[i]."""
    return np.asarray(C)[:, np.asarray(perm)]


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
    out = {}
    for i, m in enumerate(methods):
        out[m] = dict(color=PALETTE[i % len(PALETTE)], dash="solid" if preserving.get(m, True) else "dash")
    return out


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
    if barriers is not None and value == "loss" and len(barriers):
        for n, (_, b) in enumerate(barriers.iterrows()):
            m = b["method"]
            if m not in styles:
                continue
            g = df[(df["method"] == m) & (np.isclose(df["lambda"], b["barrier_lambda"]))]
            if not len(g):
                continue
            y = float(g[value].iloc[0])
            fig.add_annotation(x=b["barrier_lambda"], y=y, text=f"{m}: barrier {b['barrier']:.3f}", showarrow=True,
                               arrowhead=2, ax=40, ay=-25 - 18 * n, xanchor="left", font=dict(color=styles[m]["color"]))
        mid = float((barriers["loss_a"].iloc[0] + barriers["loss_b"].iloc[0]) / 2)
        fig.add_hline(y=mid, line=dict(color="gray", dash="dot", width=1),
                      annotation_text="(L(A) + L(B)) / 2", annotation_position="bottom right")
    fig.update_xaxes(title=LAMBDA_TITLE, range=[-0.02, 1.02])
    fig.update_yaxes(title=y_title or value.replace("_", " "), type="log" if log_y else "linear")
    fig.update_layout(title=title, height=440, hovermode="x unified", margin=dict(l=60, r=20, t=50, b=50),
                      legend=dict(orientation="h", y=-0.25))
    return fig


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    return f"rgba({int(h[0:2], 16)}, {int(h[2:4], 16)}, {int(h[4:6], 16)}, {alpha})"


def band(df: pd.DataFrame, title: str = "", y_title: str = "loss") -> go.Figure:
    """Mean with a standard-error band per method (df of ``study.band``)."""
    fig = go.Figure()
    for i, m in enumerate(dict.fromkeys(df["method"])):
        g = df[df["method"] == m].sort_values("lambda")
        color = PALETTE[i % len(PALETTE)]
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


def layer_corr(df: pd.DataFrame, title: str = "Mean feature correlation, before vs after") -> go.Figure:
    """Fig. 5: mean correlation per layer (FF, attention) and per residual point, before and after
    (df of ``study.layer_correlations``)."""
    kinds = [k for k in ("ff", "att", "res", "pooler") if k in set(df["kind"])]
    names = {"ff": "feed-forward", "att": "attention", "res": "residual stream", "pooler": "pooler"}
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
        for what, color, dash in (("before", "#888888", "dot"), ("after", "#d62728", "solid")):
            fig.add_trace(go.Scatter(x=x, y=g[what], mode="lines+markers", name=what, legendgroup=what,
                                     showlegend=col == 1, line=dict(color=color, dash=dash),
                                     customdata=np.stack([g["group"], g["aligned"].astype(str)], axis=1),
                                     hovertemplate="%{customdata[0]}<br>" + what +
                                                   " %{y:.3f}<br>aligned: %{customdata[1]}<extra></extra>"),
                          row=1, col=col)
    fig.update_yaxes(title="mean correlation", row=1, col=1)
    fig.update_layout(title=title, height=420, margin=dict(l=60, r=20, t=70, b=50),
                      legend=dict(orientation="h", y=-0.2))
    return fig


def data_amount(df: pd.DataFrame, title: str = "Barrier vs amount of alignment data") -> go.Figure:
    """Fig. 7: barrier against alignment tokens (df of ``study.data_amount``)."""
    g = df.sort_values("tokens")
    fig = go.Figure(go.Scatter(x=g["tokens"], y=g["barrier"], mode="lines+markers", name=str(g["method"].iloc[0]),
                               customdata=g["fraction"],
                               hovertemplate="%{x} tokens (fraction %{customdata})<br>barrier %{y:.4f}<extra></extra>"))
    if "vanilla_barrier" in g:
        fig.add_hline(y=float(g["vanilla_barrier"].iloc[0]), line=dict(color="gray", dash="dash"),
                      annotation_text="vanilla (no alignment)", annotation_position="top left")
    fig.update_xaxes(title="alignment tokens", type="log")
    fig.update_yaxes(title="loss barrier")
    fig.update_layout(title=title, height=420, margin=dict(l=60, r=20, t=50, b=50))
    return fig


def methods_bar(table: pd.DataFrame, title: str = "") -> go.Figure:
    """Barrier mean with standard-error bars per method (df of ``study.methods_table``)."""
    colors = ["#d62728" if fp == "NO" else "#1f77b4" for fp in table["function_preserving"]]
    fig = go.Figure(go.Bar(x=table["method"], y=table["barrier"], marker_color=colors,
                           error_y=dict(type="data", array=table["std_err"].fillna(0.0)),
                           customdata=np.stack([table["std_err"], table["pairs"], table["function_preserving"]], axis=1),
                           hovertemplate="%{x}<br>barrier %{y:.4f} ± %{customdata[0]:.4f}<br>%{customdata[1]} pair(s)"
                                         "<br>function-preserving: %{customdata[2]}<extra></extra>"))
    fig.update_yaxes(title="loss barrier (mean ± s.e.)")
    fig.update_layout(title=title, height=380, margin=dict(l=60, r=20, t=50, b=80))
    return fig


def params_table(spec, group: str) -> pd.DataFrame:
    """The weights one permutation group touches, with the axis it gathers along."""
    rows = [{"parameter": p, "axis": ax, "permuted": spec.axis_label(p, ax)} for p, ax in spec.params_of(group)]
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
