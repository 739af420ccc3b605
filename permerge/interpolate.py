"""Linear paths between A and B', the loss barrier, and mean / standard error over pairs."""
from __future__ import annotations

import math

import numpy as np

from .errors import StatisticsError


def lambda_grid(points: int = 21) -> np.ndarray:
    if points < 2:
        raise ValueError("a lambda grid needs at least 2 points")
    return np.round(np.linspace(0.0, 1.0, points), 10)


def interpolate_state(state_a: dict, state_b: dict, lam: float) -> dict:
    """theta(lambda) = lambda * A + (1 - lambda) * B' for floating-point tensors; integer buffers
    (position ids, token types) are taken from A unchanged."""
    out = {}
    for k, ta in state_a.items():
        tb = state_b[k]
        out[k] = lam * ta + (1.0 - lam) * tb if ta.is_floating_point() else ta
    return out


def curve(model, state_a: dict, state_b: dict, lambdas, evaluate_fn, progress=None, label="") -> list[dict]:
    """Evaluate ``model`` (a working copy) at every lambda; returns one dict per lambda."""
    rows = []
    for i, lam in enumerate(lambdas):
        model.load_state_dict(interpolate_state(state_a, state_b, float(lam)))
        row = {"lambda": float(lam), **evaluate_fn(model)}
        if not math.isfinite(row["loss"]):  # raised inside the cached computation: nothing is stored
            raise StatisticsError(f"the loss at lambda {float(lam):.2f}{f' ({label})' if label else ''} is not finite "
                                  f"({row['loss']}): the interpolated model overflows; nothing was cached")
        rows.append(row)
        if progress:
            progress("interpolation", i + 1, len(lambdas), method=label)
    return rows


def barrier(lambdas, losses, loss_a: float, loss_b: float) -> tuple[float, float]:
    """max_lambda L(theta(lambda)) - (L(A) + L(B)) / 2, and the lambda of the maximum.  loss_b is
    the ORIGINAL B's loss, also for variants whose B' is not B."""
    losses = np.asarray(losses, dtype=float)
    i = int(np.argmax(losses))
    return float(losses[i] - 0.5 * (loss_a + loss_b)), float(np.asarray(lambdas)[i])


def mean_sem(values) -> tuple[float, float]:
    v = np.asarray(list(values), dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan")
    sem = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return float(v.mean()), sem


def clone_state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
