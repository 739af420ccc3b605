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
          overwrite: bool = False) -> tuple[list[Path], object]:
    """Everything that can be checked before training: the output folders (one per base), and the
    task read once (its train and dev files, their columns and labels).  PermergeError otherwise."""
    from . import data as D
    from .checkpoints import read_config
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
    if pair:
        names = [base_name(b) for b in bases]
        if names[0] == names[1]:
            raise PermergeError(f"both bases are named {names[0]!r}; --pair writes OUT/<name> for each, so "
                                "give bases with different folder names")
        targets = [Path(out).expanduser() / n for n in names]
    else:
        targets = [Path(out).expanduser()]
    inputs = {f"base {i + 1}": b for i, b in enumerate(bases)} | {"--task": task}
    finals = [check_out(t, overwrite, inputs=inputs, need_bytes=2**20) for t in targets]
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
