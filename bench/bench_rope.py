"""CPU time of a pythia-14m-size GPT-NeoX pair (random weights, the published pythia-14m config)
aligned and swept with the dashboard's defaults, through the same work function the run page uses.

The config is pythia-14m's as published on the Hugging Face Hub (6 layers, width 128, 4 heads,
MLP 512, vocabulary 50,304, rotary_pct 0.25, rotary base 10,000, parallel residual, untied output
embedding, GELU, LayerNorm eps 1e-5, 2,048 positions).  Two seeds give two random checkpoints; a
byte-level BPE tokenizer is trained offline on the bundled alignment text (its ids are a subset of
the 50,304 rows).  The defaults are the dashboard's: FF + attention head-perm, residual identity,
16,384 alignment tokens of the bundled alignment text, 21 λ points, 64 evaluation blocks of the
bundled evaluation text, device auto (the CPU here).  Reported: wall time and process CPU time
(all threads) of the whole job (load, statistics, assignments, vanilla and aligned curves, the B'
check), the stage timings, the load average, and the B' check's errors.

    python bench/bench_rope.py [--tokens 16384] [--lambdas 21] [--eval-blocks 64] [--threads N]
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from permerge import work, zoo  # noqa: E402
from permerge.align import AlignOptions  # noqa: E402
from permerge.cache import ResultCache  # noqa: E402
from permerge.pipeline import Job  # noqa: E402
from permerge.study import PipelineRegistry  # noqa: E402

# EleutherAI/pythia-14m config.json (architecture fields)
PYTHIA_14M = dict(hidden_size=128, num_hidden_layers=6, num_attention_heads=4, intermediate_size=512,
                  vocab_size=50304, rotary_pct=0.25, rotary_emb_base=10000, max_position_embeddings=2048,
                  use_parallel_residual=True, tie_word_embeddings=False, hidden_act="gelu", layer_norm_eps=1e-5,
                  attention_bias=True, bos_token_id=0, eos_token_id=0, hidden_dropout=0.0, attention_dropout=0.0)


def build_pair(root: Path) -> tuple[str, str]:
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    lines = zoo.align_text().read_text().splitlines()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=4096, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                                eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    out = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        cfg = transformers.GPTNeoXConfig(**PYTHIA_14M)
        cfg.architectures = ["GPTNeoXForCausalLM"]
        folder = root / f"pythia-14m-random-seed{seed}"
        transformers.GPTNeoXForCausalLM(cfg).save_pretrained(str(folder))
        fast.save_pretrained(str(folder))
        out.append(str(folder))
    return out[0], out[1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--lambdas", type=int, default=21)
    ap.add_argument("--eval-blocks", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    options = AlignOptions(ff=True, attention="head-perm", residual="identity")  # the dashboard's defaults
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        a, b = build_pair(Path(d))
        job = Job(a, b, data=str(zoo.align_text()), eval_data=str(zoo.eval_text()), tokens=args.tokens,
                  eval_blocks=args.eval_blocks, device="auto")
        cache = ResultCache(str(Path(d) / "cache"))
        reg = PipelineRegistry(cache)
        t0, c0 = time.perf_counter(), time.process_time()
        res = work.pair_work(reg, job, options, args.lambdas)(lambda *a, **k: None)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        timings = dict(reg.get(job).timings)
        cache.close()
    load1 = os.getloadavg()
    print(f"# pythia-14m-size GPT-NeoX pair, random weights: {options.label()}, {res['tokens']:,} alignment tokens, "
          f"{args.lambdas} λ points, {args.eval_blocks} evaluation blocks, device {res['device']}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads; load average {load0[0]:.1f} before, {load1[0]:.1f} after")
    print(f"whole job: wall {wall:.1f} s, process CPU {cpu:.1f} s")
    for k, v in timings.items():
        print(f"  {k}: {v:.2f} s")
    van, al = res["vanilla"], res["aligned"]
    print(f"barrier vanilla {van.barrier:.4f}, aligned {al.barrier:.4f}; B' check: float32 rel "
          f"{res['check']['max_rel_logit_error']:.1e}, float64 rel {res['check']['max_rel_logit_error_float64']:.1e} "
          f"(equivalent: {res['check']['equivalent']})")


if __name__ == "__main__":
    main()
