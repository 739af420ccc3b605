"""The presenter view's tour bar says what the page under it has just drawn: every step's sentence is
built from the page's own figures (``permerge.tour``), for a pair where alignment lowers the barrier and
for one where it raises it.  Results are put into the job manager directly (no model runs)."""
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("streamlit")

from permerge import tour  # noqa: E402
from permerge.align import AlignOptions  # noqa: E402
from test_app_lecture import fake_run, fresh, put  # noqa: E402

pytestmark = pytest.mark.usefixtures("app_env")  # this module's own result cache (conftest)


def bar_text(at) -> str:
    """The tour bar's sentence (the markdown that starts with "**Step k of 5")."""
    steps = [m.value for m in at.markdown if str(m.value).startswith("**Step ")]
    assert len(steps) == 1, steps
    return steps[0]


@pytest.fixture
def told(monkeypatch):
    """What the pages tell the tour bar, as (title, sentence), in order.  AppTest draws the app script's
    parts (the tour bar among them) only on its first run, which opens Start here; on the pages reached
    with ``switch_page`` the sentences are caught where the page hands them to the bar."""
    from dashboard import presenter

    said = []
    real = presenter.tell

    def record(title, sentence):
        said.append((title, sentence))
        real(title, sentence)

    monkeypatch.setattr(presenter, "tell", record)
    return said


def presenting(run, page: str | None = None, **state):
    at = fresh()
    at.session_state["run"] = run
    at.session_state["presenter_view"] = True
    for k, v in state.items():
        at.session_state[k] = v
    at.run()  # opens Start here, with the tour bar
    if page:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def said_on(told, title: str) -> str:
    mine = [s for t, s in told if t == title]
    assert mine, told
    return mine[-1]


# --- the sentences, on numbers ------------------------------------------------------------------------

def test_sentences_follow_the_figures_either_way():
    lower = tour.barriers(0.615, 0.203, "FF + attn")
    assert "0.615" in lower and "0.203, 67% lower than 0.615" in lower and "bulges less" in lower
    higher = tour.barriers(0.4, 0.45, "FF + attn")
    assert "0.450, 12% higher than 0.400" in higher and "bulges more" in higher and "less" not in higher
    assert "about as much" in tour.barriers(0.4, 0.401, "x")
    assert "aligned nothing" in tour.barriers(0.4, None, "")

    m = tour.barrier_marks(0.615, 0.5, 0.203, 0.45, "FF + attn")
    assert "0.615" in m and "λ = 0.50" in m and "0.203 at λ = 0.45" in m and "lower one, by 0.412 (67%)" in m
    m = tour.barrier_marks(0.4, 0.5, 0.45, 0.55, "FF + attn")
    assert "higher one, by 0.05 (12%)" in m and "did not help" in m
    m = tour.barrier_marks(0.4, 0.5, 0.41, 0.5, "x", 0.02, 0.02)
    assert "within one standard error" in m

    s = tour.permutation("att.0", "one unit", 12, 10, unit=3, source=7, rel_error=2e-7)
    assert "unit 3 of B′ is unit 7 of B" in s and "10 of 12 units" in s and "2.0e-07" in s
    s = tour.permutation("att.0", "one head", 12, 12, head=1, source_heads=[2], head_size=4)
    assert "head 1 of B′ is head 2 of B" in s and "block of 4 rows" in s
    assert "breaks heads apart" in tour.permutation("att.0", "one head", 12, 12, head=0, source_heads=[0, 2],
                                                    head_size=4, preserving=False)
    assert "not function-preserving" in tour.permutation("att.0", "the whole group", 12, 12, preserving=False)

    rows = [{"method": "Monotonic", "barrier": 0.5, "function_preserving": "yes"},
            {"method": "Ignore-Heads", "barrier": 0.2, "function_preserving": "NO"},
            {"method": "Head-Perm", "barrier": 0.3, "function_preserving": "yes"}]
    s = tour.methods([("Table 1", rows)], 3)
    assert "mean over 3 pairs" in s and "Ignore-Heads has the lowest barrier (0.200)" in s
    assert "not function-preserving" in s and "lowest that keeps B′ = B is Head-Perm (0.300)" in s
    s = tour.methods([("Table 1", rows[::2])], 1)
    assert "this pair" in s and "Head-Perm has the lowest barrier (0.300) and keeps B′ equal to B" in s


# --- the pages, under AppTest with the presenter view on ------------------------------------------------

# (vanilla, aligned) barriers of two pairs: alignment lowers the barrier of one and raises the other's
PAIRS = [(0.615, 0.203, "lower", "t1"), (0.4, 0.45, "higher", "t2")]


