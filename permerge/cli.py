"""``permerge`` (or ``python -m permerge``): align, interpolate, finetune, zoo, dashboard.
The contract is documented in the README; keep flags stable, other tools script them.

Bad input exits with status 2 and a one-line reason on stderr; outputs are written into a
temporary sibling folder and renamed into place only when complete.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

from .errors import PermergeError, PermergeWarning


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

    def close(self) -> None:
        """End the open bars' lines, so that a message printed next starts on its own line."""
        for bar in list(self.bars.values()):
            bar.close()
        self.bars.clear()


DEFAULT_SNAPSHOTS = (1.0,)  # data fractions kept from the statistics pass (the whole data only)

def _plain(message) -> str:
    """A message as printable text: control characters from user input (ANSI colour codes, a
    carriage return, a newline inside a file name) are shown escaped, never interpreted."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(message))


# --- argument parsing -----------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """Bad options end in one line on stderr (``error: ...``) and exit status 2, like every
    other input error (argparse's default also prints the usage)."""

    def error(self, message):
        self.exit(2, f"error: {_plain(message)} (see {self.prog} --help)\n")


def _int_at_least(low: int, what: str):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {s!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {v}")
        return v
    parse.__name__ = what  # argparse names the type in some messages
    return parse


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
    p.add_argument("--data", default=None,
                   help="plain text (file or folder of .txt) or a GLUE-format task folder (weight matching: optional)")
    p.add_argument("--matcher", default="activation", choices=["activation", "weight"],
                   help="activation: correlations of features over --data (default); weight: the weights alone")
    p.add_argument("--tokens", type=_int_at_least(1, "--tokens"), default=None, help="bound on the alignment tokens")
    p.add_argument("--glue-task", default=None, metavar="NAME",
                   help="the GLUE task a task folder holds, for its metric beside the loss (default: recognised "
                        "by the folder's name)")
    p.add_argument("--eval-data", default=None,
                   help="evaluation data: plain text, or a task folder for classifiers (default: held-out tail of --data)")
    p.add_argument("--eval-blocks", type=_int_at_least(1, "--eval-blocks"), default=64,
                   help="evaluation blocks of 128 tokens: masked-LM or causal-LM loss, by the family (default 64)")
    p.add_argument("--ff", dest="ff", action="store_true", default=True, help="align feed-forward groups (default)")
    p.add_argument("--no-ff", dest="ff", action="store_false", help="leave feed-forward groups unaligned")
    p.add_argument("--attention", default="head-perm", choices=["vanilla", "monotonic", "ignore-heads", "head-perm"])
    p.add_argument("--residual", default="identity", choices=["identity", "first", "last", "all", "separate"])
    p.add_argument("--pooler", action="store_true",
                   help="also align the pooler (classifiers whose family has one; an error for other pairs)")
    p.add_argument("--absolute", action="store_true", help="match on |correlation| instead of signed correlation")
    p.add_argument("--exclude-special", action="store_true", help="leave the tokenizer's special tokens out of the statistics")
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=_int_at_least(1, "--batch-size"), default=16)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="forwards of the statistics pass and of the evaluation along lambda: auto (fp16 on a GPU, "
                        "fp32 on a CPU), fp32, fp16 or bf16")
    p.add_argument("--snapshots", type=_fractions, default=DEFAULT_SNAPSHOTS,
                   help="data fractions kept from the single statistics pass, e.g. 0.01,0.03,0.1,0.3,1 "
                        "(default 1: the whole data only; each other fraction holds a copy of the statistics)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write cache/")
    p.add_argument("--cache-dir", default=None, help="cache folder (default: cache/ or $PERMERGE_CACHE)")
    p.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--allow-downloads", action="store_true",
                   help="fetch hub ids (NAME or NAME@REVISION) missing from the local Hugging Face cache "
                        "(as PERMERGE_ALLOW_DOWNLOADS=1 does)")
    _add_zoo(p)


