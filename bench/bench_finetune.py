"""Fine-tuning cost of a bert-base-size classifier: seconds per 1,000 training examples.

Runs ``permerge.training.finetune`` itself (tokenisation, forward, backward, AdamW, clipping) on
a randomly initialised bert-base MLM (BertConfig's defaults: 12 layers, 768 wide, 12 heads, FF
3072, vocabulary 30,522) saved to a temporary folder with a WordPiece vocabulary of made-up words,
and a sentence-pair task whose examples have about ``--tokens`` tokens each ([CLS] a [SEP] b
[SEP]; MRPC's pairs average about 50 BERT tokens).  The first ``--warmup`` steps are not timed;
the rest give wall seconds and process CPU seconds per 1,000 examples.

    python bench/bench_finetune.py                       # 64 tokens per example, batch 32, 3 timed steps
    python bench/bench_finetune.py --tokens 128 --steps 2
"""
from __future__ import annotations

import argparse
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from permerge import training  # noqa: E402


def random_bert_base(folder: Path) -> None:
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    cfg = BertConfig()
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [f"w{i}" for i in range(cfg.vocab_size - len(vocab))]
    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(str(folder))
    torch.manual_seed(0)
    BertForMaskedLM(cfg).save_pretrained(str(folder))


def pair_task(folder: Path, n: int, tokens: int, seed: int = 0) -> None:
    """MRPC's layout; each sentence about (tokens - 3) / 2 made-up words (one token each), +-25%."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    half = max(1, (tokens - 3) // 2)
    head = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"

    def sent():
        k = max(1, round(half * rng.uniform(0.75, 1.25)))
        return " ".join(f"w{rng.randrange(30000)}" for _ in range(k))

    for name, rows in (("train.tsv", n), ("dev.tsv", 8)):
        (folder / name).write_text(head + "".join(f"{rng.randrange(2)}\t{i}\t{i}\t{sent()}\t{sent()}\n"
                                                  for i in range(rows)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=64, help="tokens per example, about (default 64)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed first steps (default 1)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n = (args.steps + args.warmup) * args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        base, task = Path(tmp) / "bert-base-random", Path(tmp) / "MRPC"
        t = time.time()
        random_bert_base(base)
        pair_task(task, n, args.tokens)
        print(f"random bert-base saved in {time.time() - t:.0f} s", flush=True)
        marks = []

        def progress(stage, done, total, **info):
            marks.append((done, time.time(), time.process_time()))
            print(f"  step {done}/{total}", flush=True)

        recipe = training.FinetuneRecipe(epochs=1, batch_size=args.batch_size)
        res = training.finetune(str(base), task, recipe=recipe, device="cpu", progress=progress)
    (_, w0, c0), (_, w1, c1) = marks[args.warmup - 1], marks[-1]
    examples = args.steps * args.batch_size
    tokens = res.meta["train_tokens"] / res.meta["train_examples"]
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"bert-base classifier, {tokens:.1f} tokens per example (padded per batch), batch {args.batch_size}: "
          f"{examples} timed examples in {w1 - w0:.1f} s wall, {c1 - c0:.1f} s process CPU")
    print(f"per 1,000 training examples: {1000 * (w1 - w0) / examples:.0f} s wall, "
          f"{1000 * (c1 - c0) / examples:.0f} s process CPU")


if __name__ == "__main__":
    main()
