"""Every measurement of the GPU speed goals in one run, printed as one table.

    python bench/bench_gpu.py                      # on a CUDA machine: bert-base sizes (~3-5 min on an H200)
    python bench/bench_gpu.py --tiny --device cpu  # a dry run of every step with tiny sizes

Floors (the two encoders' forwards in fp32, TF32, fp16 and bf16) are measured in the same run as
the statistics passes they are compared with.  Steps:

1. start-up: `import torch`, the BERT classes of transformers, the first CUDA operation (each in
   a fresh process);
2. forward floors and the statistics pass on a random bert-base pair (1M tokens, forwards of
   64 x 128 tokens) in the default precision, with its peak GPU memory;
3. the precision trade on the random bert-base pair and on the bundled pair: low-precision
   statistics against the fp32 path;
4. the assignments of all groups (Head-Perm attention, All residual): one after another and on
   the thread pool;
5. the statistics pass on the bundled pair (all of its alignment text) against its floor;
6. `python -m permerge align` on the bundled pair, wall time;
7. `python -m permerge interpolate` on two bert-base-sized checkpoints with 1M alignment tokens,
   250k evaluation tokens and 21 lambdas, wall time, and the stage timings of the same run done
   in-process (loading, data, statistics, assignments, curves).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_stats import (assignment_times, forward_floor, load_setup, precision_check, random_pair,  # noqa: E402
                         stats_ratio)

from permerge.arch import spec_for  # noqa: E402
from permerge.stats import resolve_precision  # noqa: E402

ROWS: list[tuple] = []  # (measure, figure, floor on the same machine, goal, verdict)


def row(measure, figure, floor="-", goal="-", met=None):
    verdict = "-" if met is None else ("met" if met else "MISSED")
    ROWS.append((measure, figure, floor, goal, verdict))
    print(f"  {measure}: {figure} (floor {floor}; goal {goal}; {verdict})", file=sys.stderr, flush=True)


def fresh_process_seconds(code: str) -> float:
    """Wall seconds of a Python snippet in a fresh interpreter (it prints its own timing)."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def startup(device: str) -> None:
    t_torch = fresh_process_seconds("import time; t = time.perf_counter(); import torch; print(time.perf_counter() - t)")
    t_tf = fresh_process_seconds("import torch, time; t = time.perf_counter(); "
                                 "from transformers import BertForMaskedLM; print(time.perf_counter() - t)")
    row("start-up: import torch (fresh process)", f"{t_torch:.2f} s")
    row("start-up: import transformers' BERT classes", f"{t_tf:.2f} s")
    if device.startswith("cuda"):
        t_cuda = fresh_process_seconds("import torch, time; t = time.perf_counter(); x = torch.ones(64, 64, device='cuda'); "
                                       "(x @ x).sum().item(); print(time.perf_counter() - t)")
        row("start-up: first CUDA matrix product (context, cuBLAS)", f"{t_cuda:.2f} s")


def per_million(seconds: float, tokens: int) -> float:
    return seconds * 1e6 / tokens


def big_pair(args, device):
    a, b, batches, what = load_setup(random=args.size, tokens=args.tokens, batch_size=args.batch_size)
    return a.to(device), b.to(device), batches, what