def _add_zoo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--zoo", metavar="DIR", default=None,
                   help="folder of the bundled checkpoints and data (checkpoints/, data/), which zoo:NAME "
                        "arguments name (default: $PERMERGE_ZOO, else permerge/zoo beside the code)")


def _prog() -> str:
    return "permerge" if Path(sys.argv[0]).name == "permerge" else "python -m permerge"


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog=_prog(), description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("align", help="align B to A; write B', the permutations and a report")
    _add_common(p)
    p = sub.add_parser("interpolate", help="loss along lambda for vanilla and the chosen alignment")
    _add_common(p)
    p.add_argument("--lambdas", type=_int_at_least(2, "--lambdas"), default=21, help="points on the lambda grid (default 21)")
    p.add_argument("--exact-pppl", action="store_true",
                   help="score every token masked alone (Salazar et al. 2020): exact but ~100x slower; "
                        "use a small --eval-blocks")
    from .tune import add_parser as add_finetune

    add_finetune(sub, _int_at_least, _add_zoo)
    z = sub.add_parser("zoo", help="the bundled checkpoint family")
    zs = z.add_subparsers(dest="zoo_command", required=True)
    zl = zs.add_parser("list", help="list the bundled checkpoints")
    zl.add_argument("--json", action="store_true")
    _add_zoo(zl)
    zs.add_parser("build", help="rebuild corpus, tokenizer, family and fine-tunes (options: zoo build --help)",
                  add_help=False)
    from .catalogue import add_hub_parser

    add_hub_parser(sub)
    d = sub.add_parser("dashboard", help="start the dashboard on the bundled checkpoints (needs the dashboard extra)")
    d.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    d.add_argument("--port", type=_int_at_least(1, "--port"), default=8501, help="port (default 8501)")
    d.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="another host name the browser may use to reach the dashboard (repeatable)")
    _add_zoo(d)
    return ap


# --- commands -------------------------------------------------------------------------------

_OWN_GROUP = []  # the process group this process started (torch.distributed), ended by _end_distributed


def _end_distributed(ok: bool) -> None:
    """Tear down the process group this process started while Python is fully alive: after a
    barrier when the command succeeded (no rank closes its connections while another still sends),
    at once otherwise.  Left to the interpreter's exit, gloo's threads can be destroyed while still
    joinable, and the process aborts ("terminate called without an active exception", SIGABRT)."""
    if not _OWN_GROUP:
        return
    import torch.distributed as dist

    _OWN_GROUP.clear()
    if dist.is_initialized():
        if ok:
            with contextlib.suppress(Exception):
                dist.barrier()
        dist.destroy_process_group()


