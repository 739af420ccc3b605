"""Statistics-pass throughput against its floor, and assignment time per group.

The floor is the two forward passes alone (model A's then model B's encoder on the same batches,
no hooks; the statistics pass runs the encoders only, as every capture point lies there),
measured in the same run; the figure is the ratio  statistics pass / floor  (1.0 = free).

    python bench/bench_stats.py                       # the bundled default pair, if present
    python bench/bench_stats.py --random bert-base    # two random bert-base-sized models
    python bench/bench_stats.py A B --data PATH --tokens 65536 --device cuda
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from permerge import data as D  # noqa: E402
from permerge.align import AlignOptions, compute_alignment  # noqa: E402
from permerge.arch import spec_for  # noqa: E402
from permerge.pipeline import resolve_device  # noqa: E402
from permerge.stats import _autocast, collect_stats, resolve_precision  # noqa: E402

SIZES = {"bert-base": dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072, num_hidden_layers=12),
         "small": dict(hidden_size=256, num_attention_heads=4, intermediate_size=1024, num_hidden_layers=4)}


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


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def forward_floor(a, b, batches, device, precision="fp32"):
    sync(device)
    t, c = time.perf_counter(), time.process_time()
    for x in batches:
        x = {k: v.to(device) for k, v in x.items() if k != "special_tokens_mask"}
        with _autocast(torch.device(device).type, precision):
            a.base_model(**x)  # the encoders alone: the statistics pass needs no head either
            b.base_model(**x)
    sync(device)
    return time.perf_counter() - t, time.process_time() - c


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
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)

    if args.random or not args.model_a:
        if not args.random:
            from permerge import zoo
            try:
                args.model_a, args.model_b = map(str, zoo.default_pair())
                args.data = args.data or str(zoo.align_text())
            except Exception:
                args.random = "small"
    if args.random:
        a, b = random_pair(args.random)
        batches = random_batches(args.tokens, args.batch_size, a.config.vocab_size)
        what = f"random {args.random}"
    else:
        from permerge.checkpoints import load_pair

        ca, cb = load_pair(args.model_a, args.model_b)
        a, b = ca.model, cb.model
        tok = cb.tokenizer or ca.tokenizer
        blocks = D.text_blocks(tok, D.read_text(args.data))
        batches = D.limit_tokens(D.block_batches(blocks, args.batch_size), args.tokens)
        what = f"{args.model_a} vs {args.model_b}"
    a.to(device)
    b.to(device)
    spec = spec_for(a)
    tokens = sum(int(x["attention_mask"].sum()) for x in batches)

    forward_floor(a, b, batches[:1], device, precision)  # warm-up
    floors, passes = [], []
    for _ in range(args.repeats):  # interleave so drift hits both alike
        floors.append(forward_floor(a, b, batches, device, precision))
        sync(device)
        t, c = time.perf_counter(), time.process_time()
        res = collect_stats(a, b, spec, batches, device=device, fractions=(1.0,), precision=precision)
        sync(device)
        passes.append((time.perf_counter() - t, time.process_time() - c))
    floor, stat = min(w for w, _ in floors), min(w for w, _ in passes)
    floor_cpu, stat_cpu = min(c for _, c in floors), min(c for _, c in passes)

    print(f"# statistics pass vs two forward passes ({what}; {tokens} tokens; device {device}; "
          f"torch {torch.__version__}; {platform.processor() or platform.machine()}; "
          f"threads {torch.get_num_threads()}; precision {precision}; best of {args.repeats})")
    # process CPU time: on a CPU run with one thread it is the work done, whatever else shares the cores
    print("| measure | seconds | tokens/s | ratio to floor | CPU seconds | CPU-time ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(f"| two forward passes (floor) | {floor:.3f} | {tokens / floor:,.0f} | 1.00 | {floor_cpu:.3f} | 1.00 |")
    print(f"| statistics pass ({len(spec.groups)} capture points) | {stat:.3f} | {tokens / stat:,.0f} | "
          f"{stat / floor:.2f} | {stat_cpu:.3f} | {stat_cpu / floor_cpu:.2f} |")

    print("\n# assignment time per group (Head-Perm attention, All residual)")
    print("| group | width | seconds |")
    print("| --- | --- | --- |")
    timings = {}

    def progress(stage, done, total, group=None, **_):
        timings[group] = time.perf_counter()

    t0 = time.perf_counter()
    prev = t0
    compute_alignment(spec, res.points, AlignOptions(attention="head-perm", residual="all"), progress=progress)
    for g, t in timings.items():
        print(f"| {g} | {spec.groups[g].size} | {t - prev:.3f} |")
        prev = t
    print(f"| all groups (incl. correlation matrices) | | {time.perf_counter() - t0:.3f} |")


if __name__ == "__main__":
    main()
