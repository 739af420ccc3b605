"""The browser benchmark's floors (bench/bench_dashboard.py) at tiny settings: the command line timed
whole and after its imports, and the dashboard's own job in a fresh process with no server."""
import os
import sys
from pathlib import Path

import pytest

from conftest import HAVE_PAIR

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not HAVE_PAIR, reason="the bundled default pair is not built")]


def test_the_floors_time_the_job_after_the_imports():
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_dashboard as bench

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    whole, after_imports, cpu = bench.cli_seconds(2048, 3, 2, env)
    assert 0 < after_imports < whole and cpu > 0
    assert bench.job_seconds(2048, 3, 2, env) > 0


def test_a_failing_child_stops_with_its_error(capsys):
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_dashboard as bench

    with pytest.raises(SystemExit, match="the probe failed"):
        bench._timed_child(["import sys; print('boom', file=sys.stderr); sys.exit(3)"], dict(os.environ), "the probe")
    assert "boom" in capsys.readouterr().err
