"""Rebuild the bundled offline checkpoint family end to end.

    python -m permerge zoo build --device cuda --jobs 5       # the bundled family (one H200, < 8 min)
    python -m permerge zoo build --device cpu --steps 20 --batch 8 --hidden 32 --ffn 64 --out /tmp/z
    python -m permerge zoo build --stages evaluate,acceptance  # re-measure and check built checkpoints
    python -m permerge zoo build --stages corpus,tokenizer,pack --out /tmp/zoo-data   # inputs of the GPU step
    python -m permerge zoo build --stages adopt,finetune,evaluate,acceptance --from DIR  # its archives

Stages: corpus (apt-get download + dpkg-deb -x into build/zoo, held-out eval/align text, task
TSVs), tokenizer (WordPiece, 8192 entries, deterministic ids), pretrain (MLM family, one
checkpoint per seed), pack (the pre-training inputs as one folder of at most 16 MiB for
``python -m permerge.zoo.gpu_step``, see ``pack.py``), adopt (that step's archives, checksums
verified, unpacked into the zoo), finetune (classifiers per task and base seed), evaluate (re-measure every
saved checkpoint on its fp16 weights), acceptance (barriers over all MLM pairs and classifier
curves with permerge's own pipeline, checked against the family's acceptance criteria).  Every
checkpoint is trained in memory and written to ``<name>.tmp`` then renamed, so an interrupted
run never leaves a half checkpoint.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..errors import PermergeError

ZOO = Path(__file__).resolve().parent
REPO = ZOO.parent.parent
STAGES = ("corpus", "tokenizer", "pack", "pretrain", "adopt", "finetune", "evaluate", "acceptance")
# what runs without --stages: the whole build in one place (pack and adopt are the two ends of the GPU step)
DEFAULT_STAGES = ("corpus", "tokenizer", "pretrain", "finetune", "evaluate", "acceptance")
TASKS = ("style", "testament", "supersense", "paraphrase")
DEFAULT_TASKS = ("style", "testament", "supersense")  # paraphrase: built, not fine-tuned by default (README)
RECIPE_FLAGS = ("layers", "hidden", "heads", "ffn", "dropout", "steps", "batch", "lr", "warmup", "sampling")

_T0 = time.time()


def _log(msg: str) -> None:
    print(msg, flush=True)


def _stage(name: str) -> None:
    _log(f"[{name}] (+{time.time() - _T0:.0f}s)")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line on stderr and exit 2 (through the CLI), not usage + message
        raise PermergeError(message)


def parse_args(argv=None):
    from ..training import SAMPLINGS, Recipe

    d = Recipe()
    p = _Parser(prog="python -m permerge zoo build", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    g = p.add_argument_group("pre-training recipe (recorded in every checkpoint's permerge.json and card)")
    g.add_argument("--layers", type=int, default=d.layers, help=f"encoder layers (default {d.layers})")
    g.add_argument("--hidden", type=int, default=d.hidden, help=f"hidden size (default {d.hidden})")
    g.add_argument("--heads", type=int, default=d.heads, help=f"attention heads (default {d.heads})")
    g.add_argument("--ffn", type=int, default=d.ffn, help=f"feed-forward width (default {d.ffn})")
    g.add_argument("--dropout", type=float, default=d.dropout,
                   help=f"dropout on hidden states and attention probabilities (default {d.dropout})")
    g.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps per seed (default {d.steps})")
    g.add_argument("--batch", type=int, default=d.batch, help=f"sequences of 128 tokens per step (default {d.batch})")
    g.add_argument("--lr", type=float, default=d.lr, help=f"AdamW peak learning rate (default {d.lr})")
    g.add_argument("--warmup", type=int, default=d.warmup,
                   help=f"linear warm-up steps, then linear decay to 0 (default {d.warmup})")
    g.add_argument("--sampling", default=d.sampling, choices=SAMPLINGS,
                   help="window: a fresh random 126-token window of the corpus per example (default); "
                        "blocks: fixed packed blocks, reshuffled every epoch")
    p.add_argument("--seeds", default="1,2,3,4,5", help="comma-separated pre-training seeds")
    p.add_argument("--finetune-seeds", default="1,2,3", help="base seeds fine-tuned on each task")
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS),
                   help=f"tasks to fine-tune (default {','.join(DEFAULT_TASKS)}; also: paraphrase)")
    p.add_argument("--finetune-epochs", type=float, default=2.0, help="fine-tuning epochs (default 2)")
    p.add_argument("--finetune-lr", type=float, default=2e-4, help="fine-tuning peak learning rate (default 2e-4)")
    p.add_argument("--stages", default=",".join(DEFAULT_STAGES),
                   help=f"comma-separated subset of {','.join(STAGES)} (default {','.join(DEFAULT_STAGES)})")
    p.add_argument("--pack", type=Path, default=REPO / "build" / "zoo-pack",
                   help="pack folder written by the pack stage and checked by adopt (default build/zoo-pack)")
    p.add_argument("--from", dest="from_dir", type=Path, default=None,
                   help="adopt: the GPU step's output folder (mlm-seed*.tar, returned.json, gpu_step.log)")
    p.add_argument("--jobs", type=int, default=1,
                   help="pre-train this many seeds at once, one process each (on one GPU: 5)")
    p.add_argument("--out", type=Path, default=ZOO, help="zoo folder (default: permerge/zoo)")
    p.add_argument("--build-dir", type=Path, default=REPO / "build" / "zoo",
                   help="scratch folder for packages, the raw corpus and the tokenizer (git-ignored)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="stop each pre-training run after this many seconds (the LR schedule is compressed)")
    p.add_argument("--train-tokens", type=int, default=0,
                   help="tokens of the training corpus to use (default 0: all of it)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    a = p.add_argument_group("acceptance stage")
    a.add_argument("--align-tokens", type=int, default=110_000,
                   help="alignment tokens per pair (default 110000: all of data/align.txt)")
    a.add_argument("--eval-blocks", type=int, default=64,
                   help="MLM evaluation blocks of 128 tokens from data/eval.txt (default 64, as the "
                        "pipeline's; 0: all 291, about 4.5x the CPU time)")
    a.add_argument("--lambdas", type=int, default=21, help="lambda grid points (default 21)")
    p.add_argument("--table", action="store_true",
                   help="print the markdown metrics table of the checkpoints in --out and exit")
    return p.parse_args(argv)


def recipe_from_args(args):
    from ..training import Recipe

    r = Recipe(**{k: getattr(args, k) for k in RECIPE_FLAGS})
    try:
        r.validate()
    except ValueError as e:
        raise PermergeError(str(e)) from None
    return r


def _ints(s: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise PermergeError(f"{flag} takes comma-separated integers (got {s!r})") from None


def metrics_table(zoo_dir: Path) -> str:
    """Markdown table of every checkpoint's permerge.json (used for README.md)."""
    rows = []
    for d in sorted((zoo_dir / "checkpoints").glob("*/permerge.json")):
        if d.parent.name.endswith((".tmp", ".old")):
            continue
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


