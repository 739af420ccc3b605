"""The Pick page's Hub controls under AppTest, against the loopback Hub: the download switch (off
until turned on, kept for the session), the Known families picker with download size and cached
state, and a run on two MultiBERTs seeds fetched by the job (progress in the whole-job line)."""
import time

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from conftest import ROOT  # noqa: E402
from hubfixtures import MB, MB_NEEDED, layouts, loopback  # noqa: E402,F401  (fixtures)

pytestmark = pytest.mark.usefixtures("app_env")


def _page() -> AppTest:
    return AppTest.from_file(str(ROOT / "app.py"), default_timeout=90).run().switch_page("pages/run.py").run()


def _clean(at):
    assert not at.exception, [e.value for e in at.exception]


def _captions(at) -> str:
    return "\n".join(c.value for c in at.caption)


def test_known_family_pick_switch_and_size(loopback):
    at = _page()
    _clean(at)
    switch = at.toggle(key="hub_allow_widget")
    assert switch.label == "Download from the Hugging Face Hub" and switch.value is False
    at.radio(key="src_A").set_value("known family (Hugging Face Hub)").run()
    at.radio(key="src_B").set_value("known family (Hugging Face Hub)").run()
    _clean(at)
    assert at.selectbox(key="known_family").value == "multiberts"
    assert (at.selectbox(key="known_seed_A").value, at.selectbox(key="known_seed_B").value) == ("0", "1")
    caps = _captions(at)
    assert f"`{MB.format(0)}`: not cached, about 441 MB to download (turn on the download switch" in caps, caps
    assert any("not in the local Hugging Face cache" in e.value for e in at.error)
    assert not loopback.log  # switch off: nothing is asked of the Hub
    at.toggle(key="hub_allow_widget").set_value(True).run()
    _clean(at)
    caps = _captions(at)
    sha0 = loopback.shas[MB.format(0)]
    assert f"`{MB.format(0)}` (commit {sha0[:12]}): 6.4 MB, 6.4 MB to download" in caps, caps
    assert any("Compatible" in s.value for s in at.success), [e.value for e in at.error]
    assert {f for _, f in loopback.downloads()} == {"config.json"}  # the configs only, until Run
    # the switch is remembered for the session across pages
    at.switch_page("pages/start.py").run()
    at.switch_page("pages/run.py").run()
    assert at.toggle(key="hub_allow_widget").value is True and at.session_state["hub_allow"] is True


@pytest.mark.slow
def test_known_family_run_downloads_with_progress(loopback, layouts, monkeypatch):
    from permerge.jobs import JobHandle

    events, original = [], JobHandle.progress

    def recording(self, stage, done, total, **info):
        events.append((stage, done, total, dict(info)))
        return original(self, stage, done, total, **info)
    monkeypatch.setattr(JobHandle, "progress", recording)
    at = _page()
    at.toggle(key="hub_allow_widget").set_value(True).run()
    at.radio(key="src_A").set_value("known family (Hugging Face Hub)").run()
    at.radio(key="src_B").set_value("known family (Hugging Face Hub)").run()
    at.radio(key="data_kind").set_value("text file").run()
    at.text_input(key="data_path").set_value(str(layouts["text"])).run()
    for label, v in (("Alignment tokens", 1024), ("λ points", 3), ("Masked-LM evaluation blocks (128 tokens each)", 2)):
        [w for w in at.number_input if w.label == label][0].set_value(v)
    [s for s in at.selectbox if s.label == "Device"][0].set_value("cpu")
    at.run()
    _clean(at)
    [b for b in at.button if b.label == "Run alignment"][0].click().run()
    from dashboard.state import jobs

    key = at.session_state["pending_run"].key
    t0 = time.time()
    while jobs().get(key).active and time.time() - t0 < 180:
        time.sleep(0.2)
    assert jobs().get(key).state == "done", jobs().get(key).error
    # the download's bytes went through the whole-job progress line (stage 1: loading)
    from dashboard.state import describe, overall_line

    down = [e for e in events if e[0] == f"downloading {MB.format(0)}"]
    assert down and down[-1][1] == down[-1][2] > 6_000_000, down[-3:]
    stage, done, total, info = down[-1]
    line = describe({"stage": stage, "info": info, "done": done, "total": total})
    assert line.startswith(f"downloading {MB.format(0)}: 6.4 MB of 6.4 MB at ") and "/s (pytorch_model.bin)" in line
    assert overall_line({"info": info, "job_eta_s": None}).startswith("stage 1 of ")
    got = loopback.downloads()
    assert sorted(got) == sorted((MB.format(s), f) for s in (0, 1) for f in MB_NEEDED), got
    at.run()
    _clean(at)
    assert "run" in at.session_state
    summaries = jobs().get(key).result["summaries"]
    assert summaries[0]["commit"] == loopback.shas[MB.format(0)] and "BertForPreTraining" in summaries[0]["published"]


@pytest.mark.slow
def test_cancel_during_download_leaves_the_cache_usable(loopback, layouts):
    """The dashboard's Cancel (JobHandle.cancel) during a download: the job ends as cancelled, the
    complete files stay in the Hugging Face cache, the client's own layout holds no partial file,
    and the next run goes on from the bytes that came before Cancel."""
    from dashboard.state import jobs
    from permerge import hub
    from permerge.align import AlignOptions
    from permerge.pipeline import Job
    from permerge.cache import NoCache
    from permerge.study import PipelineRegistry
    from permerge.work import pair_work

    loopback.throttle = 0.05  # about 1.3 MB/s: the 6.2 MB weights take seconds
    job = Job(MB.format(0), MB.format(1), str(layouts["text"]), tokens=1024, eval_blocks=2, device="cpu")
    token = hub.allow_downloads(True)
    try:
        h = jobs().submit("hub-cancel-test", pair_work(PipelineRegistry(NoCache()), job, AlignOptions(), 3), label="hub")
    finally:
        hub._allowed.reset(token)
    files = loopback.repos[MB.format(0)].commits[loopback.shas[MB.format(0)]]
    small = sum(len(files[f]) for f in MB_NEEDED if f != "pytorch_model.bin")  # fetched before the weights
    t0 = time.time()
    while not (h.stage.startswith("downloading") and h.done > small + 100_000) and time.time() - t0 < 60:
        time.sleep(0.05)
    assert h.stage == f"downloading {MB.format(0)}", (h.stage, h.state, h.error)
    h.cancel()
    while h.active and time.time() - t0 < 90:
        time.sleep(0.1)
    assert h.state == "cancelled", (h.state, h.error)
    root = hub.repo_folder(MB.format(0))
    assert not list((root / "blobs").glob("*.incomplete")), list((root / "blobs").iterdir())
    snap = root / "snapshots" / loopback.shas[MB.format(0)]
    assert (snap / "config.json").is_file() and not (snap / "pytorch_model.bin").exists()
    loopback.throttle = 0.0
    loopback.log.clear()
    token = hub.allow_downloads(True)
    try:
        hub.resolve(MB.format(0))
    finally:
        hub._allowed.reset(token)
    assert [f for _, f in loopback.downloads()] == ["pytorch_model.bin"]  # only what was cut off,
    assert loopback.log[-1][2] not in (None, "bytes=0-"), loopback.log[-1]  # from where it stopped
    jobs().forget("hub-cancel-test")
