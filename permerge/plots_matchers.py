"""Figures comparing activation matching and weight matching on one pair (no Streamlit here)."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from .plots import method_color

KIND_COLORS = {"ff": "#1f77b4", "att": "#ff7f0e", "qk": "#d62728", "res": "#17becf", "pooler": "#8c564b"}


def barriers(bars: pd.DataFrame, title: str = "") -> go.Figure:
    """Barrier per method with ± one standard error (df of ``study.barriers_frame``)."""
    se = bars["barrier_se"].astype(float).fillna(0.0)
    fig = go.Figure(go.Bar(x=bars["method"], y=bars["barrier"], marker=dict(color=[method_color(m) for m in bars["method"]]),
                           error_y=dict(type="data", array=se),
                           customdata=se, hovertemplate="%{x}<br>barrier %{y:.4f} ± %{customdata:.4f}<extra></extra>"))
    fig.update_yaxes(title="loss barrier (± s.e. over scored tokens)")
    fig.update_layout(title=title, height=380, margin=dict(l=60, r=20, t=50, b=80))
    return fig


def agreement(df: pd.DataFrame, title: str = "") -> go.Figure:
    """Share of identical permutation entries per group (df of ``compare.agreement``), coloured by
    the group's kind, with the share two random permutations would agree on (1 / units) marked."""
    fig = go.Figure()
    for kind, g in df.groupby("kind", sort=False):
        fig.add_trace(go.Bar(x=g["group"], y=g["agree"], name=kind, marker=dict(color=KIND_COLORS.get(kind, "#7f7f7f")),
                             customdata=g[["units", "chance"]].to_numpy(),
                             hovertemplate="%{x}: %{y:.1%} of %{customdata[0]} units identical"
                                           "<br>chance: %{customdata[1]:.2%}<extra></extra>"))
    fig.add_trace(go.Scatter(x=df["group"], y=df["chance"], mode="markers", name="chance (1 / units)",
                             marker=dict(symbol="line-ew", size=14, line=dict(width=2, color="black"))))
    top = float(max(df["agree"].max(), df["chance"].max())) if len(df) else 1.0
    # the axis ends a little above the largest value: shares near chance stay visible
    fig.update_yaxes(title="share of identical entries", range=[0, min(1.02, max(0.05, 1.15 * top))], tickformat=".1%")
    fig.update_xaxes(categoryorder="array", categoryarray=list(df["group"]))
    fig.update_layout(title=title, height=380, margin=dict(l=60, r=20, t=50, b=80), barmode="group",
                      legend=dict(orientation="h", y=-0.3))
    return fig
