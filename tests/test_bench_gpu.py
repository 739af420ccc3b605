"""bench/bench_gpu.py runs where the GPU machine's image lacks the dashboard's packages: with
diskcache, Streamlit and plotly made unimportable (in this process's children too), its steps run
to the end and print the table of goals."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("diskcache", "streamlit", "plotly")
TINY = ["--tiny", "--device", "cpu", "--tokens", "1024", "--eval-tokens", "256", "--accuracy-tokens", "128",
        "--accuracy-lambdas", "3", "--fp32-tokens", "0", "--batch-size", "4"]


@pytest.fixture
def blocked_env(tmp_path):
    """PYTHONPATH with a sitecustomize that makes the dashboard's packages unimportable."""
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\nfor _m in %r:\n    sys.modules[_m] = None\n" % (BLOCKED,))
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_bench_runs_without_the_dashboard_packages(blocked_env):
    """The random pair's steps (floors, statistics pass and its memory, assignments, evaluation
    precision bar) and the end-to-end `python -m permerge interpolate` (a child process, blocked
    too), at tiny sizes."""
    code = "import importlib\nfor m in %r:\n    try:\n        importlib.import_module(m)\n        print('imported', m)\n" \
           "    except ImportError:\n        pass\n" % (BLOCKED,)
    probe = subprocess.run([sys.executable, "-c", code], env=blocked_env, capture_output=True, text=True, check=True)
    assert probe.stdout == ""  # the block holds
    out = subprocess.run([sys.executable, "bench/bench_gpu.py", *TINY, "--skip", "startup,precision,bundled,align"],
                         cwd=ROOT, env=blocked_env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    table = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    assert table[0] == "| measure | figure | floor on the same machine | goal | pass/miss |"
    text = "\n".join(table)
    for measure in ("statistics pass, random tiny pair", "peak memory of the statistics pass",
                    "assignments, all", "evaluation along lambda, random tiny pair", "`interpolate`, two tiny-sized",
                    "the whole bench"):
        assert measure in text, measure
    assert "failed" not in text
