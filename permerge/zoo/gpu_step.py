"""The GPU step of the zoo build: pre-train the MLM family from a pack, one archive per checkpoint.

    python -m permerge.zoo.gpu_step --pack build/zoo-pack --out OUT --device cuda

Reads the pack written by ``python -m permerge zoo build --stages corpus,tokenizer,pack``
(checksums verified first), pre-trains one MLM per seed, all seeds at once as one process each
on the one device, and writes into OUT, as each seed finishes: ``mlm-seed<s>.tar`` (the
checkpoint folder: fp16 safetensors, tokenizer, config, permerge.json, card), ``returned.json``
(sha256 and size of every archive, eval losses, steps, timings, versions; rewritten after every
seed) and ``gpu_step.log`` (everything printed).  At most 8 files, each under 16 MiB; the limits
are checked before training (from the parameter count) and again at the end.

Every seed's training loop ends at the latest ``--time-budget`` seconds after the step started
(start-up time included; the learning-rate schedule is compressed to fit the time left, see
``permerge.training.pretrain``), then it is evaluated and archived; a seed still running ``--deadline``
seconds after the start is stopped, so the step cannot overrun.  Exit status 0 when every seed was written, 1
when some failed (the others' archives are still there), 2 for bad input (one line, before any
training).

Imports only the standard library, numpy, torch, transformers (tokenizers, safetensors) and
permerge.zoo.{pack,train}: nothing of the dashboard, the cache or the alignment code.
Adopt the archives on any machine with ``python -m permerge zoo build --stages adopt --from OUT``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..errors import PermergeError
from . import pack as P
from .build import RECIPE_FLAGS
from .build import recipe_from_args as _recipe

DEFAULT_TIME_BUDGET = 300.0  # seconds from the start until every seed's training loop ends (all run at once)
DEFAULT_GRACE = 90.0  # default deadline = time budget + this (evaluation and archive after training)
ARCHIVE_OVERHEAD = 1 * P.MiB  # tokenizer, config, card and tar headers beside the fp16 weights


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise PermergeError(message)


def parse_args(argv=None):
    from ..training import SAMPLINGS, Recipe

    d = Recipe()
    p = _Parser(prog="python -m permerge.zoo.gpu_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--pack", type=Path, required=True, help="the pack folder (zoo build --stages pack)")
    p.add_argument("--out", type=Path, required=True, help="output folder for the archives, returned.json and log")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (dry run)")
    p.add_argument("--seeds", default="1,2,3,4,5", help="comma-separated seeds (default 1,2,3,4,5)")
    p.add_argument("--time-budget", type=float, default=DEFAULT_TIME_BUDGET,
                   help=f"every seed's training ends this many seconds after the start, start-up included; "
                        f"the LR schedule is compressed to fit (default {DEFAULT_TIME_BUDGET:.0f})")
    p.add_argument("--deadline", type=float, default=None,
                   help="stop any seed still running this many seconds after the start "
                        f"(default: time budget + {DEFAULT_GRACE:.0f})")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per seed process (default: CPU cores / seeds)")
    p.add_argument("--work", type=Path, default=None,
                   help="scratch folder for the decompressed stream and checkpoints (default: a temporary one)")
    g = p.add_argument_group("pre-training recipe (defaults: the family's, as zoo build)")
    for k in RECIPE_FLAGS:
        if k == "sampling":
            g.add_argument("--sampling", default=d.sampling, choices=SAMPLINGS)
        else:
            g.add_argument(f"--{k}", type=type(getattr(d, k)), default=getattr(d, k),
                           help=f"default {getattr(d, k)}")
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)  # internal: one seed
    p.add_argument("--train-until", type=float, default=None, help=argparse.SUPPRESS)  # internal: epoch seconds
    return p.parse_args(argv)


def _check_device(device: str) -> str:
    import torch

    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise PermergeError("--device cuda was asked for, but no CUDA GPU is available")
        return device
    if device != "cpu":
        raise PermergeError(f"unknown device {device!r}: use cuda or cpu")
    return device


def _versions() -> dict:
    import numpy
    import tokenizers
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "numpy": numpy.__version__}


# ----------------------------------------------------------------------------- worker (one seed)
def _worker(args) -> int:
    import numpy as np
    import torch

    from .. import training as train

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Writing model shards" bars in the log
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    seed = args.worker
    work = args.work
    manifest = json.loads((work / "pack_manifest.json").read_text())
    stream = np.fromfile(work / "train.u16", dtype="<u2").astype(np.uint16, copy=False)
    tok_dir = args.pack / P.TOKENIZER_DIR
    tok = train.load_tokenizer(tok_dir)
    eval_blocks = train.encode_blocks(tok, (args.pack / P.EVAL_FILE).read_text(encoding="utf-8").splitlines())
    print(f"  start: {len(stream) / 1e6:.2f} M training tokens, {eval_blocks.shape[0]} eval blocks, "
          f"{train.device_name(args.device)}", flush=True)
    name = f"mlm-seed{seed}"
    ckpt = work / "checkpoints" / name
    left = args.train_until - time.time()
    if left < 0.1 * args.time_budget:
        print(f"  no time left to train ({left:.0f} s of the {args.time_budget:.0f} s budget; start-up was too slow)",
              flush=True)
        return 1
    print(f"  training for at most {left:.0f} s", flush=True)
    meta = train.pretrain(seed, tok_dir, stream, eval_blocks, ckpt, recipe=_recipe(args), device=args.device,
                          time_budget_s=left, log=lambda m: print(m, flush=True),
                          extra_meta={"pack_sha256": manifest["sha256"], "built_by": "permerge.zoo.gpu_step"})
    arch = P.archive_checkpoint(ckpt, args.out / f"{name}.tar")
    result = {"file": f"{name}.tar", "seed": seed, **arch, "eval_mlm_loss": meta["metrics"]["eval_mlm_loss"],
              "eval_mlm_accuracy": meta["metrics"]["eval_mlm_accuracy"], "steps": meta["steps"],
              "planned_steps": meta["planned_steps"], "final_train_loss": meta["final_train_loss"],
              "train_wall_s": meta["wall_time_s"]}
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# ----------------------------------------------------------------------------- parent
class _Log:
    """Print and append to OUT/gpu_step.log (flushed per line, so a killed run keeps its log)."""

    def __init__(self, path: Path):
        self.f = open(path, "a", encoding="utf-8")
        self.lock = threading.Lock()
        self.t0 = time.time()

    def __call__(self, msg: str) -> None:
        line = f"[{time.time() - self.t0:6.1f}s] {msg}"
        with self.lock:
            print(line, flush=True)
            self.f.write(line + "\n")
            self.f.flush()


def _write_returned(out: Path, record: dict) -> None:
    tmp = out / f".{P.RETURNED}.part"
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    tmp.replace(out / P.RETURNED)


def _child_argv(args, seed: int, threads: int) -> list[str]:
    argv = [sys.executable, "-m", "permerge.zoo.gpu_step", "--worker", str(seed), "--pack", str(args.pack),
            "--out", str(args.out), "--work", str(args.work), "--device", args.device,
            "--time-budget", str(args.time_budget), "--train-until", str(args.train_until),
            "--threads", str(threads)]
    for k in RECIPE_FLAGS:
        argv += [f"--{k}", str(getattr(args, k))]
    return argv


def main(argv=None) -> int:
    args = parse_args(argv)
    args.pack, args.out = args.pack.resolve(), args.out.resolve()
    if args.worker is not None:
        args.work = args.work.resolve()
        return _worker(args)
    t0 = time.time()  # the time budget and the deadline count from here
    # ---- every check before any training
    recipe = _recipe(args)
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        raise PermergeError(f"--seeds takes comma-separated integers (got {args.seeds!r})") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise PermergeError(f"--seeds must name distinct seeds (got {args.seeds!r})")
    if len(seeds) + 2 > P.RETURN_MAX_FILES:
        raise PermergeError(f"{len(seeds)} seeds would return {len(seeds) + 2} files, over the limit of "
                            f"{P.RETURN_MAX_FILES}")
    if not args.time_budget > 0:
        raise PermergeError("--time-budget must be positive")
    deadline = args.deadline if args.deadline is not None else args.time_budget + DEFAULT_GRACE
    if not deadline > 0:
        raise PermergeError("--deadline must be positive")
    manifest = P.read_manifest(args.pack)  # verifies every file's checksum
    from ..training import parameter_count

    vocab = json.loads((args.pack / P.TOKENIZER_DIR / "tokenizer.json").read_text())["model"]["vocab"]
    weights = 2 * parameter_count(recipe, vocab=len(vocab))
    if weights + ARCHIVE_OVERHEAD > P.RETURN_MAX_FILE_BYTES:
        raise PermergeError(f"one checkpoint of this recipe is about {(weights + ARCHIVE_OVERHEAD) / P.MiB:.1f} MiB "
                            f"in fp16, over the {P.RETURN_MAX_FILE_BYTES // P.MiB} MiB limit per returned file")
    if len(seeds) * (weights + ARCHIVE_OVERHEAD) > P.RETURN_MAX_TOTAL_BYTES - P.MiB:
        raise PermergeError(f"{len(seeds)} checkpoints of this recipe would exceed the "
                            f"{P.RETURN_MAX_TOTAL_BYTES // P.MiB} MiB returned in all")
    device = _check_device(args.device)
    if args.out.exists() and not args.out.is_dir():
        raise PermergeError(f"--out {args.out} is not a folder")
    args.out.mkdir(parents=True, exist_ok=True)
    for p in args.out.iterdir():  # a rerun into the same folder: only our own files are replaced
        if p.name in (P.RETURNED, P.LOG_FILE) or (p.name.startswith("mlm-seed") and p.name.endswith(".tar")) \
                or (p.name.startswith(".") and p.name.endswith(".part")):
            p.unlink()
    import tempfile

    own_work = args.work is None
    args.work = Path(tempfile.mkdtemp(prefix="permerge-gpu-step-")) if own_work else args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    log = _Log(args.out / P.LOG_FILE)
    versions = _versions()
    log(f"permerge zoo GPU step: pack {manifest['sha256']} ({P.pack_bytes(args.pack) / P.MiB:.2f} MiB, checksums "
        f"verified), device {device}, seeds {seeds}")
    log(f"versions {json.dumps(versions)}")
    log(f"recipe {json.dumps(recipe.to_dict())}; training ends by +{args.time_budget:.0f} s, "
        f"deadline +{deadline:.0f} s")
    stream = P.load_stream(args.pack, manifest, dest=args.work / "train.u16")
    (args.work / "pack_manifest.json").write_text(json.dumps(manifest))
    log(f"training stream: {len(stream) / 1e6:.2f} M tokens (checksum verified)")
    del stream
    record = {"format": P.RETURNED_FORMAT, "pack_sha256": manifest["sha256"], "recipe": recipe.to_dict(),
              "seeds": seeds, "time_budget_s": args.time_budget, "device": device, "versions": versions,
              "archives": {}, "failed": {}, "seconds": None}
    _write_returned(args.out, record)

    threads = args.threads or max(1, (os.cpu_count() or 1) // len(seeds))
    args.train_until = t0 + args.time_budget
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    procs: dict[int, subprocess.Popen] = {}
    pumps: dict[int, threading.Thread] = {}
    results: dict[int, dict] = {}

    def pump(seed, proc):
        for line in proc.stdout:
            line = line.rstrip()
            if line.startswith("RESULT "):
                results[seed] = json.loads(line[7:])
            else:
                log(f"[seed {seed}] {line}")

    for s in seeds:
        # cwd: the folder holding the permerge package, so that `-m permerge.zoo.gpu_step` finds this copy
        procs[s] = subprocess.Popen(_child_argv(args, s, threads), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, env=env, cwd=str(Path(__file__).resolve().parents[2]))
        pumps[s] = threading.Thread(target=pump, args=(s, procs[s]), daemon=True)
        pumps[s].start()
    running = set(seeds)
    try:
        while running:
            time.sleep(0.5)
            for s in sorted(running):
                proc = procs[s]
                if proc.poll() is None and time.time() - t0 > deadline:
                    log(f"[seed {s}] still running after the {deadline:.0f} s deadline: stopped")
                    proc.kill()
                    proc.wait()
                if proc.poll() is None:
                    continue
                pumps[s].join(timeout=10)
                running.discard(s)
                r = results.get(s)
                if proc.returncode == 0 and r:
                    record["archives"][r["file"]] = r
                    log(f"[seed {s}] {r['file']}: eval MLM loss {r['eval_mlm_loss']:.4f}, {r['steps']}/"
                        f"{r['planned_steps']} steps in {r['train_wall_s']:.0f} s; {r['bytes'] / P.MiB:.2f} MiB, "
                        f"sha256 {r['sha256']}")
                else:
                    record["failed"][str(s)] = f"exit status {proc.returncode}"
                    log(f"[seed {s}] FAILED (exit status {proc.returncode}; see the lines above)")
                _write_returned(args.out, record)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
        if own_work:
            import shutil

            shutil.rmtree(args.work, ignore_errors=True)
    record["seconds"] = round(time.time() - t0, 1)
    _write_returned(args.out, record)
    log("seed  steps        eval MLM loss  archive")
    for s in seeds:
        r = next((r for r in record["archives"].values() if r["seed"] == s), None)
        log(f"{s:4d}  " + (f"{r['steps']:5d}/{r['planned_steps']:<5d}  {r['eval_mlm_loss']:13.4f}  {r['file']}"
                           if r else "failed"))
    problems = P.check_returned(args.out)
    log("returned files: " + ("within the limits (" + ", ".join(sorted(p.name for p in args.out.iterdir()))
                              + ")" if not problems else "OVER THE LIMITS: " + "; ".join(problems)))
    ok = not record["failed"] and not problems
    log(f"GPU STEP: {'OK' if ok else 'INCOMPLETE'} in {record['seconds']:.0f} s "
        f"({len(record['archives'])} of {len(seeds)} archives)")
    log.f.close()
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except PermergeError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
