"""Statistics-pass throughput against its floor, assignment times, and the precision trade.

The floor is the two forward passes alone (model A's then model B's encoder on the same batches,
no hooks, in the same precision; the statistics pass runs the encoders only, as every capture
point lies there), measured in the same run; the figure is the ratio  statistics pass / floor
(1.0 = free).  Wall seconds and process CPU seconds are both reported: on a CPU run with one
thread (--threads 1) the CPU seconds are the work done, whatever else shares the cores.

    python bench/bench_stats.py                       # the bundled default pair, if present
    python bench/bench_stats.py --random bert-base    # two random bert-base-sized models
    python bench/bench_stats.py A B --data PATH --tokens 65536 --device cuda
    python bench/bench_stats.py --precision-check fp16,bf16   # low-precision forwards vs fp32
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from permerge import data as D  # noqa: E402
from permerge.align import AlignOptions, assignment_workers, compute_alignment, correlation  # noqa: E402
from permerge.arch import spec_for  # noqa: E402
from permerge.match import assign, match_attention  # noqa: E402
from permerge.pipeline import resolve_device  # noqa: E402
from permerge.stats import _autocast, collect_stats, resolve_precision  # noqa: E402

SIZES = {"bert-base": dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072, num_hidden_layers=12),
         "small": dict(hidden_size=256, num_attention_heads=4, intermediate_size=1024, num_hidden_layers=4),
         "tiny": dict(hidden_size=64, num_attention_heads=4, intermediate_size=256, num_hidden_layers=2)}
OPTIONS = AlignOptions(attention="head-perm", residual="all")


def random_pair(size: str):
    from transformers import BertConfig, BertForMaskedLM

    cfg = BertConfig(vocab_size=8192, max_position_embeddings=128, **SIZES[size])
    torch.manual_seed(1)
    a = BertForMaskedLM(cfg).eval()
    torch.manual_seed(2)
    b = BertForMaskedLM(cfg).eval()
    return a, b


def random_batches(tokens: int, batch: int, vocab: int):
    g = torch.Generator().manual_seed(0)
    n = max(1, tokens // (128 * batch))
    return [{"input_ids": torch.randint(5, vocab, (batch, 128), generator=g),
             "attention_mask": torch.ones(batch, 128, dtype=torch.long),
             "token_type_ids": torch.zeros(batch, 128, dtype=torch.long)} for _ in range(n)]


def load_setup(model_a=None, model_b=None, data=None, random=None, tokens=32768, batch_size=16):
    """(model A, model B, batches, description): a checkpoint pair, the bundled pair, or random models."""
    if random is None and not model_a:
        from permerge import zoo
        try:
            model_a, model_b = map(str, zoo.default_pair())
            data = data or str(zoo.align_text())
        except Exception:
            random = "small"
    if random:
        a, b = random_pair(random)
        return a, b, random_batches(tokens, batch_size, a.config.vocab_size), f"random {random}"
    from permerge.checkpoints import load_pair

    ca, cb = load_pair(model_a, model_b)
    tok = cb.tokenizer or ca.tokenizer
    blocks = D.text_blocks(tok, D.read_text(data))
    batches = D.limit_tokens(D.block_batches(blocks, batch_size), tokens)
    return ca.model, cb.model, batches, f"{Path(model_a).name} vs {Path(model_b).name}"


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def forward_floor(a, b, batches, device, precision="fp32", batch_tokens=None):
    """Both encoders over the batches, in the forwards the pass runs: merged and cut as
    ``collect_stats`` does (its default forward size from the model's widths, or ``batch_tokens``)."""
    from permerge.stats import _device_chunks, _merge, forward_tokens

    if batch_tokens is None:
        split = forward_tokens(spec_for(a))
        merge = split if str(device).startswith("cuda") else 0
    else:
        split = merge = batch_tokens
    sync(device)
    t, c = time.perf_counter(), time.process_time()
    for idx, rows, _ in _device_chunks(batches, lambda i: True, set(), merge, split):
        if not idx:
            continue
        x = _merge(batches, idx)
        x = {k: (v if rows is None else v[rows]).to(device, non_blocking=True) for k, v in x.items()
             if k in ("input_ids", "attention_mask", "token_type_ids")}
        with _autocast(torch.device(device).type, precision):
            a.base_model(**x)  # the encoders alone: the statistics pass needs no head either
            b.base_model(**x)
    sync(device)
    return time.perf_counter() - t, time.process_time() - c


def rss_start():
    """Resident-set baseline for a CPU peak: resets the kernel's high-water mark (VmHWM, Linux
    ``clear_refs``) and returns the current resident bytes, or None where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _proc_status("VmRSS")
    except OSError:
        return None


def rss_peak_since(start):
    """Peak resident bytes since ``rss_start()`` beyond its baseline (None: not measurable)."""
    if start is None:
        return None
    try:
        return max(0, _proc_status("VmHWM") - start)
    except (OSError, ValueError):
        return None


def _proc_status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise ValueError(field)


def stats_ratio(a, b, spec, batches, device, precision, repeats=3, batch_tokens=None):
    """Best-of-``repeats`` floor and statistics pass, interleaved; peak GPU memory of the pass (on
    a CPU: the growth of the resident set during the pass, where Linux lets it be measured)."""
    forward_floor(a, b, batches[:1], device, precision, batch_tokens)  # warm-up
    floors, passes, peak, rss_extra = [], [], None, None
    res = None
    for _ in range(repeats):  # interleave so drift hits both alike
        floors.append(forward_floor(a, b, batches, device, precision, batch_tokens))
        res = None
        if str(device).startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            rss = rss_start()
        sync(device)
        t, c = time.perf_counter(), time.process_time()
        res = collect_stats(a, b, spec, batches, device=device, fractions=(1.0,), precision=precision,
                            batch_tokens=batch_tokens)
        sync(device)
        passes.append((time.perf_counter() - t, time.process_time() - c))
        if str(device).startswith("cuda"):
            peak = (torch.cuda.max_memory_allocated(), base)
        else:
            extra = rss_peak_since(rss)
            rss_extra = extra if rss_extra is None or extra is None else max(rss_extra, extra)
    return {"floor": min(w for w, _ in floors), "stat": min(w for w, _ in passes),
            "floor_cpu": min(c for _, c in floors), "stat_cpu": min(c for _, c in passes),
            "peak_bytes": peak[0] if peak else None, "model_bytes": peak[1] if peak else None, "res": res,
            "rss_extra_bytes": rss_extra}


def assignment_times(spec, points, workers=None):
    """Wall seconds of all groups' assignments one after another and on the thread pool, and
    the largest single solve of each kind (correlation matrices included in the totals)."""
    t = time.perf_counter()
    one = compute_alignment(spec, points, OPTIONS, workers=1)
    sequential = time.perf_counter() - t
    w = workers or assignment_workers()
    t = time.perf_counter()
    many = compute_alignment(spec, points, OPTIONS, workers=w)
    parallel = time.perf_counter() - t
    assert all(np.array_equal(one.groups[g].perm, many.groups[g].perm) for g in one.groups)
    largest = {}
    for kind in ("ff", "att", "res"):
        names = [g for g, grp in spec.groups.items() if grp.kind == kind and g in points]
        if not names:
            continue
        C = correlation(points, spec, names[0] if kind != "res" else "pooled")
        t = time.perf_counter()
        if kind == "att":
            match_attention(C, spec.groups[names[0]].heads, "head-perm")
        else:
            assign(C)
        largest[kind] = (C.shape[0], time.perf_counter() - t)
    return {"sequential": sequential, "parallel": parallel, "workers": w, "largest": largest, "alignment": many}


def precision_check(a, b, spec, batches, device, precisions, reference=None):
    """Low-precision statistics against the fp32 path: the largest correlation difference and
    the smallest share of identical permutation entries, over all groups of each kind.  (The
    fp32 path itself is within ~1e-6 of a float64 reference: tests/test_stats.py.)"""
    ref = reference or collect_stats(a, b, spec, batches, device=device, fractions=(1.0,), precision="fp32").points
    ref_al = compute_alignment(spec, ref, OPTIONS)
    out = {}
    for p in precisions:
        got = collect_stats(a, b, spec, batches, device=device, fractions=(1.0,), precision=p).points
        al = compute_alignment(spec, got, OPTIONS)
        row = {}
        for g, grp in spec.groups.items():
            d = float(np.abs(got[g].correlation() - ref[g].correlation()).max())
            agree = float((al.groups[g].perm == ref_al.groups[g].perm).mean())
            e, s = row.get(grp.kind, (0.0, 1.0))
            row[grp.kind] = (max(e, d), min(s, agree))
        out[p] = row
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_a", nargs="?")
    ap.add_argument("model_b", nargs="?")
    ap.add_argument("--data")
    ap.add_argument("--random", choices=sorted(SIZES), help="two random models of this size instead of checkpoints")
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                    help="statistics-pass precision; the floor runs the forwards in the same precision")
    ap.add_argument("--precision-check", default="", help="comma-separated low precisions to compare with fp32")
    ap.add_argument("--no-assign", action="store_true", help="skip the assignment timings")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    a, b, batches, what = load_setup(args.model_a, args.model_b, args.data, args.random, args.tokens, args.batch_size)
    a.to(device)
    b.to(device)
    spec = spec_for(a)
    tokens = sum(int(x["attention_mask"].sum()) for x in batches)

    r = stats_ratio(a, b, spec, batches, device, precision, args.repeats)
    print(f"# statistics pass vs two forward passes ({what}; {tokens} tokens; device {device}; "
          f"torch {torch.__version__}; {platform.processor() or platform.machine()}; "
          f"threads {torch.get_num_threads()}; precision {precision}; best of {args.repeats})")
    print("| measure | seconds | tokens/s | ratio to floor | CPU seconds | CPU-time ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(f"| two forward passes (floor) | {r['floor']:.3f} | {tokens / r['floor']:,.0f} | 1.00 | "
          f"{r['floor_cpu']:.3f} | 1.00 |")
    print(f"| statistics pass ({len(spec.groups)} capture points) | {r['stat']:.3f} | {tokens / r['stat']:,.0f} | "
          f"{r['stat'] / r['floor']:.2f} | {r['stat_cpu']:.3f} | {r['stat_cpu'] / r['floor_cpu']:.2f} |")
    if r["peak_bytes"] is not None:
        print(f"\npeak GPU memory during the pass: {r['peak_bytes'] / 2**30:.2f} GiB "
              f"(of which {r['model_bytes'] / 2**30:.2f} GiB held before it: the two models)")

    if not args.no_assign:
        t = assignment_times(spec, r["res"].points)
        print(f"\n# assignments, all {len(spec.groups)} groups (Head-Perm attention, All residual; "
              "correlation matrices included)")
        print("| measure | seconds |")
        print("| --- | --- |")
        print(f"| one after another | {t['sequential']:.3f} |")
        print(f"| thread pool ({t['workers']} workers) | {t['parallel']:.3f} |")
        for kind, (width, s) in t["largest"].items():
            heads = spec.heads if kind == 'att' else 0
            print(f"| one {kind} group ({width} wide{f', {heads * heads}+1 solves' if heads else ''}) | {s:.3f} |")

    if args.precision_check:
        chk = precision_check(a, b, spec, batches, device, args.precision_check.split(","))
        print("\n# low-precision forwards against the fp32 path (max |C - C_fp32|; min share of "
              "identical permutation entries), per group kind")
        kinds = list(next(iter(chk.values())))
        print("| precision | " + " | ".join(kinds) + " |")
        print("| --- |" + " --- |" * len(kinds))
        for p, row in chk.items():
            print(f"| {p} | " + " | ".join(f"{row[k][0]:.1e}; {100 * row[k][1]:.1f}%" for k in kinds) + " |")


if __name__ == "__main__":
    main()
