"""Feature correlation (Fig. 5) over several pairs of a family: the mean and standard error over pairs
of each group's before / after correlation (``study.layer_correlations_over_pairs``), equal to numpy's
on the per-pair values, and the Features page's bars of that mean with error bars and the pair count."""
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("streamlit")

from permerge.align import AlignOptions  # noqa: E402
from permerge.study import layer_correlations_over_pairs  # noqa: E402
from test_app_lecture import fake_run, figures, put, texts, with_run  # noqa: E402
from test_app_teach import array  # noqa: E402

pytestmark = pytest.mark.usefixtures("app_env")  # this module's own result cache (conftest)

GROUPS = [("ff.0", "ff", 0, None, None), ("ff.1", "ff", 1, None, None), ("att.0", "att", 0, None, None),
          ("res.emb", "res", None, "res.emb", 0)]


def frame(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame([{"group": g, "kind": k, "layer": layer, "point": p, "position": pos,
                          "before": float(rng.uniform(0, 0.2)), "after": float(rng.uniform(0.3, 0.9)), "aligned": True}
                         for g, k, layer, p, pos in GROUPS])


def test_mean_and_standard_error_over_pairs_are_numpys():
    frames = {f"pair{i}": frame(i) for i in range(4)}
    out = layer_correlations_over_pairs(frames).set_index("group")
    for g, *_ in GROUPS:
        for what in ("before", "after"):
            v = np.array([f.set_index("group").loc[g, what] for f in frames.values()])
            assert out.loc[g, what] == pytest.approx(v.mean(), abs=1e-12)
            assert out.loc[g, f"{what}_se"] == pytest.approx(v.std(ddof=1) / np.sqrt(len(v)), abs=1e-12)
        assert out.loc[g, "pairs"] == 4
    assert list(out.index) == [g for g, *_ in GROUPS]  # the groups' order kept
    one = layer_correlations_over_pairs({"p": frame(0)})
    assert one["before_se"].isna().all() and (one["pairs"] == 1).all()


def test_features_page_draws_the_mean_over_pairs_with_error_bars():
    from dashboard.state import job_key
    from permerge import work

    run = fake_run(AlignOptions(), 0.6, 0.5, tag="feat")
    put(job_key("features", job=run.job.to_dict(), options=run.options.to_dict()),
        {"frame": frame(9), "about": {"data": "x", "options": run.options.label()}})
    frames = {f"seed1 | seed{i}": frame(i) for i in (2, 3, 4)}
    key = "features-family-test"
    put(key, {"frames": frames, "frame": layer_correlations_over_pairs(frames),
              "about": work.about(run.job, run.options, pairs=", ".join(frames))})
    at = with_run(run, "pages/features.py")
    assert "Compute over these pairs" in [b.label for b in at.button]
    at.session_state["results"] = [{"section": "features_family", "key": key, "label": "x", "depends": {},
                                    "recipe": None}]
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    text = texts(at)
    assert "Mean over 3 pairs; error bars: the standard error over the pairs." in text
    fam = [f for f in figures(at) if "over 3 pairs" in (f.layout.title.text or "")]
    assert fam, [f.layout.title.text for f in figures(at)]
    after = [t for t in fam[0].data if t.name == "after" and t.type == "bar"]
    expect = layer_correlations_over_pairs(frames)
    ff = expect[expect["kind"] == "ff"].sort_values("layer")
    assert np.allclose(array(after[0].y), ff["after"]) and np.allclose(array(after[0].error_y.array), ff["after_se"])


def test_the_study_runs_from_its_recipe_on_two_pairs(tiny_mlm_pair):
    """The page's recipe, cooked as a saved run's study is: every pair aligned, the mean over them."""
    from permerge import runs
    from permerge.cache import ResultCache
    from permerge.pipeline import Job
    from permerge.study import PipelineRegistry

    a, b, text = tiny_mlm_pair
    base = Job(model_a="", model_b="", data=str(text), tokens=512, device="cpu", eval_blocks=1)
    rec = runs.recipe("features_family_work", base=base, pairs=[(str(a), str(b)), (str(b), str(a))],
                      options=AlignOptions())
    events = []
    out = runs.cook(PipelineRegistry(ResultCache()), rec)(lambda stage, done, total, **info: events.append(info.get("job")))
    assert len(out["frames"]) == 2 and (out["frame"]["pairs"] == 2).all()
    v = np.array([f.set_index("group").loc["ff.0", "after"] for f in out["frames"].values()])
    assert out["frame"].set_index("group").loc["ff.0", "after"] == pytest.approx(v.mean())
    shares = [e["fraction"] for e in events if e]
    assert shares and shares == sorted(shares)
