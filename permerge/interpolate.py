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


def interpolate_into(model, state_a: dict, state_b: dict, lam: float) -> None:
    """Write theta(lambda) into ``model``'s own parameters and buffers, on their device: one
    ``lerp`` kernel per tensor, no new state dict and no copy through the host.  ``lerp`` is exact
    at both ends (lambda = 0 gives B', 1 gives A bit for bit).  Integer buffers are taken from A."""
    import torch

    lam = float(lam)
    with torch.no_grad():
        for k, t in model.state_dict(keep_vars=True).items():
            ta, tb = state_a[k], state_b[k]
            if t.is_floating_point():
                torch.lerp(tb, ta, lam, out=t.data)
            else:
                t.data.copy_(ta)


def coarse_first(points: int) -> list[int]:
    """Indices 0..points-1 in coarse-to-fine order: the last and first (A and B'), the middle, then
    the midpoints of the gaps left, so that every prefix is a fairly even coarse grid."""
    if points < 1:
        return []
    order, seen = [], set()
    for i in (points - 1, 0):
        if i not in seen:
            order.append(i)
            seen.add(i)
    spans = [(0, points - 1)]
    while spans:
        nxt = []
        for lo, hi in spans:
            if hi - lo < 2:
                continue
            mid = (lo + hi) // 2
            if mid not in seen:
                order.append(mid)
                seen.add(mid)
            nxt += [(lo, mid), (mid, hi)]
        spans = nxt
    return order


def check_finite_loss(row: dict, label: str = "") -> None:
    """Stop a curve whose loss at some lambda is not finite (the interpolated model overflows)."""
    if not math.isfinite(row["loss"]):
        raise StatisticsError(f"the loss at lambda {row['lambda']:.2f}{f' ({label})' if label else ''} is not finite "
                              f"({row['loss']}): the interpolated model overflows; nothing was cached")


def barrier(lambdas, losses, loss_a: float, loss_b: float) -> tuple[float, float]:
    """max_lambda L(theta(lambda)) - (L(A) + L(B)) / 2, and the lambda of the maximum.  loss_b is
    the ORIGINAL B's loss, also for variants whose B' is not B."""
    losses = np.asarray(losses, dtype=float)
    i = int(np.argmax(losses))
    return float(losses[i] - 0.5 * (loss_a + loss_b)), float(np.asarray(lambdas)[i])


def barrier_sem(at_lambda, at_a, at_b) -> tuple[float | None, int | None]:
    """Standard error of the barrier from per-item losses (masked tokens or examples, the same items
    in the same order at every point): the barrier is the mean over items t of
    d_t = L_t(lambda*) - (L_t(A) + L_t(B)) / 2, so its standard error is std(d) / sqrt(n).  The choice
    of lambda* from the same data is not accounted for.  (None, None) without per-item losses."""
    if at_lambda is None or at_a is None or at_b is None or not (len(at_lambda) == len(at_a) == len(at_b)):
        return None, None
    d = np.asarray(at_lambda, dtype=float) - 0.5 * (np.asarray(at_a, dtype=float) + np.asarray(at_b, dtype=float))
    if len(d) < 2:
        return None, len(d)
    return float(d.std(ddof=1) / math.sqrt(len(d))), len(d)


def mean_sem(values) -> tuple[float, float]:
    v = np.asarray(list(values), dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan")
    sem = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return float(v.mean()), sem


def clone_state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