@pytest.mark.parametrize("vanilla,aligned,word,tag", PAIRS)
def test_start_and_interpolation_bars_tell_this_runs_barriers(vanilla, aligned, word, tag, told):
    run = fake_run(AlignOptions(), vanilla, aligned, tag=tag)
    text = bar_text(presenting(run))
    assert text.startswith("**Step 1 of 5: Start here.**")
    assert f"{vanilla:.3f}" in text and f"{aligned:.3f}, " in text and f"% {word} than {vanilla:.3f}" in text
    assert ("bulges less" in text) == (word == "lower") and ("bulges more" in text) == (word == "higher")
    assert "should bulge less" not in text  # the fixed sentence is only the fallback

    presenting(run, "pages/interpolation.py")
    text = said_on(told, "Interpolation")
    assert f"peaks {vanilla:.3f}" in text and f"{aligned:.3f} at λ = 0.50" in text
    assert f"the aligned barrier is the {word} one, by {abs(aligned - vanilla):.3g}" in text


def _permutation_result(run, perm: np.ndarray, heads: int):
    """See the permutation's result for one attention group of a tiny random BERT, permuted by ``perm``."""
    from conftest import make_model
    from permerge import views, work
    from permerge.arch import spec_for

    a, b = make_model(1, hidden_size=12, num_attention_heads=heads, intermediate_size=16, num_hidden_layers=1), \
        make_model(2, hidden_size=12, num_attention_heads=heads, intermediate_size=16, num_hidden_layers=1)
    spec = spec_for(a)
    perms = {"att.0": perm}
    weights = views.group_weights(spec, views.state_of(a), views.state_of(b), perms, "att.0")
    from dashboard.state import job_key

    key = job_key("permutation", job=run.job.to_dict(), options=run.options.to_dict(), group="att.0")
    put(key, {"groups": ["att.0"], "sizes": {"att.0": 12}, "kinds": {"att.0": "att"}, "aligned": ["att.0"],
              "default": "att.0", "group": "att.0", "spec_group": spec.groups["att.0"], "perm": perm,
              "group_aligned": True, "weights": weights,
              "checks": [{"weight": w.name, "moves": spec.axis_label(w.name, w.axis), **views.gather_checks(w, perm)}
                         for w in weights], "about": work.about(run.job, run.options, group="att.0")})
    return {run.key: (["att.0"], {"att.0": "att.0 (attention, 12 units)"}, "att.0")}


@pytest.mark.parametrize("perm,tag", [(np.array([4, 5, 6, 7, 0, 1, 2, 3, 8, 9, 10, 11]), "p1"),
                                      (np.array([0, 1, 2, 3, 9, 8, 11, 10, 5, 4, 7, 6]), "p2")])
def test_permutation_bar_names_the_outlined_units(perm, tag, told):
    run = fake_run(AlignOptions(), 0.6, 0.5, tag=tag)
    groups = _permutation_result(run, perm, heads=3)
    at = presenting(run, "pages/permutation.py", perm_groups=groups)
    text = said_on(told, "See the permutation")
    i = int(np.flatnonzero(perm != np.arange(12))[0])  # the page outlines the first unit that moves
    moved = int(np.sum(perm != np.arange(12)))
    assert f"unit {i} of B′ is unit {perm[i]} of B" in text and f"{moved} of 12 units" in text
    assert "1.0e-07" in text  # the run's logit check (fake_run's)

    at.radio(key="perm_step").set_value("one head").run()
    text = said_on(told, "See the permutation")
    src = sorted(set(int(u) // 4 for u in perm[0:4]))
    assert f"head 0 of B′ is head {src[0]} of B" in text and "block of 4 rows" in text


def _methods_study(run, barriers: dict):
    """A finished Methods study for ``run``'s pair with the given Table 1 barriers."""
    from permerge import work
    from permerge.study import TABLE1

    key = f"methods-test-{run.key}"
    bars = pd.DataFrame([{"pair": "a | b", "method": o.label(), "barrier": barriers[o.attention], "barrier_se": 0.004}
                         for o in TABLE1])
    put(key, {"bars": bars, "about": work.about(run.job, None, run.lambdas, variants=[o.label() for o in TABLE1])})
    return [{"section": "methods", "key": key, "label": "methods tables", "depends": {}, "recipe": None}]


@pytest.mark.parametrize("barriers,best,keeps", [
    ({"vanilla": 0.5, "monotonic": 0.4, "ignore-heads": 0.35, "head-perm": 0.3}, "Head-Perm (0.300)", True),
    ({"vanilla": 0.5, "monotonic": 0.45, "ignore-heads": 0.2, "head-perm": 0.6}, "Ignore-Heads", False)])
def test_methods_bar_names_the_lowest_barrier_and_whether_it_keeps_b(barriers, best, keeps, told):
    run = fake_run(AlignOptions(), 0.6, 0.5, tag="m" + best[:3])
    at = presenting(run, "pages/methods.py", results=_methods_study(run, barriers))
    text = said_on(told, "Methods")
    assert f"Table 1: {best.split(' (')[0]} has the lowest barrier" in text
    assert ("keeps B′ equal to B" in text) == keeps
    if not keeps:  # the fair alternative, from the same table
        assert "not function-preserving" in text and "lowest that keeps B′ = B is Monotonic head alignment (0.450)" in text
