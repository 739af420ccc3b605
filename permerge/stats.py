"""Streaming, additive cross-correlation statistics between two models' features.

Per capture point we keep n, sum a, sum b, sum a^2, sum b^2 and the d_a x d_b cross block
sum a b^T, all about a per-unit shift (the first batch's mean) so that the float32 batch product
does not suffer the E[ab] - E[a]E[b] cancellation; accumulators are float64.  Statistics are
additive: batches, data prefixes, processes and GPUs combine by ``+`` (or an all-reduce).
Raw activations are never stored beyond the current batch.

The pass (``collect_stats``) is built for throughput: one matrix product per capture point and
batch gives the cross block and both sums (a ones column is appended to the shifted features),
products are float32 (TF32 allowed on CUDA with half-precision forwards) and reach the float64
accumulators directly on a GPU or through a float32 staging matrix on a CPU, the forwards may run
under fp16/bf16 autocast, consecutive batches are merged into GPU-sized forwards, and nothing is
read back from the device inside the loop.
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
        statistics, float64.  A unit with (numerically) zero variance correlates 0 with all.
        Computed with numpy (single-threaded, releases the GIL) so that several run at once."""
        if self.n == 0:
            raise StatisticsError("no tokens were seen: the statistics are empty")
        n = self.n
        f = lambda t: t.detach().cpu().double().numpy()  # noqa: E731
        sum_a, sum_b, sumsq_a, sumsq_b = f(self.sum_a), f(self.sum_b), f(self.sumsq_a), f(self.sumsq_b)
        ma, mb = sum_a / n, sum_b / n
        var_a = np.maximum(sumsq_a / n - ma * ma, 0.0)
        var_b = np.maximum(sumsq_b / n - mb * mb, 0.0)
        sd_a, sd_b = np.sqrt(var_a), np.sqrt(var_b)
        # zero variance, relative to the feature's magnitude, means a dead/constant unit
        dead_a = var_a <= 1e-12 * (1.0 + (f(self.shift_a) + ma) ** 2)
        dead_b = var_b <= 1e-12 * (1.0 + (f(self.shift_b) + mb) ** 2)
        corr = f(self.cross) / n  # a new array: the statistics are left untouched
        corr -= np.outer(ma, mb)
        corr /= np.where(dead_a, 1.0, sd_a)[:, None]
        corr /= np.where(dead_b, 1.0, sd_b)[None, :]
        corr[dead_a, :] = 0.0
        corr[:, dead_b] = 0.0
        return np.clip(corr, -1.0, 1.0, out=corr)

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


def stats_bytes(result: "StatsResult") -> int:
    """Bytes held by the tensors of a StatsResult (the whole data and every snapshot)."""
    sets = [result.points, *result.snapshots.values()]
    return sum(t.numel() * t.element_size() for d in sets for s in d.values() for t in s._tensors())


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


# Prefix snapshots cost a full copy of the float64 statistics each (1.08 GB apiece for bert-base),
# so a pass keeps none unless a study asks: the amount-of-data study (Fig. 7) asks for DATA_FRACTIONS.
DEFAULT_FRACTIONS = (1.0,)
DATA_FRACTIONS = (0.01, 0.03, 0.1, 0.3, 1.0)
PRECISIONS = ("fp32", "fp16", "bf16")
_LOW = {"fp16": torch.float16, "bf16": torch.bfloat16}
# rows a float32 staging product may gather before it is folded into the float64 accumulator:
# each fold adds at most one float32 rounding of the running sum, so 2^16 rows keep the
# correlations within ~1e-6 of an all-float64 accumulation
STAGE_ROWS = 1 << 16
# The pass's memory beyond the two models is the accumulators (fixed by the widths) plus what one
# forward holds: model A's captured features until model B's forward reaches the same points, the
# float32 centred copies [x - shift | 1] of one point, and the forward's own activations.  The
# forward size is chosen from the model's widths so that this transient part stays under
# FORWARD_BYTES (bert-base: about 5k tokens), within [MIN_FORWARD_TOKENS, MAX_FORWARD_TOKENS]:
# small enough to bound memory, large enough to keep the fused products and forwards efficient.
FORWARD_BYTES = 3 << 29  # 1.5 GiB
MIN_FORWARD_TOKENS, MAX_FORWARD_TOKENS = 1024, 16384


