"""Time and peak memory of a whole job before it runs, from the pair's sizes and the settings.

The dashboard's job (``work.pair_work``) and the ``align`` / ``interpolate`` commands run the same
stages: loading both checkpoints, the statistics pass (both encoders over the alignment tokens and,
per capture point, one float32 product of the centred features), the assignments, the vanilla and
the aligned curve (one evaluation of the model per lambda point over the evaluation blocks), and the
float64 check of B' against B.  Their costs are counted here in floating-point operations and turned
into seconds by rates measured on this machine (``calibrate``: a timed forward of one transformer
layer of the pair's width, a timed product of the statistics' shape, a timed float64 product and a
timed assignment, about a second in all, once per process and size).  Memory is counted from the
sizes of what each stage holds (two models, the accumulators, the float64 statistics, B', the working
model of the curves, the float64 copies of the check) on top of the process's own, and the peak is
the largest stage.  ``bench/bench_real.py`` compares both with a measured run (bench/README.md).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from .stats import STAGE_ROWS

BLOCK = 128
# resident memory of a fresh process that has imported torch, transformers and permerge (measured
# with bench/bench_real.py on the CPU build of torch 2.13; the dashboard's server holds more)
BASE_BYTES = 450 << 20
# the command line's and the dashboard's batches of the statistics pass, and the evaluation's batches
ALIGN_BATCH, EVAL_BATCH = 16, 32
PROBE_SEQUENCES = 8  # the B' check's probe batch
MASKED = 0.15  # share of the evaluation tokens that the MLM head scores
LOAD_S_PER_PARAM = 4e-8  # reading, validating and building one checkpoint, per parameter (measured)
LOAD_FIXED_S = 2.0  # configs, tokenizers, the data's tokenisation and checks (measured on small pairs)
SOLVE_OVERHEAD_S = 2e-4  # per assignment beyond its arithmetic (a head pair's small solve is mostly this)
MEMORY_BYTES_S = 5e9  # memory traffic of the element-wise passes (correlations, lerp, float64 copies)

_RATES: dict = {}


@dataclass
class Rates:
    """Measured speeds: forward FLOP/s of a transformer layer (float32), FLOP/s of the statistics
    products (float32) and of a float64 product, and the seconds of one 512 x 512 assignment."""
    forward: float
    product: float
    float64: float
    assign_512: float
    device: str = "cpu"
    threads: int = 1


@dataclass
class Sizes:
    """What the estimate needs of a pair: the model's widths and parameter count, and the widths of
    the token-level capture points of the statistics (one per group)."""
    layers: int
    hidden: int
    intermediate: int
    heads: int
    vocab: int
    parameters: int
    groups: dict[str, int]  # group name -> width (token-level capture points)
    kinds: dict[str, str] = field(default_factory=dict)  # group name -> "ff", "att", "res", ...
    evaluation: str = "mlm"


@dataclass
class Estimate:
    """Seconds per stage and in all, and peak resident memory (bytes) with the stage holding it."""
    stages: dict[str, float]
    seconds: float
    first_point_s: float | None  # from the start of the job to the first point of the first curve
    first_curve_s: float | None  # ... to the first complete curve
    peak_bytes: int
    peak_stage: str
    memory: dict[str, int]  # bytes held in each stage
    rates: Rates

    def summary(self) -> str:
        """One line: "about 2 min 10 s in all (first curve after 1 min 5 s); peak memory about 2.9 GB"."""
        first = f" (first complete curve after {duration(self.first_curve_s)})" if self.first_curve_s else ""
        return (f"about {duration(self.seconds)} in all{first}; peak memory about "
                f"{self.peak_bytes / 1e9:.1f} GB ({self.peak_stage})")


def duration(s: float | None) -> str:
    if s is None:
        return "?"
    s = max(0, int(round(s)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def sizes_of(source: str) -> Sizes:
    """A checkpoint's sizes from its config alone (no weights are read)."""
    from .checkpoints import config_spec, config_summary

    summ, spec = config_summary(source), config_spec(source)
    token = {g: grp.size for g, grp in spec.groups.items() if not grp.per_sentence}
    return Sizes(summ["layers"], summ["hidden"], summ["intermediate"], summ["heads"], summ["vocab"],
                 int(summ["parameters"] or 0), token, {g: spec.groups[g].kind for g in token}, spec.evaluation)


