"""Streaming, additive cross-correlation statistics between two models' features.

Per capture point we keep n, sum a, sum b, sum a^2, sum b^2 and the d_a x d_b cross block
sum a b^T, all about a per-unit shift (the first batch's mean) so that the float32 batch product
does not suffer the E[ab] - E[a]E[b] cancellation; accumulators are float64.  Statistics are
additive: batches, data prefixes, processes and GPUs combine by ``+`` (or an all-reduce).
Raw activations are never stored beyond the current batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .errors import StatisticsError


@dataclass
class PairStats:
    n: float
    shift_a: torch.Tensor
    shift_b: torch.Tensor
    sum_a: torch.Tensor
    sum_b: torch.Tensor
    sumsq_a: torch.Tensor
    sumsq_b: torch.Tensor
    cross: torch.Tensor  # sum over rows of (a - shift_a)(b - shift_b)^T, float64

    @classmethod
    def empty(cls, d_a: int, d_b: int, device="cpu") -> "PairStats":
        z = lambda *s: torch.zeros(*s, dtype=torch.float64, device=device)  # noqa: E731
        return cls(0.0, z(d_a), z(d_b), z(d_a), z(d_b), z(d_a), z(d_b), z(d_a, d_b))

    # --- accumulation ------------------------------------------------------------------------
    def update(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Add rows of features a (n x d_a) and b (n x d_b) taken on the same tokens."""
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"feature rows differ: {a.shape[0]} vs {b.shape[0]}")
        if a.shape[0] == 0:
            return
        if self.n == 0:  # first rows fix the shift
            self.shift_a = a.double().mean(0)
            self.shift_b = b.double().mean(0)
        ac = a.float() - self.shift_a.float()
        bc = b.float() - self.shift_b.float()
        self.n += a.shape[0]
        self.sum_a += ac.sum(0).double()
        self.sum_b += bc.sum(0).double()
        self.sumsq_a += (ac * ac).sum(0).double()
        self.sumsq_b += (bc * bc).sum(0).double()
        self.cross += (ac.T @ bc).double()

    def reshifted(self, shift_a: torch.Tensor, shift_b: torch.Tensor) -> "PairStats":
        """The same statistics expressed about other shifts (exact algebra, float64)."""
        da = (self.shift_a - shift_a).double()
        db = (self.shift_b - shift_b).double()
        n = self.n
        return PairStats(
            n, shift_a.double().clone(), shift_b.double().clone(),
            self.sum_a + n * da, self.sum_b + n * db,
            self.sumsq_a + 2 * da * self.sum_a + n * da * da,
            self.sumsq_b + 2 * db * self.sum_b + n * db * db,
            self.cross + torch.outer(da, self.sum_b) + torch.outer(self.sum_a, db) + n * torch.outer(da, db),
        )

    def __add__(self, other: "PairStats") -> "PairStats":
        if self.n == 0:
            return other.clone()
        if other.n == 0:
            return self.clone()
        o = other.reshifted(self.shift_a.to(other.shift_a.device), self.shift_b.to(other.shift_b.device))
        o = o.to(self.cross.device)
        return PairStats(self.n + o.n, self.shift_a.clone(), self.shift_b.clone(),
                         self.sum_a + o.sum_a, self.sum_b + o.sum_b, self.sumsq_a + o.sumsq_a,
                         self.sumsq_b + o.sumsq_b, self.cross + o.cross)

    def clone(self) -> "PairStats":
        return PairStats(self.n, *(t.clone() for t in self._tensors()))

    def to(self, device) -> "PairStats":
        return PairStats(self.n, *(t.to(device) for t in self._tensors()))

    def _tensors(self):
        return (self.shift_a, self.shift_b, self.sum_a, self.sum_b, self.sumsq_a, self.sumsq_b, self.cross)

    # --- results ---------------------------------------------------------------------------
    def mean_a(self) -> torch.Tensor:
        return self.shift_a + self.sum_a / self.n

    def mean_b(self) -> torch.Tensor:
        return self.shift_b + self.sum_b / self.n

    def correlation(self) -> np.ndarray:
        """Pearson correlation C[i, j] = cov(a_i, b_j) / (sigma_a_i sigma_b_j), population
        statistics, float64.  A unit with (numerically) zero variance correlates 0 with all."""
        if self.n == 0:
            raise StatisticsError("no tokens were seen: the statistics are empty")
        n = self.n
        ma, mb = self.sum_a / n, self.sum_b / n
        var_a = (self.sumsq_a / n - ma * ma).clamp_min(0)
        var_b = (self.sumsq_b / n - mb * mb).clamp_min(0)
        cov = self.cross / n - torch.outer(ma, mb)
        sd_a, sd_b = var_a.sqrt(), var_b.sqrt()
        # zero variance, relative to the feature's magnitude, means a dead/constant unit
        dead_a = var_a <= 1e-12 * (1.0 + self.mean_a() ** 2)
        dead_b = var_b <= 1e-12 * (1.0 + self.mean_b() ** 2)
        corr = cov / torch.outer(torch.where(dead_a, 1.0, sd_a), torch.where(dead_b, 1.0, sd_b))
        corr[dead_a, :] = 0.0
        corr[:, dead_b] = 0.0
        return corr.clamp(-1.0, 1.0).cpu().numpy()

    # --- serialisation (for the cache and for torch.distributed) ---------------------------
    def to_numpy(self) -> dict:
        return {"n": self.n, **{k: t.cpu().numpy() for k, t in zip(_FIELDS, self._tensors())}}

    @classmethod
    def from_numpy(cls, d: dict, device="cpu") -> "PairStats":
        return cls(float(d["n"]), *(torch.as_tensor(d[k], device=device) for k in _FIELDS))