def forward_tokens(spec, groups=None, budget: int = FORWARD_BYTES) -> int:
    """Tokens per forward of the statistics pass for this architecture: ``budget`` over the bytes a
    token costs while a forward is in flight, counted in float32 (features captured under fp16
    autocast take less, so this is an upper bound): every token-level capture point's features of
    model A, two centred copies of the widest point, and a few activations of the widest layer."""
    sizes = [spec.groups[g].size for g in (spec.groups if groups is None else groups)
             if not spec.groups[g].per_sentence]
    if not sizes:
        return MAX_FORWARD_TOKENS
    widest = max(sizes)
    per_token = 4 * sum(sizes) + 2 * 4 * (widest + 1) + 3 * 4 * widest
    return int(min(MAX_FORWARD_TOKENS, max(MIN_FORWARD_TOKENS, budget // per_token)))


def resolve_precision(precision: str | None, device) -> str:
    """The forwards' precision.  ``auto`` (or None): fp16 autocast on a CUDA device, float32
    elsewhere.  Measured on the bundled pair (bench/README.md): fp16 forwards keep every
    correlation within 1e-3 of the float64 reference and the permutations identical; bf16
    forwards (8 significant bits against fp16's 11) miss both bars, so bf16 is offered but is not
    the default.  A CPU runs float32, the exact path, unless asked otherwise."""
    if precision in (None, "auto"):
        return "fp16" if torch.device(device).type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise StatisticsError(f"unknown precision {precision!r}: use auto, fp32, fp16 or bf16")
    return precision


class _Accumulator:
    """Device-side sums of one capture point during the pass.

    ``big`` is the float64 (d_a+1) x (d_b+1) matrix [[sum a b^T, sum a], [sum b^T, n]] of the
    shifted features: one matrix product of the features with a ones column appended gives the
    cross block and both sums at once.  On the CPU the products go into a float32 staging
    matrix (BLAS adds into it for free) that is folded into ``big`` every STAGE_ROWS rows; on a
    GPU each product is added to ``big`` directly (the fold costs nothing there, the staging
    matrix would cost memory)."""

    def __init__(self, d_a: int, d_b: int, device, staged: bool):
        self.d_a, self.d_b = d_a, d_b
        self.device = torch.device(device)
        # allocated by the first product / fold: no pass spent zero-filling large matrices
        self.big: torch.Tensor | None = None
        self.stage: torch.Tensor | None = None
        self.staged = staged
        self.sq_a = torch.zeros(d_a, dtype=torch.float64, device=device)
        self.sq_b = torch.zeros(d_b, dtype=torch.float64, device=device)
        self.shift_a = self.shift_b = None  # float32, fixed by the first rows
        self.n = 0  # rows, counted on the host
        self.staged_rows = 0

    def add(self, a: torch.Tensor, b: torch.Tensor) -> None:
        if self.shift_a is None:
            self.shift_a = a.float().mean(0)
            self.shift_b = b.float().mean(0)
        A, B = _centred(a, self.shift_a), _centred(b, self.shift_b)
        if self.staged:
            if self.stage is None:
                self.stage = torch.empty(self.d_a + 1, self.d_b + 1, dtype=torch.float32, device=self.device)
            if self.staged_rows:
                self.stage.addmm_(A.T, B)
            else:  # the staging matrix is free: overwrite it
                torch.mm(A.T, B, out=self.stage)
            self.staged_rows += A.shape[0]
        else:
            self._into_big(A.T @ B)
        self.sq_a.add_(torch.linalg.vecdot(A, A, dim=0)[:-1])
        self.sq_b.add_(torch.linalg.vecdot(B, B, dim=0)[:-1])
        self.n += A.shape[0]
        if self.staged_rows >= STAGE_ROWS:
            self.fold()

    def _into_big(self, m: torch.Tensor) -> None:
        if self.big is None:
            self.big = m.double()
        else:
            self.big.add_(m)

    def fold(self) -> None:
        if self.staged_rows:
            self._into_big(self.stage)
            self.staged_rows = 0

    def result(self, device=None, copy: bool = True, non_blocking: bool = False) -> PairStats:
        """The statistics so far, on ``device`` (default the accumulators').  ``copy=False``
        may return views of the accumulators (for the final result, read once).  ``non_blocking``
        (GPU to host): the copies are queued on the stream (into pinned memory) and must not be
        read before the stream is synchronised."""
        device = self.device if device is None else torch.device(device)
        if not copy and self.staged_rows and device == self.device:
            return self._final()
        self.fold()
        if self.big is None:
            return PairStats.empty(self.d_a, self.d_b, device)
        d_a, d_b, big = self.d_a, self.d_b, self.big
        if device != big.device:
            take = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        else:
            take = (lambda t: t.clone()) if copy else (lambda t: t)  # noqa: E731
        return PairStats(float(self.n), take(self.shift_a.double()), take(self.shift_b.double()),
                         take(big[:d_a, d_b]), take(big[d_a, :d_b]), take(self.sq_a), take(self.sq_b),
                         take(big[:d_a, :d_b]))

    def _final(self) -> PairStats:
        """The final statistics read once, built straight from the staging matrix (and ``big``
        when earlier rows were folded) into contiguous float64 tensors, releasing the
        accumulator's matrices as it goes: the same values as ``fold`` then ``result``, without
        holding the float32 staging matrix, a float64 (d_a+1) x (d_b+1) copy of it and the
        contiguous cross block at once."""
        d_a, d_b, stage, big = self.d_a, self.d_b, self.stage, self.big
        self.stage = self.big = None
        self.staged_rows = 0
        sum_a = stage[:d_a, d_b].double()
        sum_b = stage[d_a, :d_b].double()
        cross = stage[:d_a, :d_b].double()  # contiguous: stored and read without another copy
        del stage
        if big is not None:  # rows folded before (more than STAGE_ROWS of them): add them back
            sum_a += big[:d_a, d_b]
            sum_b += big[d_a, :d_b]
            cross += big[:d_a, :d_b]
            del big
        return PairStats(float(self.n), self.shift_a.double(), self.shift_b.double(), sum_a, sum_b,
                         self.sq_a, self.sq_b, cross)


def _centred(rows: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """float32 [rows - shift | 1]: one pass over the features, whatever their dtype."""
    n, d = rows.shape
    out = torch.empty(n, d + 1, dtype=torch.float32, device=rows.device)
    torch.sub(rows, shift, out=out[:, :d])
    out[:, d] = 1.0
    return out


def _device_chunks(batches: list[dict], mine, cuts: set[int], tokens_per_chunk: int, split_tokens: int = 0):
    """This rank's batches as forward chunks: consecutive batches of one sequence length merged up
    to ``tokens_per_chunk`` padded tokens (0: no merging), a batch of more than ``split_tokens``
    tokens (0: no limit) cut into even slices of whole sequences under it, never across a snapshot cut
    (a cut after batch k ends a chunk).  Yields (indices, rows, last index): ``rows`` is None or
    the slice of rows of the one batch in ``indices``; batches up to ``last`` are complete."""
    group: list[int] = []
    size = 0
    done = -1  # batches counted complete by the chunks yielded so far
    for i, batch in enumerate(batches):
        if mine(i):
            ids = batch["input_ids"]
            if group and (size + ids.numel() > tokens_per_chunk
                          or ids.shape[1] != batches[group[0]]["input_ids"].shape[1]):
                yield group, None, group[-1]
                done = group[-1]
                group, size = [], 0
            per = max(1, split_tokens // max(1, ids.shape[1])) if split_tokens else 0
            if split_tokens and ids.numel() > split_tokens and ids.shape[0] > per:
                per = -(-ids.shape[0] // -(-ids.shape[0] // per))  # even slices: 64 rows over 39 -> 32 + 32
                for r in range(0, ids.shape[0], per):
                    yield [i], slice(r, r + per), (i if r + per >= ids.shape[0] else i - 1)
                done = i
            else:
                group.append(i)
                size += ids.numel()
        if (i + 1) in cuts or i == len(batches) - 1:
            if group or done < i:
                yield group, None, i
                done = i
            group, size = [], 0


def _merge(batches: list[dict], idx: list[int]) -> dict:
    if len(idx) == 1:
        return batches[idx[0]]
    keys = [k for k in batches[idx[0]] if isinstance(batches[idx[0]][k], torch.Tensor)]
    return {k: torch.cat([batches[i][k] for i in idx]) for k in keys}


def _autocast(device_type: str, precision: str):
    """Forwards under fp16/bf16 autocast (matrix products in half precision, norms and
    softmax in float32), or plain float32."""
    if precision in _LOW:
        return torch.autocast(device_type, dtype=_LOW[precision])
    return torch.autocast(device_type, enabled=False)


class _Capture:
    """The forward hooks of one statistics pass.  Model A's features at each group's capture point
    are held until model B's forward reaches the same point; the pair then goes into the group's
    accumulator (float32 products, whatever the forwards' precision)."""

    def __init__(self, spec, groups: list[str], accs: dict, device, precision: str):
        self.spec, self.groups, self.accs, self.device, self.precision = spec, groups, accs, device, precision
        self.dev_type = torch.device(device).type
        self.feats_a: dict[str, torch.Tensor] = {}
        self.keep = None  # the kept positions of the current chunk (None: every position)
        self.model = "a"  # whose forward is running
        self.order: list[str] = []  # capture points in the order model A's forward reaches them
        self.handles = []

    def _hook(self, g: str):
        grp = self.spec.groups[g]
        acc = self.accs[g]
        cols = None if grp.columns is None else torch.as_tensor(grp.columns, dtype=torch.long, device=self.device)

        def take(x: torch.Tensor):
            if cols is not None:  # the capture's output holds more than the features (a fused projection)
                x = x.index_select(-1, cols)
            if grp.per_sentence:
                rows = x.reshape(x.shape[0], -1)
            else:
                rows = x.reshape(-1, x.shape[-1])
                if self.keep is not None:
                    rows = rows.index_select(0, self.keep)
            if self.model == "a":
                self.feats_a[g] = rows
                if acc.shift_a is None and g not in self.order:
                    self.order.append(g)
            else:
                with torch.autocast(self.dev_type, enabled=False):
                    acc.add(self.feats_a.pop(g), rows)

        if grp.capture_io == "input":
            return lambda mod, args: take(args[0])
        return lambda mod, args, out: take(out[0] if isinstance(out, tuple) else out)

    def install(self, model_a, model_b) -> None:
        for model in (model_a, model_b):
            modules = dict(model.named_modules())
            for g in self.groups:
                grp = self.spec.groups[g]
                if grp.capture not in modules:
                    raise ValueError(f"capture module {grp.capture} not found")
                m, hook = modules[grp.capture], self._hook(g)
                self.handles.append(m.register_forward_pre_hook(hook) if grp.capture_io == "input"
                                    else m.register_forward_hook(hook))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.feats_a.clear()

    def forward(self, model_a, model_b, inputs: dict, keep) -> None:
        """Both models over one chunk; every capture point lies in the encoder (and pooler), so the
        heads need not run."""
        self.keep = keep
        with _autocast(self.dev_type, self.precision):
            self.model = "a"
            model_a.base_model(**inputs)
            self.model = "b"
            model_b.base_model(**inputs)
        self.feats_a.clear()

    def check_finite(self) -> None:
        """One device read for all points: a NaN or inf feature makes its sum of squares
        non-finite.  Names the first point in forward order, model A before model B."""
        accs = self.accs
        seen = [g for g in self.order if accs[g].shift_a is not None] + \
            [g for g in self.groups if g not in self.order and accs[g].shift_a is not None]
        if not seen:
            return
        flags = torch.stack([torch.stack([accs[g].sq_a.sum(), accs[g].sq_b.sum()]) for g in seen])
        ok = torch.isfinite(flags).tolist()
        for col, model in ((0, "A"), (1, "B")):
            for g, f in zip(seen, ok):
                if not f[col]:
                    grp = self.spec.groups[g]
                    hint = f" (under {self.precision} forwards: try --precision fp32)" if self.precision in _LOW else ""
                    raise StatisticsError(f"non-finite feature values (NaN or inf) at {grp.capture} ({grp.name}) "
                                          f"of model {model}{hint}")


def _chunk_inputs(batches: list[dict], idx: list[int], rows, spec, device, exclude_special: bool):
    """The model inputs of one chunk (batches ``idx`` merged, cut to ``rows``) on the device, and
    the positions whose features count (None: all of them)."""
    batch = _merge(batches, idx)
    if rows is not None:
        batch = {k: v[rows] for k, v in batch.items() if isinstance(v, torch.Tensor)}
    inputs = {k: v.to(device, non_blocking=True) for k, v in spec.model_inputs(batch).items()}
    keep = batch["attention_mask"].bool()  # on the host: no device round trip
    if exclude_special and "special_tokens_mask" in batch:
        keep &= ~batch["special_tokens_mask"].bool()
    return inputs, None if bool(keep.all()) else keep.flatten().nonzero().squeeze(1).to(device, non_blocking=True)


@torch.no_grad()
def collect_stats(model_a, model_b, spec, batches: list[dict], *, device="cpu",
                  fractions=DEFAULT_FRACTIONS, exclude_special: bool = False,
                  groups: list[str] | None = None, progress=None, distributed: bool = False,
                  precision: str | None = None, batch_tokens: int | None = None,
                  forward_budget: int = FORWARD_BYTES) -> StatsResult:
    """One pass over ``batches`` through both models, accumulating the statistics of every group's
    capture point.  Batches are dicts with input_ids, attention_mask, token_type_ids and, when
    ``exclude_special``, special_tokens_mask.  With ``distributed`` the batches are sharded across
    torch.distributed ranks (batch i on rank i mod world) and the statistics all-reduced, so every
    rank returns the statistics of all the data.

    ``precision``: "fp32" (float32 forwards and products), "fp16" or "bf16" (forwards under
    autocast, the products of the features in float32, TF32 allowed on CUDA) or "auto" (fp16 on
    CUDA, fp32 elsewhere; see resolve_precision).
    ``batch_tokens``: tokens per forward; consecutive batches are merged up to it and larger ones
    cut into slices under it.  Default: ``forward_tokens(spec)``, the size that keeps one forward's
    memory under ``forward_budget`` bytes (see FORWARD_BYTES), on a GPU; on the CPU the batches as
    given, cut only when larger than that.  Nothing is read back from the device inside the loop:
    non-finite features are detected from the accumulated sums of squares after the first chunk
    and at the end; on a GPU the snapshots of data prefixes are queued to host memory, so that
    device memory holds one set of accumulators whatever the number of snapshots."""
    groups = list(spec.groups) if groups is None else groups
    precision = resolve_precision(precision, device)
    dev_type = torch.device(device).type
    rank, world = 0, 1
    if distributed:
        import torch.distributed as dist
        rank, world = dist.get_rank(), dist.get_world_size()
    if batch_tokens is None:
        split_tokens = forward_tokens(spec, groups, forward_budget)
        merge_tokens = split_tokens if dev_type == "cuda" else 0
    else:
        split_tokens = merge_tokens = batch_tokens
    snap_home = "cpu" if dev_type == "cuda" and not distributed else None
    model_a.eval().to(device)
    model_b.eval().to(device)
    accs = {g: _Accumulator(spec.groups[g].size, spec.groups[g].size, device, staged=dev_type != "cuda")
            for g in groups}
    capture = _Capture(spec, groups, accs, device, precision)
    cuts = snapshot_batches(len(batches), fractions)
    cut_at = {k: [f for f, kk in cuts.items() if kk == k] for k in set(cuts.values())}
    snapshots, snapshot_tokens = {}, {}
    tokens = sentences = 0
    seen_upto = 0  # batches counted so far (all ranks' batches: tokens and cuts are global)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    if dev_type == "cuda":  # TF32 products with half-precision forwards; the fp32 path stays float32
        torch.backends.cuda.matmul.allow_tf32 = precision in _LOW
    first = True
    try:
        capture.install(model_a, model_b)  # removed in the end whatever happens, as are the held features
        for idx, rows, last in _device_chunks(batches, lambda i: i % world == rank, set(cut_at), merge_tokens,
                                              split_tokens):
            if idx:
                capture.forward(model_a, model_b, *_chunk_inputs(batches, idx, rows, spec, device, exclude_special))
                if first:  # a broken checkpoint shows in its first batch: one early device read
                    capture.check_finite()
                    first = False
            for j in range(seen_upto, last + 1):
                tokens += int(batches[j]["attention_mask"].sum())
                sentences += int(batches[j]["input_ids"].shape[0])
                for f in cut_at.get(j + 1, ()):
                    snapshot_tokens[f] = tokens
                    if f < 1.0:  # the whole-data snapshot is ``points`` itself
                        # queued to the host on a GPU (no wait); a copy on the device otherwise
                        snapshots[f] = {g: a.result(snap_home, non_blocking=True) for g, a in accs.items()}
            seen_upto = last + 1
            if progress:
                progress("statistics", last + 1, len(batches), tokens=tokens)
        capture.check_finite()
    finally:
        capture.remove()
        if dev_type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = tf32
    if snap_home is not None and snapshots:
        torch.cuda.synchronize(device)  # the snapshots' queued copies are complete before they are read
    # final statistics one point at a time, freeing each accumulator as it is read
    home = None if distributed else "cpu"
    stats = {g: accs.pop(g).result(home, copy=distributed) for g in list(accs)}
    if distributed:
        stats = {g: all_reduce(s) for g, s in stats.items()}
        snapshots = {f: {g: all_reduce(s) for g, s in snap.items()} for f, snap in snapshots.items()}
    to_cpu = lambda d: {g: s.to("cpu") for g, s in d.items()}  # noqa: E731
    return StatsResult(to_cpu(stats), {f: to_cpu(s) for f, s in snapshots.items()}, snapshot_tokens, tokens, sentences)
