"""The dashboard's quality bars, measured through the same job manager and work functions the
pages use (permerge.work), on the bundled default pair with the dashboard's default settings.

1. first complete result, cold cache: statistics, alignment, the 21-point curves of vanilla and the
   default variant, and the B' check (bar: 60 s on 2 CPU cores);
2. a variant switch with the statistics cached: the time until the progress panel has the first
   curve points to draw (3 points: A, B' and the middle; bar: 3 s) and until the full curve (bar: 15 s);
3. a page drawn from cache: (a) in the running server (the job manager has the result), and (b) in a
   fresh process (a new pipeline reads statistics, alignment and curves from the disk cache; model
   loading included) (bar: 1 s);
4. the idle server: CPU time of `streamlit run app.py` over 20 s with no browser attached, after
   start-up (bar: 2% of a core).

The floor printed beside them is two forward passes over the alignment data, measured in the same
run, so that a reader can tell a slow (or busy) machine from a slow program.

    python bench/bench_dashboard.py [--tokens 16384] [--lambdas 21] [--eval-blocks 64] [--no-idle | --idle-only]
"""
from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from permerge import work, zoo  # noqa: E402
from permerge.align import AlignOptions  # noqa: E402
from permerge.cache import ResultCache  # noqa: E402
from permerge.jobs import JobManager  # noqa: E402
from permerge.pipeline import Job  # noqa: E402
from permerge.study import PipelineRegistry  # noqa: E402


def wait(h, poll=0.02, first_points=None):
    """Wait for a job; with ``first_points`` also return when its progress first carried that many rows."""
    t0 = time.perf_counter()
    t_first = None
    while h.active:
        if first_points and t_first is None:
            snap = h.snapshot()
            rows = snap["info"].get("rows") or []
            if snap["stage"].endswith("interpolation") and len(rows) >= first_points:
                t_first = time.perf_counter() - t0
        time.sleep(poll)
    if h.state != "done":
        raise SystemExit(f"job failed: {h.error}")
    return time.perf_counter() - t0, t_first


def idle_cpu(seconds: float = 20.0, watcher: str | None = None) -> float:
    """Percent of one core used by an idle `streamlit run app.py` (project config) over ``seconds``;
    ``watcher`` overrides the config's fileWatcherType (e.g. "auto", Streamlit's default)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    extra = ["--server.fileWatcherType", watcher] if watcher else []
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), *extra],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.time()
        while time.time() - t0 < 60:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        time.sleep(5.0)  # let start-up settle

        def ticks():
            f = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return int(f[11]) + int(f[12])  # utime + stime

        hz = os.sysconf("SC_CLK_TCK")
        a, t = ticks(), time.time()
        time.sleep(seconds)
        return 100.0 * (ticks() - a) / hz / (time.time() - t)
    finally:
        proc.terminate()
        proc.wait(10)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--lambdas", type=int, default=21)
    ap.add_argument("--eval-blocks", type=int, default=64)  # the dashboard's and the CLI's default
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-idle", action="store_true", help="skip the idle-server measurement")
    ap.add_argument("--idle-only", action="store_true",
                    help="only the idle server, with the project's config and with file watching on")
    args = ap.parse_args(argv)
    if args.idle_only:
        print(f"idle server, % of one core over 20 s: {idle_cpu():.1f} % (fileWatcherType none), "
              f"{idle_cpu(watcher='auto'):.1f} % (fileWatcherType auto); load average {os.getloadavg()[0]:.1f}")
        return
    a, b = zoo.default_pair()
    job = Job(a, b, data=str(zoo.align_text()), eval_data=str(zoo.eval_text()), tokens=args.tokens,
              eval_blocks=args.eval_blocks, device=args.device)
    default = AlignOptions(ff=True, attention="head-perm", residual="identity")
    switched = AlignOptions(ff=True, attention="monotonic", residual="identity")
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        cache = ResultCache(d)
        reg, mgr = PipelineRegistry(cache), JobManager()
        first, _ = wait(mgr.submit("first", work.pair_work(reg, job, default, args.lambdas)))
        switch, switch_first = wait(mgr.submit("switch", work.pair_work(reg, job, switched, args.lambdas)),
                                    first_points=3)

        t0 = time.perf_counter()
        res = mgr.submit("first", work.pair_work(reg, job, default, args.lambdas)).result  # a page in the same server
        page_server = time.perf_counter() - t0
        assert res is not None

        fresh = PipelineRegistry(cache)  # a new server process: models load, results come from the disk cache
        page_fresh, _ = wait(JobManager().submit("page", work.pair_work(fresh, job, default, args.lambdas)))

        pipe = reg.get(job)
        t0 = time.perf_counter()
        with torch.no_grad():
            for x in pipe.prepared.align_batches:
                x = {k: v.to(pipe.device) for k, v in x.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
                pipe.pair[0].model.base_model(**x)
                pipe.pair[1].model.base_model(**x)
        floor = time.perf_counter() - t0
        cache.close()
    idle = None if args.no_idle else idle_cpu()

    cfg = pipe.pair[0].config
    print(f"# dashboard quality bars (bundled {Path(a).name} vs {Path(b).name}: {cfg.num_hidden_layers} layers, "
          f"width {cfg.hidden_size}, {cfg.num_attention_heads} heads; {pipe.stats().tokens} alignment tokens; "
          f"{args.lambdas} lambdas; {args.eval_blocks} evaluation blocks ({res['vanilla'].items} masked tokens); "
          f"device {pipe.device}; {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}; "
          f"{platform.machine()}; load average at start {load[0]:.1f})")
    print("| measure | seconds | bar | ratio to floor |")
    print("| --- | --- | --- | --- |")
    print(f"| floor: two forward passes over the alignment data | {floor:.2f} | | 1.0 |")
    print(f"| first complete result, cold cache | {first:.2f} | 60 | {first / floor:.1f} |")
    print(f"| variant switch: first curve points (A, B', middle) | {switch_first:.2f} | 3 | {switch_first / floor:.1f} |")
    print(f"| variant switch: full curve and check | {switch:.2f} | 15 | {switch / floor:.1f} |")
    print(f"| page from cache, running server | {page_server:.3f} | 1 | |")
    print(f"| page from cache, fresh process (models load) | {page_fresh:.2f} | 1 | {page_fresh / floor:.1f} |")
    if idle is not None:
        print(f"| idle server, % of one core over 20 s | {idle:.1f} % | 2 % | |")
    print(f"barriers: vanilla {res['vanilla'].barrier:.4f} ± {res['vanilla'].barrier_se:.4f}, "
          f"{res['aligned'].method} {res['aligned'].barrier:.4f} ± {res['aligned'].barrier_se:.4f}")


if __name__ == "__main__":
    main()
