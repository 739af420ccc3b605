"""``permerge finetune``: a base checkpoint (or a pair, ``--pair A B``) fine-tuned into sequence
classifiers on a task folder, with one head seed for all of them (``permerge.training.finetune``).

Every input is checked before any training: the task's files and columns, the bases' configs (a
family with a classifier in ``permerge/arch/``), the options, the device and the output folders.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import PermergeError


def add_parser(sub, int_at_least, add_zoo) -> argparse.ArgumentParser:
    from .training import HEAD_SEED, FinetuneRecipe

    d = FinetuneRecipe()
    p = sub.add_parser("finetune", help="fine-tune a base (or a pair with one head seed) into sequence classifiers",
                       description="Fine-tune a checkpoint with an MLM or causal-LM head into its family's sequence "
                                   "classifier on a GLUE-format task folder. The classifier head comes from "
                                   "--head-seed (the same head for every base), the data order and dropout from "
                                   "--seed.")
    p.add_argument("base", metavar="BASE", nargs="?", default=None,
                   help="base checkpoint: a local folder, a hub id or zoo:NAME (or give --pair A B)")
    p.add_argument("--pair", nargs=2, metavar=("A", "B"), default=None,
                   help="fine-tune both bases with one head seed into OUT/<A's name> and OUT/<B's name>")
    p.add_argument("--task", required=True, help="task folder: train.tsv and dev.tsv (GLUE as distributed, or "
                                                 "sentence[/sentence2] and label columns), or zoo:tasks/NAME")
    p.add_argument("--glue-task", default=None, metavar="NAME",
                   help="the GLUE task the folder holds (CoLA, SST-2, MRPC, STS-B, QQP, QNLI, RTE, MNLI, WNLI; "
                        "default: recognised by the folder's name)")
    p.add_argument("--out", required=True, help="output checkpoint folder (with --pair: the folder of both)")
    p.add_argument("--head-seed", type=int, default=HEAD_SEED,
                   help=f"seed of the classifier head's initialisation (default {HEAD_SEED})")
    p.add_argument("--seed", type=int, default=0, help="seed of the data order and dropout (default 0)")
    p.add_argument("--epochs", type=float, default=d.epochs, help=f"training epochs (default {d.epochs:g})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"AdamW peak learning rate (default {d.lr:g})")
    p.add_argument("--batch-size", type=int_at_least(1, "--batch-size"), default=d.batch_size,
                   help=f"examples per step (default {d.batch_size})")
    p.add_argument("--max-examples", type=int_at_least(1, "--max-examples"), default=None,
                   help="use the first N training examples (default: all)")
    p.add_argument("--max-len", type=int_at_least(8, "--max-len"), default=d.max_len,
                   help=f"tokens per example, longer ones truncated (default {d.max_len})")
    p.add_argument("--device", default="auto", help="auto (GPU when present; bf16 autocast there), cpu, cuda or cuda:N")
    p.add_argument("--overwrite", action="store_true", help="replace an output folder permerge wrote")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_zoo(p)
    return p


def base_name(source: str) -> str:
    """The folder name a base's classifier gets under ``--out`` with ``--pair``."""
    return Path(str(source).rstrip("/")).name or str(source)


def check(bases: list[str], task: str, out: str, pair: bool, glue_task: str | None, recipe, device: str,
          overwrite: bool = False, only: list[int] | None = None) -> tuple[list[Path], object]:
    """Everything that can be checked before training: the output folders (one per base; with
    ``only``, only those bases' folders), and the task read once (its train and dev files, their
    columns and labels).  PermergeError otherwise."""
    from . import data as D
    from .checkpoints import _TOKENIZER_FILES, _is_local, read_config
    from .outputs import check_out
    from .pipeline import resolve_device
    from .training import _classifier_class

    try:
        recipe.validate()
    except ValueError as e:
        raise PermergeError(str(e)) from None
    if glue_task is not None:
        from .glue import lookup

        lookup(glue_task)
    resolve_device(device)
    if not D.is_task_folder(task):
        raise PermergeError(f"--task {task} is not a task folder (train.tsv and dev.tsv)")
    if not (Path(task).expanduser() / "train.tsv").is_file():
        raise PermergeError(f"--task {task} has no train.tsv")
    train = D.read_task(task, "train", glue_task)
    D.read_task(task, "dev", glue_task)
    for b in bases:
        _classifier_class(read_config(b))
        if _is_local(b) and not any((Path(b).expanduser() / f).is_file() for f in _TOKENIZER_FILES):
            raise PermergeError(f"{b} has no tokenizer files; fine-tuning reads the task's text through the "
                                "base's tokenizer")
    if pair:
        names = [base_name(b) for b in bases]
        if names[0] == names[1]:
            raise PermergeError(f"both bases are named {names[0]!r}; --pair writes OUT/<name> for each, so "
                                "give bases with different folder names")
        targets = [Path(out).expanduser() / n for n in names]
    else:
        targets = [Path(out).expanduser()]
    inputs = {f"base {i + 1}": b for i, b in enumerate(bases)} | {"--task": task}
    finals = [check_out(t, overwrite, inputs=inputs, need_bytes=2**20) if only is None or i in only
              else t.resolve() for i, t in enumerate(targets)]
    return finals, train


