"""Honest time left, on the bundled pair: a whole run (statistics, assignments, the vanilla and the
aligned curve, the B′ check) through the job manager, as the dashboard runs it; once 20 %, 40 % and
60 % of the job are done, the time left it shows is within 30 % of what the job then takes, and the
share done never goes back.  Real models on the CPU, so marked slow."""
import time
from pathlib import Path

import pytest

from conftest import HAVE_PAIR

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("app_env")]


def _quiet(wait_s: float = 60.0) -> None:
    """No job or path check of an earlier test still running beside this one: a job thread an
    earlier test left behind took the cores while this job measured its first rates, and the time
    left shown at 20 % came out a third too long (in the whole suite, never alone)."""
    import threading

    from permerge.jobs import stop_all

    stop_all(wait_s)
    end = time.time() + wait_s
    for t in threading.enumerate():
        if t is not threading.current_thread() and t.name.startswith("permerge-"):
            t.join(max(0.0, end - time.time()))


def _time_left_within_30_percent(job, lambdas: int) -> str:
    """Runs the pair's whole job as the dashboard does; checks the time left shown at 20, 40 and 60 %
    against what the job then took, and that the share done never goes back."""
    from permerge import work
    from permerge.align import AlignOptions
    from permerge.cache import ResultCache
    from permerge.jobs import JobManager
    from permerge.study import PipelineRegistry

    import tempfile

    work.HISTORY.clear()  # a fresh server: nothing measured by an earlier job
    _quiet()
    with tempfile.TemporaryDirectory() as d:  # an empty cache of its own: a second run computes it all again
        h = JobManager().submit("pair", work.pair_work(PipelineRegistry(ResultCache(d)), job, AlignOptions(), lambdas))
        seen = []  # (time, share done, time left shown)
        t0 = time.time()
        while h.active:
            snap = h.snapshot()
            seen.append((time.time(), snap["fraction"], snap["job_eta_s"]))
            time.sleep(0.1)
        end = time.time()
    assert h.state == "done", h.error
    shares = [f for _, f, _ in seen]
    assert shares == sorted(shares), "the share done went back"
    report = []
    for mark in (0.2, 0.4, 0.6):
        t, f, eta = next(x for x in seen if x[1] >= mark)
        actual = end - t
        report.append(f"{f:.0%}: shown {eta:.1f} s, took {actual:.1f} s")
        assert eta is not None and abs(eta - actual) <= 0.3 * actual, report
    report.append(f"whole job {end - t0:.1f} s")
    print("; ".join(report))
    return "; ".join(report)


@pytest.mark.skipif(not HAVE_PAIR, reason="the bundled default pair (mlm-seed1, mlm-seed2) is not built")
def test_time_left_after_a_fifth_of_a_run_is_within_30_percent():
    from permerge import zoo
    from permerge.pipeline import Job

    paths = {e["name"]: e["path"] for e in zoo.list_checkpoints()}
    job = Job(model_a=paths[zoo.DEFAULT_PAIR[0]], model_b=paths[zoo.DEFAULT_PAIR[1]], data=str(zoo.align_text()),
              eval_data=str(zoo.eval_text()), tokens=16384, eval_blocks=64, device="cpu")
    _time_left_within_30_percent(job, 21)


@pytest.fixture(scope="module")
def wide_pair(tmp_path_factory):
    """Two random checkpoints of the bundled family's architecture at hidden size 256 (intermediate 1024,
    4 heads of 64, 4 layers), with the bundled tokenizer."""
    import shutil

    import torch
    from transformers import BertConfig, BertForMaskedLM

    from permerge import zoo

    src = Path(zoo.get_checkpoint(zoo.DEFAULT_PAIR[0])["path"])
    cfg = BertConfig.from_pretrained(str(src))
    cfg.hidden_size, cfg.intermediate_size = 256, 1024
    root = tmp_path_factory.mktemp("wide")
    out = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        folder = root / f"w256-seed{seed}"
        BertForMaskedLM(cfg).eval().save_pretrained(str(folder))
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(src / f, folder / f)
        out.append(str(folder))
    return out


@pytest.mark.skipif(not HAVE_PAIR, reason="the bundled checkpoints and tokenizer are not built")
def test_time_left_on_a_width_256_pair_is_within_30_percent(wide_pair):
    """The same check on a pair twice as wide as the bundled one.  8,192 alignment tokens, 64 evaluation
    blocks and 11 λ points make the whole job about 25 s on two idle CPU cores.  With 32 blocks (15 s)
    the time left at the 60 % mark was 4 to 5 s, and in the full suite one run's 1.4 s of noise broke the
    30 % (shown 5.4 s, took 4.0 s; alone: 4.8 s and 4.7 s).  The 20 % mark falls in the curves and tests
    their first rate; five idle runs with 64 blocks erred by 7 % to 27 % there and by at most 16 % at
    40 % and 60 %."""
    from permerge import zoo
    from permerge.pipeline import Job

    job = Job(model_a=wide_pair[0], model_b=wide_pair[1], data=str(zoo.align_text()), eval_data=str(zoo.eval_text()),
              tokens=8192, eval_blocks=64, device="cpu")
    _time_left_within_30_percent(job, 11)


@pytest.mark.parametrize("study", ["fig4", "amount", "matchers"])
@pytest.mark.skipif(not HAVE_PAIR, reason="the bundled default pair (mlm-seed1, mlm-seed2) is not built")
def test_every_study_reports_one_whole_job_line_that_never_goes_back(study):
    """Fig. 4 (and the Start page's residual button), the amount of data and the matcher comparison:
    every progress event carries the whole job's plan (stage k of n, share done), and the share only grows."""
    from permerge import work, zoo
    from permerge.align import AlignOptions
    from permerge.cache import ResultCache
    from permerge.pipeline import Job
    from permerge.study import FIG4, PipelineRegistry, data_amount_job

    paths = {e["name"]: e["path"] for e in zoo.list_checkpoints()}
    job = Job(model_a=paths[zoo.DEFAULT_PAIR[0]], model_b=paths[zoo.DEFAULT_PAIR[1]], data=str(zoo.align_text()),
              eval_data=str(zoo.eval_text()), tokens=2048, eval_blocks=2, device="cpu", batch_size=16)
    if study == "amount":  # the study's own pass: small batches, and the data-fraction snapshots it keeps
        job = data_amount_job(job, 2048)
    reg = PipelineRegistry(ResultCache())
    fn = {"fig4": lambda: work.curves_work(reg, job, FIG4, 3),
          "amount": lambda: work.data_amount_work(reg, job, AlignOptions(), 3),
          "matchers": lambda: work.matchers_work(reg, job, AlignOptions(), 3)}[study]()
    events = []
    fn(lambda stage, done, total, **info: events.append((stage, info.get("job"))))
    assert events and all(plan is not None for _, plan in events), [s for s, p in events if p is None]
    shares = [plan["fraction"] for _, plan in events]
    assert shares == sorted(shares)
    stages = {plan["stages"] for _, plan in events[1:]}
    expected = {"fig4": 1 + 1 + 4, "amount": 1 + 1 + 6, "matchers": 1 + 1 + 3}[study]
    assert stages == {expected}, stages  # loading, the statistics pass, one stage per curve
    assert any(plan["eta_s"] is not None for _, plan in events)
