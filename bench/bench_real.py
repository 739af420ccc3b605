"""A MultiBERTs-size pair on the CPU: time to the first point, to the complete curve, and peak memory.

Builds two random BertForMaskedLM checkpoints in the published MultiBERTs configuration (bert-base:
12 layers, hidden 768, 12 heads, intermediate 3072, vocabulary 30522, 512 positions) with a
WordPiece ``vocab.txt`` of 30522 entries (the bundled family's vocabulary, padded with ``[unusedN]``
entries), written once to a folder outside the repository, then runs the dashboard's job
(``permerge.work.pair_work``: statistics, assignments, the vanilla curve and the aligned curve) in a
child process for each of the chosen settings and reports

* time to the first point of a curve, and to the first complete curve (seconds from the start of
  the child, loading included),
* the whole job's time, and the estimate ``permerge.estimate`` gave before it started,
* the child's peak resident memory, as the child reads it itself (``VmHWM`` in ``/proc/self/status``:
  ``ru_maxrss`` would keep the size of the process it was forked from across ``exec``).

    python bench/bench_real.py                       # default and quick settings, pair in /tmp/permerge-mb
    python bench/bench_real.py --settings quick --root /tmp/mb
    python bench/bench_real.py --command align       # `permerge align` and `interpolate` with their defaults

Each setting runs in its own fresh child process, so the peak of one does not hide another's.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MULTIBERTS = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                  intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2, hidden_act="gelu",
                  hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, layer_norm_eps=1e-12,
                  initializer_range=0.02, pad_token_id=0)
ZOO = ROOT / "permerge" / "zoo"


def write_vocab(folder: Path, size: int = 30522) -> Path:
    """A WordPiece vocab.txt of ``size`` entries: the bundled family's vocabulary (so its text
    tokenises as it does there), then ``[unusedN]`` entries up to the published size."""
    tok = json.loads((ZOO / "checkpoints" / "mlm-seed1" / "tokenizer.json").read_text())
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    words = [w for w, _ in vocab]
    words += [f"[unused{i}]" for i in range(size - len(words))]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "vocab.txt"
    path.write_text("\n".join(words) + "\n")
    return path


def build_pair(root: Path, seeds=(0, 1)) -> tuple[Path, Path]:
    """Two random MultiBERTs-size checkpoints under ``root`` (``a``, ``b``); reused when present."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    out = []
    for name, seed in zip(("a", "b"), seeds):
        folder = root / name
        out.append(folder)
        if (folder / "model.safetensors").exists() and (folder / "tokenizer_config.json").exists():
            continue
        torch.manual_seed(seed)
        model = BertForMaskedLM(BertConfig(**MULTIBERTS)).eval()
        model.save_pretrained(str(folder))
        vocab = write_vocab(folder)
        BertTokenizer(vocab=str(vocab), do_lower_case=True, model_max_length=512).save_pretrained(str(folder))
        del model
    return out[0], out[1]


# --- one measured job, in a child process ---------------------------------------------------------------

