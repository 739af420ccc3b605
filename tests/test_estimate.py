"""The job estimate (permerge.estimate): its counts, the quick settings, a measured run on a small
pair within the stated tolerance, and the Pick page showing it.  The MultiBERTs-size comparison is
bench/bench_real.py's (bench/README.md)."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from permerge.estimate import QUICK_TARGET_S, Rates, Sizes, calibrate, estimate, quick_settings, sizes_of

ROOT = Path(__file__).resolve().parents[1]
# fixed rates, so that the counting is tested apart from this machine's speed (2 shared CPU cores give
# about these: 37 GFLOP/s forwards, 42 GFLOP/s products, 23 GFLOP/s float64, 19 ms per 512 x 512 solve)
RATES = Rates(forward=37e9, product=42e9, float64=23e9, assign_512=0.019, device="cpu", threads=2)


def multiberts() -> Sizes:
    L, d, f = 12, 768, 3072
    groups = {**{f"ff.{i}": f for i in range(L)}, **{f"att.{i}": d for i in range(L)},
              **{f"res.{i}": d for i in range(2 * L + 1)}}
    kinds = {g: g.split(".")[0] for g in groups}
    return Sizes(L, d, f, 12, 30522, 109_514_298, groups, kinds, "mlm")


def test_multiberts_defaults_fit_four_gb_and_quick_settings_fit_three_minutes():
    s = multiberts()
    e = estimate(s, tokens=16384, lambdas=21, eval_blocks=64, rates=RATES, workers=2)
    assert e.peak_bytes <= 4e9
    assert e.first_curve_s > QUICK_TARGET_S  # the defaults are slow on two cores: hence quick settings
    q = quick_settings(s, RATES, workers=2)
    assert q["estimate"].first_curve_s <= QUICK_TARGET_S
    assert q["tokens"] < 16384 or q["lambdas"] < 21 or q["eval_blocks"] < 64
    # statistics of 1.08 GB are released before the curves: the curves hold the models, B' and the working copy
    stats64 = sum(8 * (w + 1) ** 2 for w in s.groups.values())
    assert abs(stats64 - 1.08e9) < 0.01e9
    assert e.memory["assignments"] - e.memory["vanilla curve"] > 0.5 * stats64


def test_counts_grow_with_the_settings():
    s = multiberts()

    def est(**k):
        base = dict(tokens=4096, lambdas=5, eval_blocks=8)
        return estimate(s, **{**base, **k}, rates=RATES, workers=2)

    e = est()
    assert est(tokens=8192).stages["statistics pass"] == pytest.approx(2 * e.stages["statistics pass"])
    assert est(lambdas=9).stages["vanilla curve"] == pytest.approx(9 / 5 * e.stages["vanilla curve"])
    assert est(eval_blocks=16).stages["vanilla curve"] > 1.9 * e.stages["vanilla curve"]
    stats64 = sum(8 * (w + 1) ** 2 for w in s.groups.values())
    assert est(snapshots=4).memory["assignments"] - e.memory["assignments"] == 4 * stats64
    assert est(attention="vanilla", ff=False).stages["assignments"] < e.stages["assignments"]
    assert "statistics pass" not in est(matcher="weight").stages
    assert e.first_point_s < e.first_curve_s < e.seconds
    assert "in all" in e.summary() and "GB" in e.summary()


def test_sizes_from_a_checkpoint(tiny_mlm_pair):
    a, _, _ = tiny_mlm_pair
    s = sizes_of(str(a))
    assert (s.layers, s.hidden, s.intermediate, s.heads) == (2, 24, 40, 3)
    assert sorted(set(s.kinds.values())) == ["att", "ff", "res"] and len(s.groups) == 2 + 2 + 5
    assert s.parameters > 0


def test_calibration_is_measured_and_kept():
    r = calibrate(64, 256)
    assert r.forward > 1e7 and r.product > 1e7 and r.float64 > 1e6 and 0 < r.assign_512 < 10
    assert calibrate(64, 256) is r


SCRIPT = textwrap.dedent("""
    import json, resource, sys, time
    import torch
    torch.set_num_threads(1)  # as the suite's other runs: steadier on cores shared with other work
    from permerge.align import AlignOptions
    from permerge.cache import NoCache
    from permerge.pipeline import Job, Pipeline
    from permerge.work import pair_work
    from permerge.study import PipelineRegistry
    from permerge.estimate import estimate, sizes_of
    a, b, text, tokens = sys.argv[1:5]
    def hwm():  # this process's own peak (ru_maxrss keeps the forking parent's size across exec)
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    e = estimate(sizes_of(a), tokens=int(tokens), lambdas=3, eval_blocks=4)  # as the page does, before Run
    job = Job(a, b, text, tokens=int(tokens), eval_blocks=4, device="cpu")
    reg = PipelineRegistry(NoCache())
    t = time.time()
    pair_work(reg, job, AlignOptions(), 3)(None)
    print(json.dumps({"job_s": time.time() - t, "peak": hwm(),
                      "seconds": e.seconds, "peak_bytes": e.peak_bytes, "stages": e.stages,
                      "timings": reg.get(job).timings}))
""")


@pytest.mark.slow
def test_estimate_against_a_measured_run(tmp_path):
    """A pair of hidden 256, 4 layers, through the dashboard's job in a fresh process: peak resident memory
    within 35 % of the estimate and the job's time within a factor 3 either way (CPU cores shared with
    other work move it; bench/bench_real.py measures the MultiBERTs-size pair)."""
    from conftest import make_model, save_checkpoint, write_text

    kw = dict(hidden_size=256, num_attention_heads=4, intermediate_size=1024, num_hidden_layers=4, vocab_size=200)
    a = save_checkpoint(make_model(1, **kw), tmp_path / "a")
    b = save_checkpoint(make_model(2, **kw), tmp_path / "b")
    text = write_text(tmp_path / "t.txt", n_words=20000)
    # a clean environment: variables other tests of the suite may have left must not change the child
    keep = ("PATH", "HOME", "LANG", "TMPDIR", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    env = {**{k: os.environ[k] for k in keep if k in os.environ}, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(a), str(b), str(text), "4096"], capture_output=True,
                         text=True, timeout=600, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert abs(got["peak"] - got["peak_bytes"]) <= 0.35 * got["peak_bytes"], got
    assert got["seconds"] / 3 <= got["job_s"] <= 3 * got["seconds"], got


def test_pick_page_states_the_estimate_and_applies_quick_settings(monkeypatch):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    import permerge.estimate as E
    from conftest import HAVE_PAIR

    if not HAVE_PAIR:
        pytest.skip("the bundled pair is not built")
    slow = Rates(forward=1e5, product=1e5, float64=1e5, assign_512=1.0)  # a machine slow enough to need them
    monkeypatch.setattr(E, "calibrate", lambda *a, **k: slow)
    import dashboard.estimate as DE  # rates calibrated by an earlier page in this process stay cached there

    monkeypatch.setattr(DE, "_rates", lambda *a, **k: slow)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=90).run().switch_page("pages/run.py").run()
    assert not at.exception, [e.value for e in at.exception]
    info = [i.value for i in at.info if "Estimated for these settings" in i.value]
    assert info and "peak memory about" in info[0] and "first complete curve" in info[0]
    quick = [b for b in at.button if b.label == "Quick settings"]
    assert quick
    before = {w.label: w.value for w in at.number_input}
    quick[0].click().run()
    assert not at.exception
    after = {w.label: w.value for w in at.number_input}
    assert after["Alignment tokens"] <= before["Alignment tokens"] and after["λ points"] <= before["λ points"]
    assert after != before
