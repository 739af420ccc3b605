"""The classifier section's "make a fine-tuned pair": a background job on the run's pair, then the
new pair in the classifier curves and Table 3 (with the bundled pairs or alone)."""
import time

import pytest

pytest.importorskip("streamlit")

from conftest import HAVE_PAIR  # noqa: E402
from test_app import _wait_run, assert_clean, start_small_run  # noqa: E402
from permerge import zoo  # noqa: E402

pytestmark = [pytest.mark.usefixtures("app_env"), pytest.mark.slow,
              pytest.mark.skipif(not HAVE_PAIR, reason="the bundled default pair is not built")]


def _wait(key, timeout=240):
    from dashboard.state import jobs

    t0 = time.time()
    while jobs().get(key).active and time.time() - t0 < timeout:
        time.sleep(0.5)
    assert jobs().get(key).state == "done", jobs().get(key).snapshot()


def test_make_a_fine_tuned_pair_then_table3(tmp_path):
    task = tmp_path / "style"
    task.mkdir()
    for name, n in (("train.tsv", 48), ("dev.tsv", 40)):
        lines = (zoo.task_dir("style") / name).read_text(encoding="utf-8").splitlines()
        (task / name).write_text("\n".join(lines[: n + 1]) + "\n", encoding="utf-8")
    at = start_small_run(3)
    _wait_run(at)
    at.switch_page("pages/interpolation.py").run()
    assert_clean(at)
    at.radio(key="ft_source").set_value("this run's pair")
    at.text_input(key="ft_task").set_value(str(task))
    at.number_input(key="ft_epochs").set_value(1.0)
    at.number_input(key="ft_max").set_value(32)
    at.run()
    [b for b in at.button if b.label == "Fine-tune the pair"][0].click().run()
    assert_clean(at)
    key = at.session_state["ft_key"]
    _wait(key)
    at.run()
    assert_clean(at)
    assert any("Fine-tuned pair ready" in s.value and "style (yours)" in s.value for s in at.success)
    (mine,) = at.session_state["user_cls_pairs"]
    assert mine["task"] == "style (yours)" and mine["dir"] == str(task.resolve())
    assert "style (yours)" in at.multiselect(key="cls_tasks").options
    at.multiselect(key="cls_tasks").set_value(["style (yours)"])
    at.number_input(key="cls_lambdas").set_value(3)
    at.run()
    [b for b in at.button if b.label == "Compute the classifier curves"][0].click().run()
    from dashboard.state import RESULTS_STATE

    _wait([s["key"] for s in at.session_state[RESULTS_STATE] if s["section"] == "classifiers"][-1])
    at.run()
    assert_clean(at)

    tables = [d.value for d in at.dataframe if "aligned barrier" in getattr(d.value, "columns", [])]
    assert tables, "no Table 3"
    t3 = tables[-1]
    assert list(t3["task"]) == ["style (yours)"] and list(t3["pairs"]) == [1]
    # the pair's curve with its shape caption (names escaped for markdown)
    assert any(c.value.startswith("style (yours), mlm-seed1 \\| mlm-seed2: vanilla: ") for c in at.caption)