# --- calibration ---------------------------------------------------------------------------------------

def _best(fn, repeats: int = 3) -> float:
    """The median of ``repeats`` timed calls after a warm-up: other work on the machine shows in it
    (a best-of would hide it)."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return max(sorted(times)[len(times) // 2], 1e-6)


def calibrate(hidden: int = 768, intermediate: int = 3072, device: str = "cpu") -> Rates:
    """Rates measured on this machine (memoised per process, device and width): one transformer
    layer's forward over 4 blocks of 128 tokens at the pair's width, a statistics product of width
    min(intermediate, 1024) over 2,048 rows, a float64 product, a 512 x 512 assignment."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from scipy.optimize import linear_sum_assignment

    key = (device, hidden, intermediate, torch.get_num_threads())
    if key in _RATES:
        return _RATES[key]
    g = torch.Generator().manual_seed(0)
    d, f, s, b = hidden, intermediate, BLOCK, 4
    heads = max(1, d // 64)
    w = {k: (torch.randn(*shape, generator=g) * 0.02).to(device) for k, shape in
         {"qkv": (3 * d, d), "o": (d, d), "i": (f, d), "out": (d, f)}.items()}
    x = torch.randn(b, s, d, generator=g).to(device)

    def layer():
        with torch.no_grad():
            q, k, v = F.linear(x, w["qkv"]).split(d, -1)
            sh = lambda t: t.view(b, s, heads, d // heads).transpose(1, 2)  # noqa: E731
            ctx = F.scaled_dot_product_attention(sh(q), sh(k), sh(v)).transpose(1, 2).reshape(b, s, d)
            h = F.layer_norm(x + F.linear(ctx, w["o"]), (d,))
            h = F.layer_norm(h + F.linear(F.gelu(F.linear(h, w["i"])), w["out"]), (d,))
        if device != "cpu":
            torch.cuda.synchronize()
        return h

    forward = b * s * layer_flops(d, f, s) / _best(layer)
    n, rows = min(f, 1024) + 1, 2048
    a = torch.randn(rows, n, generator=g).to(device)
    out = torch.empty(n, n, device=device)

    def product():
        torch.mm(a.T, a, out=out)
        if device != "cpu":
            torch.cuda.synchronize()

    prod = 2 * n * n * rows / _best(product)
    a64 = torch.randn(512, d, dtype=torch.float64, generator=g)
    w64 = torch.randn(d, f, dtype=torch.float64, generator=g)
    f64 = 2 * 512 * d * f / _best(lambda: a64 @ w64)
    C = np.random.default_rng(0).standard_normal((512, 512)) * 0.05
    lsa = _best(lambda: linear_sum_assignment(C, maximize=True), repeats=2)
    rates = Rates(forward, prod, f64, lsa, device, torch.get_num_threads())
    _RATES[key] = rates
    return rates


def layer_flops(d: int, f: int, s: int = BLOCK) -> float:
    """FLOPs per token of one encoder layer: Q, K, V and output projections, the attention over
    ``s`` positions, the two feed-forward products."""
    return 2 * (4 * d * d + 2 * d * f + 2 * s * d)


# --- the estimate ----------------------------------------------------------------------------------------

def assignment_seconds(n: int, rates: Rates) -> float:
    """One n x n assignment (Jonker-Volgenant on correlation matrices grows about as n^2.3 here)."""
    return rates.assign_512 * (n / 512) ** 2.3


def estimate(sizes: Sizes, *, tokens: int, lambdas: int, eval_blocks: int, aligned: bool = True,
             attention: str = "head-perm", residual: str = "identity", ff: bool = True, snapshots: int = 0,
             matcher: str = "activation", rates: Rates | None = None, workers: int | None = None,
             base_bytes: int = BASE_BYTES, batch_size: int = ALIGN_BATCH, cached_stats: bool = False) -> Estimate:
    """The whole job's time and peak memory for a pair of ``sizes``: ``tokens`` alignment tokens (the
    data is assumed to hold them: an upper bound when it holds fewer), ``lambdas`` points per curve,
    ``eval_blocks`` evaluation blocks of 128 tokens, the vanilla curve and (``aligned``) the aligned
    one, ``snapshots`` data-fraction snapshots besides the whole data."""
    from .align import assignment_workers

    rates = rates or calibrate(sizes.hidden, sizes.intermediate)
    workers = workers or assignment_workers()
    L, d, f, V, P = sizes.layers, sizes.hidden, sizes.intermediate, sizes.vocab, sizes.parameters
    widths = list(sizes.groups.values())
    tok = math.ceil(max(1, tokens) / BLOCK) * BLOCK
    weight = matcher == "weight"
    stages: dict[str, float] = {"loading checkpoints": LOAD_FIXED_S + 2 * P * LOAD_S_PER_PARAM}
    enc_tok = L * layer_flops(d, f)
    if not weight and not cached_stats:
        products = sum(2 * (w + 1) ** 2 for w in widths)
        stages["statistics pass"] = tok * (2 * enc_tok / rates.forward + products / rates.product)
    if aligned:
        solves = []
        for g, w in sizes.groups.items():
            kind = sizes.kinds.get(g, "")
            corr = 10 * 8 * w * w / MEMORY_BYTES_S  # the correlation matrix and its summaries
            if kind == "ff" and ff:
                solves.append(corr + assignment_seconds(w, rates))
            elif kind == "att" and attention != "vanilla":
                dk = w // max(sizes.heads, 1)
                n = {"head-perm": sizes.heads ** 2, "monotonic": sizes.heads}.get(attention, 0)
                solves.append(corr + n * (assignment_seconds(dk, rates) + SOLVE_OVERHEAD_S)
                              + (assignment_seconds(w, rates) if attention == "ignore-heads" else 0.0))
            else:
                solves.append(corr)
        if residual != "identity":
            solves += [assignment_seconds(d, rates)] * (2 * L + 1 if residual == "separate" else 1)
        # longest first over ``workers`` threads: the longest solve or the even share, whichever is more
        stages["assignments"] = max(max(solves, default=0.0), sum(solves) / workers)
    eval_tok = eval_blocks * BLOCK
    head_tok = (d * d + d * V) * 2 if sizes.evaluation == "mlm" else 0
    per_point = eval_tok * (enc_tok + MASKED * head_tok) / rates.forward + 3 * P * 4 / MEMORY_BYTES_S  # + the lerp
    stages["vanilla curve"] = lambdas * per_point
    if aligned:
        stages["aligned curve"] = (lambdas - 1) * per_point  # lambda = 1 (A) is shared with vanilla
    probe = PROBE_SEQUENCES * BLOCK
    # B' built, then B and B' in float64 one after the other over the probe batch (logits everywhere)
    stages["B' check"] = 2 * probe * (enc_tok + 2 * d * V) / rates.float64 + (4 + 2 * 12) * P / MEMORY_BYTES_S
    seconds = sum(stages.values())
    before = sum(v for k, v in stages.items() if k in ("loading checkpoints", "statistics pass", "assignments"))
    first_point = before + per_point
    first_curve = before + stages["vanilla curve"]

    # memory (bytes): each stage's holdings on top of the process's own
    M = 4 * P
    stats64 = 0 if weight else sum(8 * (w + 1) ** 2 for w in widths)
    stage32 = 0 if weight else sum(4 * (w + 1) ** 2 for w in widths)
    if tok > STAGE_ROWS:  # more rows than one staging product gathers: the float64 sums run beside it
        stage32 += stats64
    snaps = snapshots * stats64
    fwd = min(batch_size * BLOCK, _forward_tokens(widths))
    feats = 4 * fwd * sum(widths) + 2 * 4 * fwd * (max(widths, default=0) + 1) + 4 * fwd * (f + 4 * d) * 2
    kept = stats64 + snaps if stats64 + snaps <= (256 << 20) else 0  # released once aligned (pipeline)
    corr = min(workers, len(widths)) * 3 * 8 * max(widths, default=0) ** 2
    eval_batch = EVAL_BATCH * BLOCK
    eval_act = 4 * eval_batch * (f + 6 * d) + 4 * EVAL_BATCH * sizes.heads * BLOCK * BLOCK * 2 \
        + 3 * 4 * int(MASKED * eval_batch) * V
    logits64 = 8 * PROBE_SEQUENCES * BLOCK * V
    memory = {"loading checkpoints": 2 * M}
    if stats64 and not cached_stats:
        memory["statistics pass"] = 2 * M + stage32 + feats + snaps
    if stats64:
        memory["assignments"] = 2 * M + stats64 + snaps + corr
    memory["vanilla curve"] = 2 * M + kept + M + eval_act
    if aligned:
        memory["aligned curve"] = 2 * M + kept + 2 * M + eval_act
    memory["B' check"] = 2 * M + kept + M + 2 * M + 3 * logits64
    memory = {k: int(v + base_bytes) for k, v in memory.items()}
    peak_stage = max(memory, key=memory.get)
    return Estimate(stages, seconds, first_point, first_curve, memory[peak_stage], peak_stage, memory, rates)


def _forward_tokens(widths) -> int:
    """Tokens per statistics forward on the CPU at most (stats.forward_tokens' rule)."""
    from .stats import FORWARD_BYTES, MAX_FORWARD_TOKENS, MIN_FORWARD_TOKENS

    if not widths:
        return MAX_FORWARD_TOKENS
    widest = max(widths)
    per_token = 4 * sum(widths) + 2 * 4 * (widest + 1) + 3 * 4 * widest
    return int(min(MAX_FORWARD_TOKENS, max(MIN_FORWARD_TOKENS, FORWARD_BYTES // per_token)))


# --- quick settings ----------------------------------------------------------------------------------

QUICK_TARGET_S = 180.0  # the first complete curve within 3 minutes


def quick_settings(sizes: Sizes, rates: Rates | None = None, target_s: float = QUICK_TARGET_S, **options) -> dict:
    """Settings whose first complete curve (statistics, assignments and the vanilla curve) is
    estimated to arrive within ``target_s``: the most alignment tokens, evaluation blocks and lambda
    points from short ladders, shrinking the costliest first.  Returns ``tokens``, ``lambdas``,
    ``eval_blocks`` and the ``estimate``."""
    rates = rates or calibrate(sizes.hidden, sizes.intermediate)
    tokens_ladder = [16384, 8192, 4096, 2048, 1024]
    lambdas_ladder = [21, 11, 7, 5, 3]
    blocks_ladder = [64, 32, 16, 8, 4]
    t, lam, blk = 0, 0, 0

    def est():
        return estimate(sizes, tokens=tokens_ladder[t], lambdas=lambdas_ladder[lam], eval_blocks=blocks_ladder[blk],
                        rates=rates, **options)

    e = est()
    while e.first_curve_s > target_s:
        # the curve's cost is lambdas x blocks; shrink whichever part of the first curve is larger
        curve = e.stages["vanilla curve"]
        stats = e.stages.get("statistics pass", 0.0)
        if curve >= stats and (lam < len(lambdas_ladder) - 1 or blk < len(blocks_ladder) - 1):
            if blk < len(blocks_ladder) - 1 and (blocks_ladder[blk] > lambdas_ladder[lam] or lam == len(lambdas_ladder) - 1):
                blk += 1
            else:
                lam += 1
        elif t < len(tokens_ladder) - 1:
            t += 1
        elif blk < len(blocks_ladder) - 1:
            blk += 1
        elif lam < len(lambdas_ladder) - 1:
            lam += 1
        else:
            break
        e = est()
    return {"tokens": tokens_ladder[t], "lambdas": lambdas_ladder[lam], "eval_blocks": blocks_ladder[blk], "estimate": e}