def _stream_cache(build: Path, tok_dir: Path, train_tokens: int) -> Path:
    h = hashlib.sha1((tok_dir / "tokenizer.json").read_bytes()).hexdigest()[:12]
    return build / f"train_stream_{h}_{train_tokens}.npy"


def _training_stream(build: Path, tok_dir: Path, train_tokens: int, log):
    import numpy as np

    from .. import training as train

    corpus_txt = build / "corpus" / "train.txt"
    if not corpus_txt.exists():
        raise PermergeError(f"{corpus_txt} is missing: run the corpus stage first")
    cache = _stream_cache(build, tok_dir, train_tokens)
    if cache.exists():
        return np.load(cache)
    t = time.time()
    tok = train.load_tokenizer(tok_dir)
    with open(corpus_txt, encoding="utf-8") as f:
        stream = train.encode_stream(tok, f, limit_tokens=train_tokens or None)
    tmp = cache.with_name(cache.stem + ".tmp.npy")
    np.save(tmp, stream)
    tmp.replace(cache)
    log(f"  encoded {len(stream) / 1e6:.1f} M training tokens in {time.time() - t:.0f}s -> {cache.name}")
    return stream


def _child_argv(args, seed: int) -> list[str]:
    argv = [sys.executable, "-m", "permerge", "zoo", "build", "--stages", "pretrain", "--seeds", str(seed),
            "--jobs", "1", "--device", args.device, "--out", str(args.out.resolve()),
            "--build-dir", str(args.build_dir.resolve()), "--train-tokens", str(args.train_tokens)]
    for k in RECIPE_FLAGS:
        argv += [f"--{k}", str(getattr(args, k))]
    if args.time_budget:
        argv += ["--time-budget", str(args.time_budget)]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    return argv


