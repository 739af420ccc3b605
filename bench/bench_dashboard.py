"""The dashboard's quality bars, measured on the library calls the pages make.

1. first complete result for the default pair, cold cache: statistics, alignment and the 21-point
   curves of vanilla and the default variant (bar: 60 s on 2 CPU cores);
2. a variant switch with the statistics cached: a new alignment and its curve (bar: 3 s);
3. a page drawn from cache: a fresh pipeline object reading statistics, alignment and curves
   from the disk cache (bar: 1 s; model loading included, as a new server process would pay it).

The floor printed beside them is the two forward passes over the alignment data alone, measured in
the same run, so a reader can tell a slow machine from a slow program.

    python bench/bench_dashboard.py [--tokens 16384] [--lambdas 21] [--eval-blocks 16]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from permerge import zoo  # noqa: E402
from permerge.align import VANILLA, AlignOptions  # noqa: E402
from permerge.cache import ResultCache  # noqa: E402
from permerge.pipeline import Job, Pipeline  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--lambdas", type=int, default=21)
    ap.add_argument("--eval-blocks", type=int, default=16)  # the dashboard's default
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    a, b = zoo.default_pair()
    job = Job(a, b, data=str(zoo.align_text()), eval_data=str(zoo.eval_text()), tokens=args.tokens,
              eval_blocks=args.eval_blocks, device=args.device)
    default = AlignOptions(ff=True, attention="head-perm", residual="identity")
    switched = AlignOptions(ff=True, attention="monotonic", residual="all")
    with tempfile.TemporaryDirectory() as d:
        cache = ResultCache(d)
        t0 = time.perf_counter()
        pipe = Pipeline(job, cache=cache)
        pipe.curve(VANILLA, args.lambdas)
        pipe.curve(default, args.lambdas)
        first = time.perf_counter() - t0

        t0 = time.perf_counter()
        pipe.alignment(switched)
        pipe.curve(switched, args.lambdas)
        switch = time.perf_counter() - t0

        t0 = time.perf_counter()
        fresh = Pipeline(job, cache=cache)
        fresh.stats()
        fresh.alignment(default)
        fresh.curve(VANILLA, args.lambdas)
        fresh.curve(default, args.lambdas)
        page = time.perf_counter() - t0

        t0 = time.perf_counter()
        with torch.no_grad():
            for x in pipe.prepared.align_batches:
                x = {k: v.to(pipe.device) for k, v in x.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
                pipe.pair[0].model.base_model(**x)
                pipe.pair[1].model.base_model(**x)
        floor = time.perf_counter() - t0
        cache.close()

    cfg = pipe.pair[0].config
    print(f"# dashboard quality bars (bundled {Path(a).name} vs {Path(b).name}: {cfg.num_hidden_layers} layers, "
          f"width {cfg.hidden_size}, {cfg.num_attention_heads} heads; {pipe.stats().tokens} alignment tokens; "
          f"{args.lambdas} lambdas; {args.eval_blocks} evaluation blocks; device {pipe.device}; "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}; {platform.machine()})")
    print("| measure | seconds | bar | ratio to floor |")
    print("| --- | --- | --- | --- |")
    print(f"| floor: two forward passes over the alignment data | {floor:.2f} | | 1.0 |")
    print(f"| first complete result, cold cache | {first:.2f} | 60 | {first / floor:.1f} |")
    print(f"| variant switch, statistics cached | {switch:.2f} | 3 | {switch / floor:.1f} |")
    print(f"| page drawn from cache (fresh process view) | {page:.2f} | 1 | {page / floor:.1f} |")


if __name__ == "__main__":
    main()