def _distributed() -> tuple[bool, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return False, 0
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        _OWN_GROUP.append(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True, dist.get_rank()


def _check_inputs(args) -> None:
    """What can be checked before any model loads: the configs, the device, the data paths."""
    from .checkpoints import read_config, validate_pair
    from .data import check_data_path, is_task_folder, text_files
    from .pipeline import resolve_device

    _check_matcher(args)
    if args.glue_task is not None:
        from .glue import lookup

        lookup(args.glue_task)
    validate_pair(read_config(args.model_a), read_config(args.model_b))
    if args.pooler:
        _check_pooler(args.model_a)
    resolve_device(args.device)
    for path, what in ((args.data, "--data"), (args.eval_data, "--eval-data")):
        if path:
            check_data_path(path, what)
            if not is_task_folder(path):
                text_files(path)  # every .txt of a folder: regular files only


def _check_matcher(args) -> None:
    """Which options need data, and which only mean something for activation matching."""
    if args.matcher == "activation":
        if not args.data:
            raise PermergeError("--data is required for activation matching (--matcher weight needs none)")
        return
    for flag, given in (("--absolute", args.absolute), ("--exclude-special", args.exclude_special),
                        ("--tokens", args.tokens is not None),
                        ("--snapshots", tuple(getattr(args, "snapshots", DEFAULT_SNAPSHOTS)) != DEFAULT_SNAPSHOTS)):
        if given:
            raise PermergeError(f"{flag} concerns the activation statistics, which --matcher weight does not "
                                f"collect; leave {flag} out")
    if args.command == "interpolate" and not (args.data or args.eval_data):
        raise PermergeError("interpolate evaluates on text: give --eval-data (or --data) with --matcher weight")


def _check_pooler(source: str) -> None:
    """--pooler needs a pooler group in the pair's spec (built from the config alone)."""
    from .arch import FAMILIES
    from .checkpoints import config_spec

    spec = config_spec(source)
    if not spec.groups_of("pooler"):
        have = ", ".join(f.name for f in FAMILIES if f.pooler is not None)
        what = "classifier" if spec.head == "classifier" else f"{spec.head} model"
        raise PermergeError(f"--pooler: this {spec.family} {what} has no pooler to align "
                            f"(only {have} classifiers have one); leave --pooler out")


def _pipeline(args, distributed: bool, rank: int):
    from .align import AlignOptions
    from .cache import NoCache, ResultCache
    from .pipeline import Job, Pipeline

    options = AlignOptions(ff=args.ff, attention=args.attention, residual=args.residual, pooler=args.pooler,
                           absolute=args.absolute, matcher=args.matcher)
    job = Job(args.model_a, args.model_b, args.data, tokens=args.tokens, eval_data=args.eval_data,
              eval_blocks=args.eval_blocks, device=args.device, batch_size=args.batch_size,
              fractions=args.snapshots, exclude_special=args.exclude_special,
              exact_pppl=getattr(args, "exact_pppl", False), precision=args.precision, glue_task=args.glue_task)
    device = job.device
    if distributed and device == "auto":
        import torch
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
        job = Job(**{**job.to_dict(), "device": device})
    cache = args.cache = NoCache() if (args.no_cache or distributed) else ResultCache(args.cache_dir)
    args.progress = Progress(not args.quiet and rank == 0)
    pipe = Pipeline(job, cache=cache, progress=args.progress, distributed=distributed)
    return pipe, options


def _weights_bytes(source: str) -> int:
    from .checkpoints import _is_local

    if not _is_local(source):
        from .hub import weights_bytes

        return weights_bytes(source)
    p = Path(source).expanduser()
    if not p.is_dir():
        return 0
    return sum(f.stat().st_size for f in p.iterdir() if f.is_file() and f.suffix in (".safetensors", ".bin"))


def _prepare_out(args, need_bytes: int = 0) -> Path:
    """Refuse an unsafe or unwritable --out before any compute (see outputs.check_out)."""
    from .cache import default_dir
    from .outputs import check_out

    inputs = {"checkpoint A": args.model_a, "checkpoint B": args.model_b, "--data": args.data,
              "--eval-data": args.eval_data}
    cache_dir = None if args.no_cache else (args.cache_dir or default_dir())
    return check_out(args.out, args.overwrite, inputs=inputs, cache_dir=cache_dir, need_bytes=need_bytes)


def _fetch_hub(args) -> None:
    """Hub checkpoints, when downloads are allowed: the files, their size and cached state, then
    the download with a bar (bytes, speed, time left) on stderr."""
    from tqdm import tqdm

    from .checkpoints import _is_local
    from .hub import prefetch

    class Bar(tqdm):
        def __init__(self, *a, **kw):
            kw.update(file=sys.stderr, dynamic_ncols=True, mininterval=0.5, unit="B", unit_scale=True)
            super().__init__(*a, **kw)

    say = None if args.quiet else (lambda line: print(f"download: {_plain(line)}", file=sys.stderr, flush=True))
    for source in dict.fromkeys((args.model_a, args.model_b)):
        if not _is_local(source):
            prefetch(source, say=say, bar=None if args.quiet else Bar)


def _tokenizer_note(pipe) -> None:
    from .errors import warn

    a, b = pipe.pair
    if a.tokenizer is not None and b.tokenizer is None:
        warn("checkpoint B has no tokenizer files; using checkpoint A's tokenizer (also saved with B')")
    elif b.tokenizer is not None and a.tokenizer is None:
        warn("checkpoint A has no tokenizer files; using checkpoint B's tokenizer")


def cmd_align(args) -> int:
    from safetensors.torch import save_file

    from .checkpoints import save_model
    from .outputs import staged
    from .pipeline import permutations_tensors

    distributed, rank = _distributed()
    _check_inputs(args)
    # B' is written in float32: up to twice the stored size of B's weights
    final = _prepare_out(args, need_bytes=2 * _weights_bytes(args.model_b) + 2**20)
    _fetch_hub(args)
    pipe, options = _pipeline(args, distributed, rank)
    t0 = time.perf_counter()
    if rank == 0:
        _tokenizer_note(pipe)
    al = pipe.alignment(options)  # loads, collects statistics, solves the assignments
    pipe.release_stats()  # the matrices are not needed beyond the assignments (memory: see README)
    if rank != 0:
        return 0
    model_bp = pipe.permuted(options)
    check = pipe.function_check(options, model_bp)
    a, b = pipe.pair
    with staged(final, args.overwrite) as tmp:
        save_model(model_bp.cpu(), pipe.tokenizer, tmp / "model")
        save_file(permutations_tensors(al), str(tmp / "permutations.safetensors"))
        stats = pipe.stats_info() if options.matcher == "activation" else None
        report = {
            "model_a": {**a.summary()}, "model_b": {**b.summary()},
            "options": options.to_dict(), "function_preserving": options.function_preserving,
            "groups": al.summary(), **check, **_kept_in_place(pipe.spec),
            "data": None if stats is None else {
                "path": args.data, "tokens": stats["tokens"], "sentences": stats["sentences"],
                "snapshot_tokens": {str(k): v for k, v in stats["snapshot_tokens"].items()}},
            **({"weight_matching": _trace_report(al.trace)} if al.trace is not None else {}),
            "device": pipe.device, "timings": {**pipe.timings, "total_s": time.perf_counter() - t0},
        }
        (tmp / "report.json").write_text(json.dumps(report, indent=2, default=float))
    if not options.function_preserving:
        print(f"note: {options.label()} is NOT function-preserving: B' differs from B "
              f"(max |logit error| {check['max_abs_logit_error']:.3g})", file=sys.stderr)
    print(f"wrote {final} (max |logit error| of B' vs B: {check['max_abs_logit_error']:.3g})", file=sys.stderr)
    return 0


def _kept_in_place(spec) -> dict:
    from .fixed import describe

    text = describe(spec)
    return {"kept_in_place": text} if text else {}


def _trace_report(trace) -> dict:
    return {"sweeps": trace.sweeps, "converged": trace.converged, "objective_per_sweep": trace.objective}


def cmd_interpolate(args) -> int:
    from .align import VANILLA
    from .outputs import staged
    from .study import barrier_summary, curve_table

    distributed, rank = _distributed()
    _check_inputs(args)
    final = _prepare_out(args, need_bytes=2**20)
    _fetch_hub(args)
    pipe, options = _pipeline(args, distributed, rank)
    if rank == 0:
        _tokenizer_note(pipe)
    if options.matcher == "activation":
        pipe.stats()  # every rank takes part in the statistics pass
    if rank != 0:
        return 0
    if options != VANILLA:
        pipe.alignment(options)
    pipe.release_stats()  # the curves need the permutations, not the statistics' matrices
    results = [pipe.curve(VANILLA, args.lambdas)]
    if options != VANILLA:
        results.append(pipe.curve(options, args.lambdas))
    with staged(final, args.overwrite) as tmp:
        curve_table(results).to_csv(tmp / "curve.csv", index=False)
        (tmp / "barrier.json").write_text(json.dumps(barrier_summary(results), indent=2, default=float))
    for r in results:
        print(f"{r.method:>40}: barrier {r.barrier:.4f} at lambda {r.barrier_lambda:.2f}", file=sys.stderr)
    print(f"wrote {final}", file=sys.stderr)
    return 0


def cmd_zoo(args) -> int:
    from . import zoo

    if args.zoo_command == "list":
        zoo.require()
        entries = zoo.list_checkpoints()
        if args.json:
            print(json.dumps(entries, indent=2, default=float))
        else:
            print(f"{'name':<24} {'kind':<11} {'task':<12} metrics")
            for e in entries:
                metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                    for k, v in (e.get("metrics") or {}).items())
                print(f"{e['name']:<24} {e['kind']:<11} {str(e.get('task') or ''):<12} {metrics}")
        return 0
    from .zoo import build

    return build.main(args.rest) or 0


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, CI cancellation, ``docker stop``): unwinds like Ctrl-C, so partial
    outputs are removed and cache locks released."""


def _show_warning(message, category, filename, lineno, file=None, line=None, _default=warnings.showwarning):
    if issubclass(category, PermergeWarning):
        print(f"warning: {_plain(message)}", file=sys.stderr, flush=True)
    else:
        _default(message, category, filename, lineno, file, line)


def _raise_terminated(signum, frame):
    raise Terminated()


def _use_zoo(args) -> None:
    """--zoo DIR, and zoo:NAME in place of a checkpoint or data path (see permerge.zoo.resolve)."""
    from . import zoo

    if getattr(args, "zoo", None):
        zoo.use(args.zoo, "--zoo")
    for attr in ("model_a", "model_b", "data", "eval_data"):
        value = getattr(args, attr, None)
        if isinstance(value, str) and value.startswith(zoo.PREFIX):
            setattr(args, attr, zoo.resolve(value))


def cmd_dashboard(args) -> int:
    from . import serve

    return serve.run(args.host, args.port, args.allowed_host)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["zoo", "build"]:  # the build recipe parses its own options
        args = argparse.Namespace(command="zoo", zoo_command="build", rest=argv[2:])
    else:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # --help (0) or a bad option (2, one line already printed)
            return e.code if isinstance(e.code, int) else 2
    on_main = threading.current_thread() is threading.main_thread()
    allowed = None
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if on_main else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", PermergeWarning)
            warnings.showwarning = _show_warning
            _use_zoo(args)
            if getattr(args, "allow_downloads", False):
                from .hub import allow_downloads

                allowed = allow_downloads(True)  # this command only (reset below)
            if args.command == "hub":
                from .catalogue import cmd_hub

                return cmd_hub(args)
            if args.command == "dashboard":
                return cmd_dashboard(args)
            if args.command == "align":
                code = cmd_align(args)
                _end_distributed(ok=code == 0)
                return code
            if args.command == "interpolate":
                code = cmd_interpolate(args)
                _end_distributed(ok=code == 0)
                return code
            if args.command == "finetune":
                from .tune import cmd_finetune

                args.progress = Progress(not args.quiet)
                return cmd_finetune(args, args.progress)
            return cmd_zoo(args)
    except PermergeError as e:
        if getattr(args, "progress", None) is not None:
            args.progress.close()  # the error gets its own line, not the end of a progress bar's
        print(f"error: {_plain(e)}", file=sys.stderr)
        return 2
    except Terminated:
        if getattr(args, "progress", None) is not None:
            args.progress.close()
        print("error: terminated; nothing was written", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        if getattr(args, "progress", None) is not None:
            args.progress.close()
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130
    finally:
        _end_distributed(ok=False)  # an error or an interruption: no barrier (the other ranks may be elsewhere)
        if allowed is not None:
            from .hub import _allowed

            _allowed.reset(allowed)
        if getattr(args, "cache", None) is not None:
            args.cache.close()  # checkpoints sqlite's write-ahead log into cache.db
        if on_main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