def finetune_bases(bases: list[str], task: str, finals: list[Path], *, head_seed: int, seed: int, recipe,
                   glue_task: str | None = None, device: str = "auto", overwrite: bool = False,
                   progress=None, log=None) -> list[dict]:
    """Fine-tune each base in turn with the same head seed and write it to its folder as soon as it
    is done (atomically).  ``progress(stage, step, steps, overall=(k, n))``; returns the records."""
    from .training import finetune, write_classifier

    metas = []
    for k, (base, final) in enumerate(zip(bases, finals)):
        stage = f"fine-tuning {base_name(base)}" + (f" ({k + 1} of {len(bases)})" if len(bases) > 1 else "")

        def cb(stage_, done, total, _k=k, **info):
            if progress is not None:
                progress(stage_, done, total, overall=(_k, len(bases)), **info)

        res = finetune(base, task, head_seed=head_seed, seed=seed, recipe=recipe, glue_task=glue_task,
                       device=device, progress=cb, log=log, stage=stage)
        write_classifier(res, final, overwrite, final=final)
        metas.append({**res.meta, "path": str(final)})
    return metas


def cmd_finetune(args, progress) -> int:
    from . import zoo
    from .training import FinetuneRecipe

    if (args.base is None) == (args.pair is None):
        raise PermergeError("give one BASE or --pair A B")
    bases = list(args.pair) if args.pair else [args.base]
    bases = [zoo.resolve(b) if b.startswith(zoo.PREFIX) else b for b in bases]
    task = zoo.resolve(args.task) if args.task.startswith(zoo.PREFIX) else args.task
    recipe = FinetuneRecipe(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, max_len=args.max_len,
                            max_examples=args.max_examples)
    finals, _ = check(bases, task, args.out, args.pair is not None, args.glue_task, recipe, args.device,
                      args.overwrite)
    metas = finetune_bases(bases, task, finals, head_seed=args.head_seed, seed=args.seed, recipe=recipe,
                           glue_task=args.glue_task, device=args.device, overwrite=args.overwrite,
                           progress=progress)
    progress.close()
    for m in metas:
        shown = ", ".join(f"{k[4:]} {v:.4f}" for k, v in m["metrics"].items()
                          if k.startswith("dev_") and isinstance(v, float))
        print(f"wrote {m['path']} (dev: {shown})", file=sys.stderr)
    return 0


# --- the dashboard's job: a fine-tuned pair in the background ---------------------------------------

def existing_pair(finals: list[Path]) -> bool:
    """Both classifiers of a pair are already there (written by ``permerge finetune``)."""
    import json

    for f in finals:
        try:
            if json.loads((f / "permerge.json").read_text()).get("kind") != "classifier":
                return False
        except (OSError, ValueError):
            return False
    return True


def pair_folder_name(bases: list[str], task: str, head_seed: int, seed: int, recipe) -> str:
    """Where a dashboard pair goes under its root: the task, the bases and the settings."""
    from .data import content_hash

    key = content_hash([list(bases), str(Path(task).expanduser().resolve()), head_seed, seed, recipe.to_dict()])
    return f"{Path(task).name}-{base_name(bases[0])}-{base_name(bases[1])}-h{head_seed}-{key[:8]}"


def pair_work(bases: list[str], task: str, root: str | Path, *, head_seed: int, seed: int, recipe,
              glue_task: str | None = None, device: str = "auto"):
    """``fn(progress)`` for a job manager (``permerge.jobs``): fine-tune the pair into
    ``root/<pair_folder_name>/<A>`` and ``.../<B>`` (reused when both are there already) with the
    whole job's progress (``plan.JobPlan``: one stage per base, sized in optimizer steps).  The
    inputs are checked when this is called, before anything is submitted.  Returns {"pair": (A, B),
    "task": the task folder, "records": [permerge.json of each]}."""
    import json
    import math

    from .plan import JobPlan

    out = Path(root).expanduser() / pair_folder_name(bases, task, head_seed, seed, recipe)
    targets = [out / base_name(b) for b in bases]
    # a classifier finished before a cancel is kept and reused: only the missing ones are trained
    todo = [i for i, t in enumerate(targets) if not existing_pair([t])]
    finals, train = check(bases, task, str(out), True, glue_task, recipe, device, only=todo) if todo else \
        (targets, None)
    n = 0 if train is None else len(train.texts_a) if recipe.max_examples is None else \
        min(recipe.max_examples, len(train.texts_a))
    steps = max(1, math.ceil(math.ceil(n / recipe.batch_size) * recipe.epochs))

    def work(progress):
        if todo:
            plan = JobPlan([(f"fine-tuning {base_name(bases[i])}", "fine-tuning", steps) for i in todo])

            def cb(stage, done, total, overall=(0, 1), **info):
                plan.report(progress, overall[0], stage, done, total, **info)

            finetune_bases([bases[i] for i in todo], task, [finals[i] for i in todo], head_seed=head_seed,
                           seed=seed, recipe=recipe, glue_task=glue_task, device=device, progress=cb)
            plan.finish()
        records = [json.loads((t / "permerge.json").read_text()) for t in targets]
        return {"pair": tuple(str(t) for t in targets), "task": str(task), "records": records,
                "reused": len(todo) < len(targets)}
    return work