def floors_and_pass(a, b, batches, device, args) -> dict:
    spec = spec_for(a)
    tokens = sum(int(x["attention_mask"].sum()) for x in batches)
    default = resolve_precision("auto", device)
    floors = {}
    precisions = ["fp32", "fp16", "bf16"]
    if device.startswith("cuda"):
        precisions.insert(1, "tf32")
    for p in precisions:
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = p == "tf32"
        try:
            forward_floor(a, b, batches[:2], device, "fp32" if p == "tf32" else p)  # warm-up
            floors[p] = min(forward_floor(a, b, batches, device, "fp32" if p == "tf32" else p)[0]
                            for _ in range(args.repeats))
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
    row(f"two {args.size} forward passes, {tokens:,} tokens (floors)",
        ", ".join(f"{p} {per_million(s, tokens):.2f}" for p, s in floors.items()) + " s per 1M")
    r = stats_ratio(a, b, spec, batches, device, default, repeats=args.repeats)
    s1m = per_million(r["stat"], tokens)
    peak = "" if r["peak_bytes"] is None else (f"; peak GPU memory {r['peak_bytes'] / 2**30:.2f} GiB, of which "
                                               f"{r['model_bytes'] / 2**30:.2f} GiB the two models")
    row(f"statistics pass, random {args.size} pair, {tokens:,} tokens, {default} forwards",
        f"{s1m:.2f} s per 1M ({r['stat'] / floors[default]:.2f} x its floor){peak}",
        f"{default} floor {per_million(floors[default], tokens):.2f} s per 1M", "<= 2.0 s per 1M",
        s1m <= 2.0 if device.startswith("cuda") and args.size == "bert-base" else None)
    if r["peak_bytes"] is not None:
        stats_gib = (r["peak_bytes"] - r["model_bytes"]) / 2**30
        row("statistics memory beyond the models (peak)", f"{stats_gib:.2f} GiB", "-", "<= 1.2 GB",
            stats_gib * 2**30 <= 1.2e9 if args.size == "bert-base" else None)
    if args.fp32_tokens:
        sub = batches[:max(1, len(batches) * args.fp32_tokens // max(tokens, 1))]
        sub_tokens = sum(int(x["attention_mask"].sum()) for x in sub)
        r32 = stats_ratio(a, b, spec, sub, device, "fp32", repeats=1)
        row(f"statistics pass, fp32 forwards, {sub_tokens:,} tokens",
            f"{per_million(r32['stat'], sub_tokens):.2f} s per 1M ({r32['stat'] / r32['floor']:.2f} x its floor)")
    return {"points": r["res"].points, "spec": spec}


def precision_rows(a, b, batches, device, what, max_tokens):
    spec = spec_for(a)
    sub, seen = [], 0
    for x in batches:
        if seen >= max_tokens:
            break
        sub.append(x)
        seen += int(x["attention_mask"].sum())
    chk = precision_check(a, b, spec, sub, device, ["fp16", "bf16"])
    for p, r in chk.items():
        worst = max(e for e, _ in r.values())
        agree = min(s for _, s in r.values())
        row(f"precision trade, {what}, {seen:,} tokens: {p} forwards vs fp32",
            f"max |dC| {worst:.1e}, permutations {100 * agree:.1f}% identical ("
            + "; ".join(f"{k} {e:.1e}/{100 * s:.1f}%" for k, (e, s) in r.items()) + ")",
            "-", "<= 1e-3 and >= 99%", worst <= 1e-3 and agree >= 0.99)


def assignments(points, spec, size):
    t = assignment_times(spec, points)
    widest = max(t["largest"].values())
    row(f"assignments, all {len(spec.groups)} {size} groups (Head-Perm, All)",
        f"{t['parallel']:.2f} s on {t['workers']} threads ({t['sequential']:.2f} s one after another; "
        f"largest single solve {widest[1]:.2f} s at {widest[0]} wide)", "-", "<= 1.0 s, exact",
        t["parallel"] <= 1.0 if size == "bert-base" else None)


def bundled_pass(device, args):
    a, b, batches, what = load_setup(tokens=args.bundled_tokens)
    a.to(device)
    b.to(device)
    spec = spec_for(a)
    tokens = sum(int(x["attention_mask"].sum()) for x in batches)
    r = stats_ratio(a, b, spec, batches, device, resolve_precision("auto", device), repeats=args.repeats)
    row(f"statistics pass, bundled pair ({what}), {tokens:,} tokens", f"{r['stat'] / r['floor']:.2f} x the floor",
        f"{r['floor']:.2f} s", "<= 2 x", r["stat"] / r["floor"] <= 2.0)
    precision_rows(a, b, batches, device, "bundled pair", args.bundled_tokens)


def cli(args: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "permerge", *args], cwd=ROOT, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - t


def align_cli(device, work: Path, tokens: int | None):
    from permerge import zoo

    a, b = map(str, zoo.default_pair())
    out = work / "align-out"
    wall = cli(["align", a, b, "--data", str(zoo.align_text()), "--device", device, "--no-cache", "--quiet",
                "--out", str(out)] + (["--tokens", str(tokens)] if tokens else []))
    timings = json.loads((out / "report.json").read_text()).get("timings", {})
    parts = ", ".join(f"{k} {v:.2f}" for k, v in timings.items())
    row("`align` CLI on the bundled pair", f"{wall:.1f} s wall (in-process stages, s: {parts})", "-", "<= 5 s wall",
        wall <= 5.0)


def end_to_end(device, args, work: Path):
    """Two bert-base-sized checkpoints (random weights, the bundled tokenizer) on disk, 1M
    alignment tokens and 250k evaluation tokens of repeated bundled text."""
    from permerge import zoo
    from permerge.align import AlignOptions
    from permerge.checkpoints import load_checkpoint, save_model
    from permerge.pipeline import Job, Pipeline

    tok = load_checkpoint(zoo.default_pair()[0]).tokenizer
    a, b = random_pair(args.size)
    pa, pb = work / "A", work / "B"
    save_model(a, tok, pa)
    save_model(b, tok, pb)
    del a, b
    text = zoo.align_text().read_text()
    per_copy = max(1, len(tok(text)["input_ids"]))
    data, ev = work / "align.txt", work / "eval.txt"
    data.write_text("\n".join([text] * (args.tokens // per_copy + 1)))
    ev_text = zoo.eval_text().read_text()
    ev.write_text("\n".join([ev_text] * (args.eval_tokens // max(1, len(tok(ev_text)["input_ids"])) + 1)))
    blocks = max(1, args.eval_tokens // 128)
    common = [str(pa), str(pb), "--data", str(data), "--eval-data", str(ev), "--eval-blocks", str(blocks),
              "--tokens", str(args.tokens), "--device", device]
    wall = cli(["interpolate", *common, "--lambdas", "21", "--no-cache", "--quiet", "--out", str(work / "interp")])
    pipe = Pipeline(Job(str(pa), str(pb), str(data), tokens=args.tokens, eval_data=str(ev), eval_blocks=blocks,
                        device=device))
    t = time.perf_counter()
    pipe.pair
    load = time.perf_counter() - t
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    pipe.stats()
    pipe.curve(AlignOptions(), 21)  # the vanilla curve comes with it (B's own loss)
    after_load = time.perf_counter() - t
    parts = ", ".join(f"{k} {v:.2f}" for k, v in pipe.timings.items())
    row(f"`interpolate` CLI, two {args.size}-sized checkpoints, {args.tokens:,} + {blocks * 128:,} eval tokens, 21 lambdas",
        f"{wall:.1f} s wall; in-process {after_load:.1f} s after {load:.1f} s loading (stages, s: {parts})",
        "-", "<= 15 s after loading", after_load <= 15.0 if args.size == "bert-base" else None)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes: a dry run of every step (CPU is fine)")
    ap.add_argument("--size", default=None, help="random pair size (default bert-base; tiny with --tiny)")
    ap.add_argument("--tokens", type=int, default=None, help="alignment tokens (default 1M; 16k with --tiny)")
    ap.add_argument("--eval-tokens", type=int, default=None, help="evaluation tokens (default 250k; 4k with --tiny)")
    ap.add_argument("--fp32-tokens", type=int, default=None, help="tokens of the fp32 statistics pass (default 131k)")
    ap.add_argument("--bundled-tokens", type=int, default=None, help="bundled-pair tokens (default: 110k, all)")
    ap.add_argument("--batch-size", type=int, default=64, help="sequences of 128 tokens per batch (default 64)")
    ap.add_argument("--repeats", type=int, default=None, help="best of (default 2; 1 with --tiny)")
    ap.add_argument("--skip", default="", help="comma-separated steps to skip: startup,pass,precision,assign,bundled,align,e2e")
    args = ap.parse_args(argv)
    from permerge.pipeline import resolve_device

    device = resolve_device(args.device)
    tiny = args.tiny
    args.size = args.size or ("tiny" if tiny else "bert-base")
    args.tokens = args.tokens or (16384 if tiny else 1_000_000)
    args.eval_tokens = args.eval_tokens or (4096 if tiny else 250_000)
    args.fp32_tokens = args.fp32_tokens if args.fp32_tokens is not None else (4096 if tiny else 131072)
    args.bundled_tokens = args.bundled_tokens or (8192 if tiny else 120_000)
    args.repeats = args.repeats or (1 if tiny else 2)
    skip = set(filter(None, args.skip.split(",")))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or platform.machine()
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="permerge-bench-"))
    try:
        if "startup" not in skip:
            startup(device)
        if "pass" not in skip or "precision" not in skip or "assign" not in skip:
            a, b, batches, what = big_pair(args, device)
            res = floors_and_pass(a, b, batches, device, args) if "pass" not in skip or "assign" not in skip else None
            if "precision" not in skip:
                precision_rows(a, b, batches, device, f"random {args.size} pair", args.fp32_tokens)
            del a, b, batches
            if res and "assign" not in skip:
                assignments(res["points"], res["spec"], args.size)
            del res
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
        if "bundled" not in skip:
            bundled_pass(device, args)
        if "align" not in skip:
            align_cli(device, work, args.bundled_tokens if tiny else None)
        if "e2e" not in skip:
            end_to_end(device, args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"# GPU speed goals (commit {commit}; {gpu}; device {device}; torch {torch.__version__}; "
          f"{os.cpu_count()} CPUs; bench/bench_gpu.py {' '.join(argv if argv is not None else sys.argv[1:])}; "
          f"{time.perf_counter() - t0:.0f} s in all)")
    print("| measure | measured | floor on the same machine | goal | verdict |")
    print("| --- | --- | --- | --- | --- |")
    for r in ROWS:
        print("| " + " | ".join(str(x) for x in r) + " |")


if __name__ == "__main__":
    main()