_FIELDS = ("shift_a", "shift_b", "sum_a", "sum_b", "sumsq_a", "sumsq_b", "cross")


def pooled(stats: list[PairStats]) -> PairStats:
    """Statistics of several capture points summed (the residual 'All' variant)."""
    total = PairStats.empty(stats[0].sum_a.numel(), stats[0].sum_b.numel(), stats[0].cross.device)
    for s in stats:
        total = total + s
    return total


def all_reduce(stats: PairStats) -> PairStats:
    """Sum statistics across torch.distributed ranks: agree on a common shift (the n-weighted
    mean of the ranks' shifts), re-express, then sum every field."""
    import torch.distributed as dist

    dev = stats.cross.device
    n = torch.tensor([stats.n], dtype=torch.float64, device=dev)
    wa, wb = stats.shift_a * stats.n, stats.shift_b * stats.n
    dist.all_reduce(n)
    dist.all_reduce(wa)
    dist.all_reduce(wb)
    total = n.item()
    if total == 0:
        return stats
    s = stats.reshifted(wa / total, wb / total) if stats.n else PairStats(
        0.0, wa / total, wb / total, *(torch.zeros_like(t) for t in stats._tensors()[2:]))
    for t in s._tensors()[2:]:
        dist.all_reduce(t)
    s.n = total
    return s


def check_finite(x: torch.Tensor, where: str) -> None:
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).sum().item()
        raise StatisticsError(f"{bad} non-finite feature values (NaN or inf) at {where}")


def snapshot_batches(n_batches: int, fractions) -> dict[float, int]:
    """Number of batches (a prefix) after which each data-fraction snapshot is taken."""
    return {float(f): max(1, math.ceil(f * n_batches - 1e-9)) for f in fractions}


# --- the single streaming pass over both models ------------------------------------------------

@dataclass
class StatsResult:
    """Statistics per capture point (group name) for the whole data, plus prefix snapshots."""
    points: dict[str, PairStats]
    snapshots: dict[float, dict[str, PairStats]]  # fraction of the batches -> statistics
    snapshot_tokens: dict[float, int]
    tokens: int
    sentences: int

    def at(self, fraction: float) -> dict[str, PairStats]:
        """Statistics of the first ``fraction`` of the data (1.0: all of it)."""
        return self.points if fraction >= 1.0 else self.snapshots[fraction]

    def to_numpy(self) -> dict:
        return {
            "points": {k: v.to_numpy() for k, v in self.points.items()},
            "snapshots": {f: {k: v.to_numpy() for k, v in s.items()} for f, s in self.snapshots.items()},
            "snapshot_tokens": dict(self.snapshot_tokens), "tokens": self.tokens, "sentences": self.sentences,
        }

    @classmethod
    def from_numpy(cls, d: dict) -> "StatsResult":
        return cls({k: PairStats.from_numpy(v) for k, v in d["points"].items()},
                   {f: {k: PairStats.from_numpy(v) for k, v in s.items()} for f, s in d["snapshots"].items()},
                   dict(d["snapshot_tokens"]), d["tokens"], d["sentences"])