def _pretrain_parallel(args, seeds: list[int], log) -> dict[str, float]:
    """One process per seed, at most --jobs at a time; their output is printed with a prefix."""
    timings: dict[str, float] = {}
    pending = list(seeds)
    running: dict[int, tuple[subprocess.Popen, float, threading.Thread]] = {}
    failed = []

    def pump(seed, proc):
        for line in proc.stdout:
            log(f"  [seed {seed}] {line.rstrip()}")

    while pending or running:
        while pending and len(running) < args.jobs:
            s = pending.pop(0)
            proc = subprocess.Popen(_child_argv(args, s), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, cwd=str(REPO))
            th = threading.Thread(target=pump, args=(s, proc), daemon=True)
            th.start()
            running[s] = (proc, time.time(), th)
        for s, (proc, t, th) in list(running.items()):
            if proc.poll() is not None:
                th.join()
                timings[f"pretrain seed {s}"] = time.time() - t
                if proc.returncode:
                    failed.append(s)
                del running[s]
        time.sleep(0.2)
    if failed:
        raise PermergeError(f"pre-training failed for seed(s) {failed} (see the log above)")
    return timings


def _finetune(train, task: str, task_dir: Path, base: Path, seed: int, out: Path, args, device: str) -> dict:
    """One bundled classifier: ``permerge.training.finetune`` with the family's recipe (the head from
    ``HEAD_SEED`` for every base seed, sequences of at most 128 tokens, dropout 0.1), saved in
    float16 with the zoo's record and card."""
    recipe = train.FinetuneRecipe(epochs=args.finetune_epochs, lr=args.finetune_lr, batch_size=32,
                                  max_len=train.SEQ_LEN, dropout=0.1)
    res = train.finetune(str(base), task_dir, head_seed=train.HEAD_SEED, seed=seed, recipe=recipe, device=device,
                         log=_log, stage=f"{task}-seed{seed}")
    base_meta = json.loads((base / "permerge.json").read_text())
    meta = {**res.meta, "task": task, "base": base.name, "config": base_meta["config"],
            "base_recipe": base_meta.get("recipe"), "dtype_saved": "float16",
            "data": f"data/tasks/{task}/train.tsv ({res.meta['train_examples']} rows); dev.tsv "
                    f"({res.meta['metrics']['dev_examples']} rows)"}
    train.save_checkpoint(res.model, res.tokenizer, out, meta, train.zoo_classifier_card(out.name, meta))
    return meta


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.table:
        print(metrics_table(args.out.resolve()))
        return 0
    # check every input before any expensive work
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise PermergeError(f"unknown stage(s) {', '.join(bad)}; choose from {', '.join(STAGES)}")
    recipe = recipe_from_args(args)
    seeds = _ints(args.seeds, "--seeds")
    ft_seeds = _ints(args.finetune_seeds, "--finetune-seeds")
    tasks_ = [s.strip() for s in args.tasks.split(",") if s.strip()]
    unknown = [t for t in tasks_ if t not in TASKS]
    if unknown:
        raise PermergeError(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    if not (args.finetune_epochs > 0 and args.finetune_lr > 0):
        raise PermergeError("--finetune-epochs and --finetune-lr must be positive")
    if args.jobs < 1:
        raise PermergeError("--jobs must be at least 1")
    if "adopt" in stages and args.from_dir is None:
        raise PermergeError("the adopt stage needs --from DIR (the GPU step's output folder)")
    if "adopt" in stages and "pretrain" in stages:
        raise PermergeError("choose pretrain (here) or adopt (archives of the GPU step), not both")
    out: Path = args.out.resolve()
    build: Path = args.build_dir.resolve()
    data = out / "data"
    ckpts = out / "checkpoints"
    tok_dir = build / "tokenizer"
    timings: dict[str, float] = {}
    t_all = time.time()
    device = "cpu"
    if any(s in stages for s in STAGES[1:]):
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        from .. import training as train
        from . import tokenizer as zoo_tokenizer

        device = train.resolve_device(args.device)
        _log(f"[device] {train.device_name(device)}")
        _log(f"[recipe] {json.dumps(recipe.to_dict())}")

    if "corpus" in stages:
        from . import corpus, tasks

        _stage("corpus")
        t = time.time()
        _log("  fetching Debian packages and extracting text")
        info = corpus.build_corpus(build, data, log=_log)
        (build / "corpus_info.json").write_text(json.dumps(info, indent=2))
        _log("  building task TSVs")
        tinfo = tasks.build_tasks(build, data / "tasks", log=_log)
        (build / "tasks_info.json").write_text(json.dumps(tinfo, indent=2))
        timings["corpus"] = time.time() - t

    if "tokenizer" in stages:
        _stage("tokenizer")
        t = time.time()
        corpus_txt = build / "corpus" / "train.txt"
        if not corpus_txt.exists():
            raise PermergeError(f"{corpus_txt} is missing: run the corpus stage first")
        zoo_tokenizer.train_tokenizer(corpus_txt, tok_dir, log=_log)
        timings["tokenizer"] = time.time() - t

    if "pack" in stages:
        from . import pack

        _stage("pack")
        t = time.time()
        if not (tok_dir / "tokenizer.json").exists():
            raise PermergeError(f"{tok_dir} has no tokenizer: run the tokenizer stage first")
        stream = _training_stream(build, tok_dir, args.train_tokens, _log)
        m = pack.write_pack(args.pack.resolve(), tok_dir, stream, data / "eval.txt", log=_log)
        del stream
        for name, f in m["files"].items():
            _log(f"  {name:32s} {f['bytes']:>10,d} bytes  sha256 {f['sha256']}")
        _log(f"  pack {args.pack.resolve()}: {m['total_bytes'] / pack.MiB:.2f} MiB (limit "
             f"{pack.PACK_MAX_BYTES // pack.MiB}), {m['stream']['tokens'] / 1e6:.2f} M training tokens")
        _log(f"  pack checksum (sha256 of manifest.json): {m['sha256']}")
        timings["pack"] = time.time() - t

    if "pretrain" in stages:
        _stage("pretrain")
        t = time.time()
        if not (tok_dir / "tokenizer.json").exists():
            raise PermergeError(f"{tok_dir} has no tokenizer: run the tokenizer stage first")
        stream = _training_stream(build, tok_dir, args.train_tokens, _log)
        ckpts.mkdir(parents=True, exist_ok=True)
        if args.jobs > 1 and len(seeds) > 1:
            _log(f"  {len(seeds)} seeds, {min(args.jobs, len(seeds))} at a time "
                 f"({recipe.steps} steps x {recipe.batch} x 128 tokens each, sampling {recipe.sampling})")
            timings.update(_pretrain_parallel(args, seeds, _log))
        else:
            tok = train.load_tokenizer(tok_dir)
            eval_blocks = train.encode_blocks(tok, (data / "eval.txt").read_text(encoding="utf-8").splitlines())
            _log(f"  {len(stream) / 1e6:.2f} M training tokens; {eval_blocks.shape[0]} eval blocks")
            for seed in seeds:
                ts = time.time()
                train.pretrain(seed, tok_dir, stream, eval_blocks, ckpts / f"mlm-seed{seed}", recipe=recipe,
                               device=device, time_budget_s=args.time_budget, log=_log)
                timings[f"pretrain seed {seed}"] = time.time() - ts
        timings["pretrain"] = time.time() - t

    if "adopt" in stages:
        from . import pack

        _stage("adopt")
        t = time.time()
        local = None
        if (args.pack / pack.MANIFEST).is_file():
            local = pack.read_manifest(args.pack, verify=False)["sha256"]
        else:
            _log(f"  note: no pack at {args.pack}; the archives' pack checksum is not compared with a local one")
        from . import adopt_check

        evaltxt = args.pack / pack.EVAL_FILE if (args.pack / pack.EVAL_FILE).is_file() else data / "eval.txt"
        pack.adopt(args.from_dir.resolve(), ckpts, pack_sha256=local, log=_log,
                   limits=adopt_check.limits(recipe_from_args(args)), verify=adopt_check.verifier(evaltxt))
        timings["adopt"] = time.time() - t

    if "finetune" in stages:
        _stage("finetune")
        t = time.time()
        for task in tasks_:
            for seed in ft_seeds:
                base = ckpts / f"mlm-seed{seed}"
                if not base.exists():
                    raise PermergeError(f"{base} is missing: pre-train seed {seed} first")
                ts = time.time()
                _finetune(train, task, data / "tasks" / task, base, seed, ckpts / f"{task}-seed{seed}", args, device)
                timings[f"finetune {task} seed {seed}"] = time.time() - ts
        timings["finetune"] = time.time() - t

    if "evaluate" in stages:
        # re-measure every saved checkpoint on its shipped fp16 weights and the current data
        _stage("evaluate")
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

    passed = True
    if "acceptance" in stages:
        from . import acceptance

        _stage("acceptance")
        t = time.time()
        report = acceptance.run(out, device=device, align_tokens=args.align_tokens,
                                eval_blocks=args.eval_blocks or None, lambdas=args.lambdas,
                                tasks=tasks_, log=_log)
        passed = report["passed"]
        timings["acceptance"] = time.time() - t

    timings["total"] = time.time() - t_all
    _log("[timings]")
    for k, v in timings.items():
        _log(f"  {k:28s} {v:8.1f} s")
    if "acceptance" in stages:
        _log(f"ACCEPTANCE: {'PASS' if passed else 'FAIL'} (details in {out / 'acceptance.md'})")
    return 0 if passed else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except PermergeError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
