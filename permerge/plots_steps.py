"""Figures of the barrier along training steps (``steps.step_barriers``); no Streamlit here."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from .plots import VANILLA_COLOR, method_color

DASHES = ("solid", "dot", "dash", "dashdot")


def barrier_along_steps(bars: pd.DataFrame, title: str = "Barrier along training steps") -> go.Figure:
    """One line per series and method: the barrier (± s.e.) at each training step, steps in order."""
    fig = go.Figure()
    order = list(dict.fromkeys(bars.sort_values("position")["step"]))
    for si, (label, s) in enumerate(bars.groupby("series", sort=False)):
        for method, g in s.groupby("method", sort=False):
            g = g.sort_values("position")
            color = VANILLA_COLOR if method == "vanilla" else method_color(method)
            fig.add_trace(go.Scatter(
                x=g["step"], y=g["barrier"], mode="lines+markers", name=f"{label}: {method}",
                line=dict(color=color, dash=DASHES[si % len(DASHES)]),
                error_y=dict(type="data", array=g["barrier_se"].astype(float).fillna(0.0)),
                hovertemplate=f"{label}, step %{{x}}<br>{method}: barrier %{{y:.4f}}<extra></extra>"))
    fig.update_xaxes(title="training step", type="category", categoryorder="array", categoryarray=order)
    fig.update_yaxes(title="loss barrier (± s.e. over scored tokens)")
    fig.update_layout(title=title, height=420, margin=dict(l=60, r=20, t=50, b=50), legend=dict(orientation="h", y=-0.25))
    return fig


def curves_along_steps(curves: pd.DataFrame, series: str, method: str, value: str = "loss") -> go.Figure:
    """One curve per step pair of one series for one method: ``value`` along lambda, later steps darker."""
    g = curves[(curves["series"] == series) & (curves["method"] == method)]
    positions = sorted(g["position"].unique())
    fig = go.Figure()
    for i, pos in enumerate(positions):
        c = g[g["position"] == pos].sort_values("lambda")
        shade = 0.25 + 0.75 * (i + 1) / len(positions)
        fig.add_trace(go.Scatter(x=c["lambda"], y=c[value], mode="lines+markers", name=f"step {c['step'].iloc[0]}",
                                 line=dict(color=f"rgba(31, 119, 180, {shade:.2f})")))
    fig.update_xaxes(title="λ (0: B′, 1: A)")
    fig.update_yaxes(title=value.replace("_", " "))
    fig.update_layout(title=f"{series}: {method}, one curve per training step", height=380,
                      margin=dict(l=60, r=20, t=50, b=50))
    return fig
