"""``python -m permerge``: align, interpolate, zoo.  The contract is documented in the README;
keep flags stable, other tools script them.

Bad input exits with status 2 and a one-line reason on stderr; outputs are written into a
temporary sibling folder and renamed into place only when complete.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .errors import PermergeError


# --- progress on stderr ---------------------------------------------------------------------

class Progress:
    """One tqdm bar per stage on stderr; silent on non-zero torch.distributed ranks."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bars: dict[str, object] = {}

    def __call__(self, stage, done, total, **info):
        if not self.enabled:
            return
        from tqdm import tqdm

        key = f"{stage}:{info.get('method', '')}"
        bar = self.bars.get(key)
        if bar is None:
            desc = stage if "method" not in info else f"{stage} [{info['method']}]"
            bar = self.bars[key] = tqdm(total=total, desc=desc, file=sys.stderr, leave=True,
                                        dynamic_ncols=True, mininterval=0.5)
        bar.n = done
        if "tokens" in info:
            bar.set_postfix(tokens=info["tokens"], refresh=False)
        bar.refresh()
        if done >= total:
            bar.close()
            self.bars.pop(key, None)


# --- argument parsing -----------------------------------------------------------------------

def _fractions(s: str) -> tuple:
    try:
        vals = tuple(sorted({float(x) for x in s.split(",") if x.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of fractions: {s!r}") from None
    if not vals or any(not 0 < v <= 1 for v in vals):
        raise argparse.ArgumentTypeError("fractions must lie in (0, 1]")
    return vals if 1.0 in vals else vals + (1.0,)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_a", metavar="A", help="reference checkpoint: a local folder or a hub id")
    p.add_argument("model_b", metavar="B", help="checkpoint permuted into A's basis")
    p.add_argument("--data", required=True, help="plain text (file or folder of .txt) or a GLUE-format task folder")
    p.add_argument("--tokens", type=int, default=None, help="bound on the alignment tokens")
    p.add_argument("--eval-data", default=None, help="plain text for MLM evaluation (default: held-out tail of --data)")
    p.add_argument("--eval-blocks", type=int, default=64, help="MLM evaluation blocks of 128 tokens (default 64)")
    p.add_argument("--ff", dest="ff", action="store_true", default=True, help="align feed-forward groups (default)")
    p.add_argument("--no-ff", dest="ff", action="store_false", help="leave feed-forward groups unaligned")
    p.add_argument("--attention", default="head-perm", choices=["vanilla", "monotonic", "ignore-heads", "head-perm"])
    p.add_argument("--residual", default="identity", choices=["identity", "first", "last", "all", "separate"])
    p.add_argument("--pooler", action="store_true", help="also align the pooler (classifiers)")
    p.add_argument("--absolute", action="store_true", help="match on |correlation| instead of signed correlation")
    p.add_argument("--exclude-special", action="store_true", help="leave [CLS]/[SEP] tokens out of the statistics")
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu or cuda")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="statistics-pass forwards: auto (fp16 on a GPU, fp32 on a CPU), fp32, fp16 or bf16")
    p.add_argument("--snapshots", type=_fractions, default=(0.01, 0.03, 0.1, 0.3, 1.0),
                   help="data fractions kept from the single statistics pass (default 0.01,0.03,0.1,0.3,1)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write cache/")
    p.add_argument("--cache-dir", default=None, help="cache folder (default: cache/ or $PERMERGE_CACHE)")
    p.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m permerge", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("align", help="align B to A; write B', the permutations and a report")
    _add_common(p)
    p = sub.add_parser("interpolate", help="loss along lambda for vanilla and the chosen alignment")
    _add_common(p)
    p.add_argument("--lambdas", type=int, default=21, help="points on the lambda grid (default 21)")
    p.add_argument("--exact-pppl", action="store_true",
                   help="score every token masked alone (Salazar et al. 2020): exact but ~100x slower; "
                        "use a small --eval-blocks")
    z = sub.add_parser("zoo", help="the bundled checkpoint family")
    zs = z.add_subparsers(dest="zoo_command", required=True)
    zl = zs.add_parser("list", help="list the bundled checkpoints")
    zl.add_argument("--json", action="store_true")
    zs.add_parser("build", help="rebuild corpus, tokenizer, family and fine-tunes (options: zoo build --help)",
                  add_help=False)
    return ap


# --- commands -------------------------------------------------------------------------------

def _distributed() -> tuple[bool, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return False, 0
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True, dist.get_rank()


def _pipeline(args, distributed: bool, rank: int):
    from .align import AlignOptions
    from .cache import NoCache, ResultCache
    from .pipeline import Job, Pipeline

    if args.tokens is not None and args.tokens <= 0:
        raise PermergeError("--tokens must be positive")
    options = AlignOptions(ff=args.ff, attention=args.attention, residual=args.residual, pooler=args.pooler,
                           absolute=args.absolute)
    job = Job(args.model_a, args.model_b, args.data, tokens=args.tokens, eval_data=args.eval_data,
              eval_blocks=args.eval_blocks, device=args.device, batch_size=args.batch_size,
              fractions=args.snapshots, exclude_special=args.exclude_special,
              exact_pppl=getattr(args, "exact_pppl", False), precision=args.precision)
    device = job.device
    if distributed and device == "auto":
        import torch
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
        job = Job(**{**job.to_dict(), "device": device})
    cache = NoCache() if (args.no_cache or distributed) else ResultCache(args.cache_dir)
    pipe = Pipeline(job, cache=cache, progress=Progress(not args.quiet and rank == 0), distributed=distributed)
    return pipe, options


def _prepare_out(out: str, overwrite: bool) -> Path:
    path = Path(out).expanduser().resolve()
    if path.exists() and not overwrite and (not path.is_dir() or any(path.iterdir())):
        raise PermergeError(f"output folder {out} exists and is not empty (use --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _commit_out(tmp: Path, final: Path) -> None:
    if final.exists():
        old = final.with_name(final.name + f".old-{os.getpid()}")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


def cmd_align(args) -> int:
    from safetensors.torch import save_file

    from .checkpoints import save_model
    from .pipeline import permutations_tensors

    distributed, rank = _distributed()
    final = _prepare_out(args.out, args.overwrite)
    pipe, options = _pipeline(args, distributed, rank)
    t0 = time.perf_counter()
    al = pipe.alignment(options)  # loads, collects statistics, solves the assignments
    if rank != 0:
        return 0
    model_bp = pipe.permuted(options)
    check = pipe.function_check(options, model_bp)
    a, b = pipe.pair
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        save_model(model_bp.cpu(), b.tokenizer, tmp / "model")
        save_file(permutations_tensors(al), str(tmp / "permutations.safetensors"))
        stats = pipe.stats()
        report = {
            "model_a": {**a.summary()}, "model_b": {**b.summary()},
            "options": options.to_dict(), "function_preserving": options.function_preserving,
            "groups": al.summary(), **check,
            "data": {"path": args.data, "tokens": stats.tokens, "sentences": stats.sentences,
                     "snapshot_tokens": {str(k): v for k, v in stats.snapshot_tokens.items()}},
            "device": pipe.device, "timings": {**pipe.timings, "total_s": time.perf_counter() - t0},
        }
        (tmp / "report.json").write_text(json.dumps(report, indent=2, default=float))
        _commit_out(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not options.function_preserving:
        print(f"note: {options.label()} is NOT function-preserving: B' differs from B "
              f"(max |logit error| {check['max_abs_logit_error']:.3g})", file=sys.stderr)
    print(f"wrote {final} (max |logit error| of B' vs B: {check['max_abs_logit_error']:.3g})", file=sys.stderr)
    return 0


def cmd_interpolate(args) -> int:
    from .align import VANILLA
    from .pipeline import barrier_summary, curve_table

    if args.lambdas < 2:
        raise PermergeError("--lambdas must be at least 2")
    distributed, rank = _distributed()
    final = _prepare_out(args.out, args.overwrite)
    pipe, options = _pipeline(args, distributed, rank)
    pipe.stats()
    if rank != 0:
        return 0
    results = [pipe.curve(VANILLA, args.lambdas)]
    if options != VANILLA:
        results.append(pipe.curve(options, args.lambdas))
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        curve_table(results).to_csv(tmp / "curve.csv", index=False)
        (tmp / "barrier.json").write_text(json.dumps(barrier_summary(results), indent=2, default=float))
        _commit_out(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for r in results:
        print(f"{r.method:>40}: barrier {r.barrier:.4f} at lambda {r.barrier_lambda:.2f}", file=sys.stderr)
    print(f"wrote {final}", file=sys.stderr)
    return 0


def cmd_zoo(args) -> int:
    from . import zoo

    if args.zoo_command == "list":
        entries = zoo.list_checkpoints()
        if args.json:
            print(json.dumps(entries, indent=2, default=float))
        else:
            for e in entries:
                metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                    for k, v in (e.get("metrics") or {}).items())
                print(f"{e['name']:<24} {e['kind']:<11} {str(e.get('task') or ''):<12} {metrics}")
        return 0
    from .zoo import build

    return build.main(args.rest) or 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["zoo", "build"]:  # the build recipe parses its own options
        args = argparse.Namespace(command="zoo", zoo_command="build", rest=argv[2:])
    else:
        args = build_parser().parse_args(argv)
    try:
        if args.command == "align":
            return cmd_align(args)
        if args.command == "interpolate":
            return cmd_interpolate(args)
        return cmd_zoo(args)
    except PermergeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130
