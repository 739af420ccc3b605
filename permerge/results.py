"""The value objects that the stages hand on and the cache stores, below both: the cache knows
their fields, not the stages that compute them."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CurveResult:
    """One interpolation curve between A and B′ (or B, for vanilla averaging) and its barrier."""
    method: str
    options: dict
    rows: list[dict]  # lambda, loss, and pseudo_perplexity, perplexity or accuracy
    barrier: float
    barrier_lambda: float
    loss_a: float
    loss_b: float  # the ORIGINAL B's loss
    function_preserving: bool
    fraction: float = 1.0
    tokens: int | None = None
    # standard error of the barrier over the scored tokens (MLM) or examples (classifiers): the
    # spread of L_t(lambda*) - (L_t(A) + L_t(B)) / 2 over items t, at the barrier's lambda*
    barrier_se: float | None = None
    items: int | None = None  # scored tokens or examples