def peak_rss() -> int:
    """This process's own peak resident memory in bytes (``VmHWM``), which, unlike ``ru_maxrss``, starts
    afresh at ``exec``."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # not Linux


def child(spec: dict) -> dict:
    """Run the dashboard's job (``work.pair_work``) with ``spec``'s settings in this process; times
    from the start of the process (imports, loading included)."""
    t0 = spec["t0"]
    from permerge.align import AlignOptions
    from permerge.cache import ResultCache
    from permerge.estimate import estimate, sizes_of
    from permerge.pipeline import Job
    from permerge.study import PipelineRegistry
    from permerge.work import pair_work

    options = AlignOptions()  # the dashboard's defaults: FF + Head-Perm, residual Identity
    t_est = time.time()
    est = estimate(sizes_of(spec["a"]), tokens=spec["tokens"], lambdas=spec["lambdas"], eval_blocks=spec["eval_blocks"])
    est_s = time.time() - t_est
    job = Job(spec["a"], spec["b"], str(ZOO / "data" / "align.txt"), tokens=spec["tokens"],
              eval_data=str(ZOO / "data" / "eval.txt"), eval_blocks=spec["eval_blocks"], device="cpu")
    events: dict = {}
    peaks: dict = {}

    def progress(stage, done, total, **info):
        now = time.time() - start
        name = (info.get("job") or {}).get("name", stage)
        peaks[name] = peak_rss()
        if stage == "interpolation" and done >= 1:
            events.setdefault("first_point_s", now)
            if done == total:
                events.setdefault("first_curve_s", now)

    start = time.time()
    res = pair_work(PipelineRegistry(ResultCache(spec["cache"])), job, options, spec["lambdas"])(progress)
    return {**events, "job_s": time.time() - start, "startup_s": start - t0, "estimate_s": est_s,
            "peak_rss": peak_rss(), "peak_rss_by_stage": peaks,
            "estimate": {"seconds": est.seconds, "first_curve_s": est.first_curve_s, "first_point_s": est.first_point_s,
                         "peak_bytes": est.peak_bytes, "peak_stage": est.peak_stage, "stages": est.stages,
                         "memory": est.memory},
            "tokens": res["tokens"], "barrier_vanilla": res["vanilla"].barrier, "barrier_aligned": res["aligned"].barrier,
            "check": {k: res["check"][k] for k in ("max_rel_logit_error", "equivalent")}}


def run_child(argv: list[str], timeout: float) -> tuple[int, str, int]:
    """Run ``argv`` in a wrapper process that reports its child's peak RSS (RUSAGE_CHILDREN), so that
    each measurement has a process of its own: (exit status, stdout, peak bytes)."""
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE); "
               "sys.stdout.write(r.stdout.decode()); "
               "print('PEAK', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024); sys.exit(r.returncode)")
    p = subprocess.run([sys.executable, "-c", wrapper, *argv], stdout=subprocess.PIPE, timeout=timeout,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    out = p.stdout.decode()
    peak = int(next(line.split()[1] for line in out.splitlines() if line.startswith("PEAK")))
    return p.returncode, out, peak


def settings_for(name: str, a: Path) -> dict:
    if name == "default":  # the Pick page's defaults
        return {"tokens": 16384, "lambdas": 21, "eval_blocks": 64}
    from permerge.estimate import quick_settings, sizes_of

    q = quick_settings(sizes_of(str(a)))
    return {k: q[k] for k in ("tokens", "lambdas", "eval_blocks")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="/tmp/permerge-mb", help="where the pair is written (once)")
    ap.add_argument("--settings", default="quick,default", help="comma-separated: quick, default")
    ap.add_argument("--command", action="store_true",
                    help="also `permerge align` and `permerge interpolate` on the bundled alignment text, with "
                         "their defaults and --align-args / --interpolate-args")
    ap.add_argument("--align-args", default="", help="extra options of `permerge align` (default: none)")
    ap.add_argument("--interpolate-args", default="--tokens 4096 --lambdas 3 --eval-blocks 8",
                    help="extra options of `permerge interpolate`")
    ap.add_argument("--lambdas", type=int, default=None,
                    help="λ points instead of the settings' own: a shorter run with the same peak memory and the same "
                         "time to the first point (the complete curve then has fewer points)")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    import torch

    root = Path(args.root)
    a, b = build_pair(root)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], stdout=subprocess.PIPE,
                            text=True).stdout.strip()
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, commit {commit}, "
          f"load average {os.getloadavg()[0]:.1f} at the start", flush=True)
    results = {}
    for name in [x for x in args.settings.split(",") if x]:
        s = settings_for(name, a)
        if args.lambdas:
            s["lambdas"] = args.lambdas
        spec = {**s, "a": str(a), "b": str(b), "cache": str(root / f"cache-{name}-{time.time():.0f}")}
        code, out, peak = run_child([sys.executable, __file__, "--child", json.dumps(spec)], args.timeout)
        r = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
        r.update(settings=s, peak_rss_children=peak)
        peak = r["peak_rss"]  # the child's own VmHWM; the wrapper's figure also counts what it forked from
        results[name] = r
        e = r["estimate"]
        print(f"{name}: {s}: first point {r.get('first_point_s', 0):.0f} s, first complete curve "
              f"{r.get('first_curve_s', 0):.0f} s, whole job {r['job_s']:.0f} s (estimated {e['seconds']:.0f} s, "
              f"first curve {e['first_curve_s']:.0f} s); peak RSS {peak / 1e9:.2f} GB (estimated "
              f"{e['peak_bytes'] / 1e9:.2f} GB, {e['peak_stage']}); load average {os.getloadavg()[0]:.1f}", flush=True)
    if args.command:
        data = str(ZOO / "data" / "align.txt")
        for cmd in ("align", "interpolate"):
            argv = [sys.executable, "-m", "permerge", cmd, str(a), str(b), "--data", data, "--device", "cpu",
                    "--quiet", "--out", str(root / f"out-{cmd}"), "--overwrite",
                    "--cache-dir", str(root / f"cache-{cmd}-{time.time():.0f}")]
            extra = (args.align_args if cmd == "align" else args.interpolate_args).split()
            argv += extra
            t = time.time()
            code, out, peak = run_child(argv, args.timeout)
            results[f"cli-{cmd}"] = {"argv": argv[1:], "seconds": time.time() - t, "peak_rss_children": peak, "exit": code}
            print(f"permerge {cmd} {' '.join(extra)}: exit {code}, {time.time() - t:.0f} s, "
                  f"peak RSS {peak / 1e9:.2f} GB", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        T0 = time.time()
        spec = json.loads(sys.argv[2])
        print(json.dumps(child({**spec, "t0": T0}), default=float), flush=True)
    elif len(sys.argv) > 2 and sys.argv[1] == "--build-only":
        print(*build_pair(Path(sys.argv[2])))
    else:
        main()
