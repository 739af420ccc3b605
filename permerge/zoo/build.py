"""Rebuild the bundled offline checkpoint family end to end.

    python -m permerge.zoo.build                      # everything, GPU if present
    python -m permerge.zoo.build --stages pretrain --seeds 1,2 --time-budget 400
    python -m permerge.zoo.build --device cuda --steps 3000 --batch 256   # paper-quality recipe

Stages: corpus (apt-get download + dpkg-deb -x into build/zoo, held-out eval/align text, task
TSVs), tokenizer (WordPiece, 8192 entries), pretrain (MLM family, one checkpoint per seed),
finetune (classifiers per task and base seed).  Every checkpoint is trained in memory and
written to ``<name>.tmp`` then renamed, so an interrupted run never leaves a half checkpoint.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ZOO = Path(__file__).resolve().parent
REPO = ZOO.parent.parent
STAGES = ("corpus", "tokenizer", "pretrain", "finetune", "evaluate")
TASKS = ("style", "paraphrase", "supersense")


def _log(msg: str) -> None:
    print(msg, flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m permerge.zoo.build", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--steps", type=int, default=None,
                   help="pre-training steps per seed (default: 600 on CPU, 3000 on CUDA)")
    p.add_argument("--batch", type=int, default=None, help="pre-training batch (default: 32 CPU, 256 CUDA)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seeds", default="1,2,3,4,5", help="comma-separated pre-training seeds")
    p.add_argument("--finetune-seeds", default="1,2", help="base seeds fine-tuned on each task")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of " + ",".join(STAGES))
    p.add_argument("--out", type=Path, default=ZOO, help="zoo folder (default: permerge/zoo)")
    p.add_argument("--build-dir", type=Path, default=REPO / "build" / "zoo",
                   help="scratch folder for packages and the raw corpus (git-ignored)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="stop each pre-training run after this many seconds (LR schedule unchanged)")
    p.add_argument("--train-tokens", type=int, default=12_000_000,
                   help="tokens of the corpus packed into training blocks")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--table", action="store_true",
                   help="print the markdown metrics table of the checkpoints in --out and exit")
    return p.parse_args(argv)


def metrics_table(zoo_dir: Path) -> str:
    """Markdown table of every checkpoint's permerge.json (used for README.md)."""
    rows = []
    for d in sorted((zoo_dir / "checkpoints").glob("*/permerge.json")):
        m = json.loads(d.read_text())
        if m["kind"] == "mlm":
            metric = f"eval MLM loss {m['metrics']['eval_mlm_loss']:.3f}, acc {m['metrics']['eval_mlm_accuracy']:.3f}"
        else:
            metric = f"dev loss {m['metrics']['dev_loss']:.3f}, acc {m['metrics']['dev_accuracy']:.3f}"
        rows.append(f"| {d.parent.name} | {m['kind']} | {m['seed']} | {m['steps']} x {m['batch']} | "
                    f"{m['train_tokens'] / 1e6:.2f} M | {m['final_train_loss']:.3f} | {metric} | "
                    f"{m['wall_time_s']:.0f} s |")
    head = ("| checkpoint | kind | seed | steps x batch | train tokens | final train loss | measured | wall |\n"
            "|---|---|---|---|---|---|---|---|")
    return "\n".join([head, *rows])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.table:
        print(metrics_table(args.out.resolve()))
        return 0
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise SystemExit(f"unknown stage(s) {bad}; choose from {STAGES}")
    out: Path = args.out.resolve()
    build: Path = args.build_dir.resolve()
    data = out / "data"
    ckpts = out / "checkpoints"
    tok_dir = build / "tokenizer"
    timings: dict[str, float] = {}
    t_all = time.time()

    if "corpus" in stages:
        from . import corpus, tasks

        t = time.time()
        _log("[corpus] fetching Debian packages and extracting text")
        info = corpus.build_corpus(build, data, log=_log)
        (build / "corpus_info.json").write_text(json.dumps(info, indent=2))
        _log("[corpus] building task TSVs")
        tinfo = tasks.build_tasks(build, data / "tasks", log=_log)
        (build / "tasks_info.json").write_text(json.dumps(tinfo, indent=2))
        timings["corpus"] = time.time() - t

    if any(s in stages for s in ("tokenizer", "pretrain", "finetune", "evaluate")):
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        from . import train

        device = train.resolve_device(args.device)
        _log(f"[device] {train.device_name(device)}")

    if "tokenizer" in stages:
        t = time.time()
        corpus_txt = build / "corpus" / "train.txt"
        if not corpus_txt.exists():
            raise SystemExit("run the corpus stage first")
        _log("[tokenizer] training WordPiece")
        train.train_tokenizer(corpus_txt, tok_dir, log=_log)
        timings["tokenizer"] = time.time() - t

    if "pretrain" in stages:
        import numpy as np

        t = time.time()
        tok = train.load_tokenizer(tok_dir)
        cache = build / f"train_blocks_{args.train_tokens}.npy"
        if cache.exists() and cache.stat().st_mtime > (tok_dir / "tokenizer.json").stat().st_mtime:
            blocks = np.load(cache)
        else:
            with open(build / "corpus" / "train.txt", encoding="utf-8") as f:
                blocks = train.encode_blocks(tok, f, limit_tokens=args.train_tokens)
            np.save(cache, blocks)
        eval_blocks = train.encode_blocks(tok, (data / "eval.txt").read_text(encoding="utf-8").splitlines())
        _log(f"[pretrain] {blocks.shape[0]} training blocks of 128 ({blocks.size / 1e6:.1f} M tokens); "
             f"{eval_blocks.shape[0]} eval blocks")
        steps = args.steps or (3000 if device == "cuda" else 600)
        batch = args.batch or (256 if device == "cuda" else 32)
        ckpts.mkdir(parents=True, exist_ok=True)
        for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
            ts = time.time()
            train.pretrain(seed, tok_dir, blocks, eval_blocks, ckpts / f"mlm-seed{seed}", steps=steps,
                           batch=batch, lr=args.lr, device=device, time_budget_s=args.time_budget, log=_log)
            timings[f"pretrain seed {seed}"] = time.time() - ts
        timings["pretrain"] = time.time() - t

    if "finetune" in stages:
        t = time.time()
        for task in [s.strip() for s in args.tasks.split(",") if s.strip()]:
            for seed in [int(s) for s in args.finetune_seeds.split(",") if s.strip()]:
                base = ckpts / f"mlm-seed{seed}"
                if not base.exists():
                    _log(f"  skip {task}-seed{seed}: {base} missing")
                    continue
                ts = time.time()
                train.finetune(task, data / "tasks" / task, base, seed, ckpts / f"{task}-seed{seed}",
                               device=device, log=_log)
                timings[f"finetune {task} seed {seed}"] = time.time() - ts
        timings["finetune"] = time.time() - t

    if "evaluate" in stages:
        # re-measure every saved checkpoint on its shipped fp16 weights and the current data
        t = time.time()
        eval_blocks = None
        for d in sorted(ckpts.glob("*/permerge.json")):
            ck = d.parent
            if ck.name.endswith((".tmp", ".old")):
                continue
            if eval_blocks is None:
                tok = train.load_tokenizer(ck)
                eval_blocks = train.encode_blocks(tok, (data / "eval.txt").read_text(encoding="utf-8").splitlines())
            train.reevaluate(ck, eval_blocks, data / "tasks", device=device, log=_log)
        timings["evaluate"] = time.time() - t

    timings["total"] = time.time() - t_all
    _log("[timings]")
    for k, v in timings.items():
        _log(f"  {k:28s} {v:8.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