DEFAULT_FRACTIONS = (0.01, 0.03, 0.1, 0.3, 1.0)


@torch.no_grad()
def collect_stats(model_a, model_b, spec, batches: list[dict], *, device="cpu",
                  fractions=DEFAULT_FRACTIONS, exclude_special: bool = False,
                  groups: list[str] | None = None, progress=None, distributed: bool = False) -> StatsResult:
    """One pass over ``batches`` through both models, accumulating the statistics of every group's
    capture point.  Batches are dicts with input_ids, attention_mask, token_type_ids and, when
    ``exclude_special``, special_tokens_mask.  With ``distributed`` the batches are sharded across
    torch.distributed ranks (batch i on rank i mod world) and the statistics all-reduced, so every
    rank returns the statistics of all the data."""
    groups = list(spec.groups) if groups is None else groups
    rank, world = 0, 1
    if distributed:
        import torch.distributed as dist
        rank, world = dist.get_rank(), dist.get_world_size()
    model_a.eval().to(device)
    model_b.eval().to(device)
    stats = {g: PairStats.empty(spec.groups[g].size, spec.groups[g].size, device) for g in groups}
    feats_a: dict[str, torch.Tensor] = {}
    row_mask: dict[str, torch.Tensor] = {}
    current = {"model": "a"}

    def grab(g: str):
        grp = spec.groups[g]

        def take(x: torch.Tensor):
            if grp.per_sentence:
                rows = x.reshape(x.shape[0], -1)
            else:
                rows = x[row_mask["tok"]]
            where = f"{grp.capture} ({grp.name}) of model {current['model'].upper()}"
            check_finite(rows, where)
            if current["model"] == "a":
                feats_a[g] = rows
            else:
                stats[g].update(feats_a.pop(g), rows)

        if grp.capture_io == "input":
            return lambda mod, args: take(args[0])
        return lambda mod, args, out: take(out[0] if isinstance(out, tuple) else out)

    handles = []
    for model in (model_a, model_b):
        modules = dict(model.named_modules())
        for g in groups:
            grp = spec.groups[g]
            if grp.capture not in modules:
                raise ValueError(f"capture module {grp.capture} not found")
            m = modules[grp.capture]
            hook = grab(g)
            handles.append(m.register_forward_pre_hook(hook) if grp.capture_io == "input" else m.register_forward_hook(hook))
    cuts = snapshot_batches(len(batches), fractions)
    snapshots, snapshot_tokens = {}, {}
    tokens = sentences = 0
    try:
        for i, batch in enumerate(batches):
            if i % world == rank:
                b = {k: v.to(device) for k, v in batch.items() if k in spec.inputs}
                mask = b["attention_mask"].bool()
                if exclude_special and "special_tokens_mask" in batch:
                    mask &= ~batch["special_tokens_mask"].to(device).bool()
                row_mask["tok"] = mask
                # every capture point lies in the encoder (and pooler): the heads need not run
                current["model"] = "a"
                model_a.base_model(**b)
                current["model"] = "b"
                model_b.base_model(**b)
                feats_a.clear()
            tokens += int(batch["attention_mask"].sum())
            sentences += int(batch["input_ids"].shape[0])
            for f, k in cuts.items():
                if k == i + 1:
                    snapshot_tokens[f] = tokens
                    if f < 1.0:  # the whole-data snapshot is ``points`` itself
                        snapshots[f] = {g: s.clone() for g, s in stats.items()}
            if progress:
                progress("statistics", i + 1, len(batches), tokens=tokens)
    finally:
        for h in handles:
            h.remove()
    if distributed:
        stats = {g: all_reduce(s) for g, s in stats.items()}
        snapshots = {f: {g: all_reduce(s) for g, s in snap.items()} for f, snap in snapshots.items()}
    to_cpu = lambda d: {g: s.to("cpu") for g, s in d.items()}  # noqa: E731
    return StatsResult(to_cpu(stats), {f: to_cpu(s) for f, s in snapshots.items()}, snapshot_tokens, tokens, sentences)
