"""The browser benchmark's floors (bench/bench_dashboard.py) at tiny settings: the command line timed
whole and after its imports, and the dashboard's own job in a fresh process with no server, with and
without the imported modules frozen for the collector."""
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


def test_the_job_alone_counts_the_collectors_work_with_and_without_frozen_imports():
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_dashboard as bench

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    walked, frozen = (bench.job_alone(2048, 3, 2, env, freeze) for freeze in (False, True))
    for r in (walked, frozen):
        assert r["job_s"] > 0 and r["full_collections"] >= 0 and r["full_collection_s"] >= 0
    assert frozen["tracked_objects"] * 5 < walked["tracked_objects"]  # the imports are out of the collector's walk


def test_a_failing_child_stops_with_its_error(capsys):
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_dashboard as bench

    with pytest.raises(SystemExit, match="the probe failed"):
        bench._timed_child(["import sys; print('boom', file=sys.stderr); sys.exit(3)"], dict(os.environ), "the probe")
    assert "boom" in capsys.readouterr().err
