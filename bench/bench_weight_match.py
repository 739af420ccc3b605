"""Weight matching against the statistics pass it replaces, on the CPU.

Activation matching needs one pass of both models over the alignment data (then the assignments);
weight matching needs the weights only (coordinate descent, one assignment per group and sweep).
This times both on the same pair, with FF + Head-Perm, with and without the residual variant All:
wall seconds and process CPU seconds (the work done, whatever else shares the cores).

    python bench/bench_weight_match.py                                  # the bundled default pair
    python bench/bench_weight_match.py --random bert-base --tokens 4096 # two random bert-base models
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from permerge.align import AlignOptions, compute_alignment  # noqa: E402
from permerge.arch import spec_for  # noqa: E402
from permerge.stats import collect_stats  # noqa: E402
from permerge.weight_match import weight_alignment  # noqa: E402


def bert_base_pair():
    """Two randomly initialised bert-base models (BertConfig's defaults: 768 wide, 12 layers,
    12 heads, FF 3072, vocabulary 30,522)."""
    from transformers import BertConfig, BertForMaskedLM

    cfg = BertConfig()
    torch.manual_seed(1)
    a = BertForMaskedLM(cfg).eval()
    torch.manual_seed(2)
    b = BertForMaskedLM(cfg).eval()
    return a, b


def timed(fn):
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--random", choices=["bert-base"], default=None, help="two random models instead of the bundled pair")
    ap.add_argument("--tokens", type=int, default=16384, help="tokens of the statistics pass (default 16384)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_stats import load_setup, random_batches

    if args.random:
        a, b = bert_base_pair()
        batches, what = random_batches(args.tokens, 16, a.config.vocab_size), "random bert-base (vocab 30,522)"
    else:
        a, b, batches, what = load_setup(tokens=args.tokens)
    spec = spec_for(a)
    tokens = sum(int(x["attention_mask"].sum()) for x in batches)
    print(f"{what}; {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    with torch.no_grad():
        stats, sw, sc = timed(lambda: collect_stats(a, b, spec, batches, fractions=(1.0,)))
    points = stats.at(1.0)
    print(f"statistics pass, {tokens:,} tokens: {sw:.2f} s wall, {sc:.2f} s CPU")
    for residual in ("identity", "all"):
        act = AlignOptions(attention="head-perm", residual=residual)
        _, aw, ac = timed(lambda: compute_alignment(spec, points, act))
        (al, trace), ww, wc = timed(lambda: weight_alignment(spec, a, b, AlignOptions(
            attention="head-perm", residual=residual, matcher="weight")))
        print(f"FF + Head-Perm, residual {residual}: activation assignments {aw:.2f} s wall ({ac:.2f} s CPU), "
              f"statistics + assignments {sw + aw:.2f} s wall ({sc + ac:.2f} s CPU); weight matching "
              f"{ww:.2f} s wall ({wc:.2f} s CPU), {trace.sweeps} sweeps, converged {trace.converged}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
