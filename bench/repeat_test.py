"""Run one test many times in a row in one pytest session, beside busy processes, and stop at the
first failure: a check for flaky tests under load (e.g. the two-process statistics test).

    python bench/repeat_test.py tests/test_glue_and_dist.py::test_two_process_statistics_equal_single_process \
        --runs 50 --busy 2

``--busy K`` keeps K other processes spinning meanwhile (a test that starts P processes of its own
then runs under a load of at least K + P).  Each run's time and the load average are printed.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Repeat:
    """A pytest plugin: every collected test ``runs`` times, with a line per run."""

    def __init__(self, runs: int):
        self.runs, self.t0, self.done, self.failed = runs, None, 0, []

    def pytest_generate_tests(self, metafunc):  # each run a test item of its own (fresh fixtures)
        metafunc.fixturenames.append("repeat_run")
        metafunc.parametrize("repeat_run", range(1, self.runs + 1))

    def pytest_runtest_logstart(self, nodeid, location):
        self.t0 = time.perf_counter()

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or report.outcome != "passed":
            if report.when == "call" or report.failed:
                self.done += report.when == "call"
                print(f"\nrun {self.done}: {report.outcome} in {time.perf_counter() - self.t0:.1f} s, "
                      f"load average {os.getloadavg()[0]:.1f}", flush=True)
            if report.failed:
                self.failed.append(report.nodeid)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("test", help="a pytest node id")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--busy", type=int, default=0, help="other processes kept busy meanwhile")
    args = ap.parse_args()
    import pytest

    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    plugin = Repeat(args.runs)
    try:
        print(f"# {args.test} x {args.runs}, {args.busy} busy processes, {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f} at the start", flush=True)
        code = pytest.main(["-q", "-x", "-p", "no:cacheprovider", "-p", "no:randomly", "-s", args.test],
                           plugins=[plugin])
    finally:
        for p in busy:
            p.terminate()
    print(f"# {plugin.done} runs, {len(plugin.failed)} failed; pytest exit status {int(code)}", flush=True)
    return int(code)


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
