"""The barrier along training steps (permerge.steps and the Training steps page) on tiny local
checkpoints, one folder per step, for a GPT-NeoX family of runs."""
from pathlib import Path

import pytest
import torch

from permerge.align import AlignOptions
from permerge.errors import PermergeError
from permerge import steps
from conftest import page_charts  # noqa: E402

KW = dict(hidden_size=16, num_attention_heads=2, intermediate_size=24, num_hidden_layers=1, rotary_pct=0.25,
          max_position_embeddings=64, hidden_dropout=0.0, attention_dropout=0.0)
STEPS = (0, 100, 1000)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Four runs (weight-seed 1, 2 and data-seed 1, 2), each a folder of step folders, and a text."""
    import transformers

    from conftest import write_text
    from test_families import bpe_tokenizer

    root = tmp_path_factory.mktemp("steps")
    text = write_text(root / "text.txt")
    tok = bpe_tokenizer(root / "tok", text.read_text().splitlines(), "causal")
    out = {}
    for r, name in enumerate(("weight-seed1", "weight-seed2", "data-seed1", "data-seed2")):
        for step in STEPS:
            torch.manual_seed(100 * r + step)
            cfg = transformers.AutoConfig.for_model("gpt_neox", vocab_size=len(tok), **KW)
            folder = root / name / f"step{step}"
            transformers.GPTNeoXForCausalLM(cfg).save_pretrained(str(folder))
            tok.save_pretrained(str(folder))
        out[name] = root / name
    return out, text


def test_names_and_folders_of_steps(runs, tmp_path):
    folders, _ = runs
    listed = steps.folder_steps(str(folders["weight-seed1"]))
    assert [Path(p).name for p in listed] == ["step0", "step100", "step1000"]  # numeric order
    s = steps.parse_series("weight-seed", str(folders["weight-seed1"]), str(folders["weight-seed2"]))
    assert s.steps == ("0", "100", "1000") and len(s.a) == len(s.b) == 3
    hub = steps.parse_series("w", "EleutherAI/pythia-14m-weight-seed1@step1000\nEleutherAI/pythia-14m-weight-seed1@step2000",
                             "EleutherAI/pythia-14m-weight-seed2@step1000, EleutherAI/pythia-14m-weight-seed2@step2000")
    assert hub.steps == ("1000", "2000")
    assert steps.step_label("EleutherAI/pythia-14m-seed1", 0) == "#1"  # a seed number is not a step
    assert steps.folder_steps(str(listed[0])) == []  # a checkpoint is not a folder of steps


@pytest.mark.parametrize("a,b,message", [
    ("x/step1", "", "give the checkpoints of both runs"),
    ("x/step1\nx/step2", "y/step1", "2 checkpoints for A but 1 for B"),
    ("x/step1\nx/step2", "y/step1\ny/step3", "step 2 pairs A at step 2 with B at step 3"),
    ("x/step1\nx/step1", "y/step1\ny/step1", "listed twice"),
])
def test_series_that_cannot_be_paired_are_refused(a, b, message):
    with pytest.raises(PermergeError, match=message):
        steps.parse_series("s", a, b)


def test_barrier_along_steps_is_computed_once_and_cached(runs, tmp_path):
    from permerge.cache import ResultCache
    from permerge.pipeline import Job
    from permerge.study import PipelineRegistry

    folders, text = runs
    series = [steps.parse_series("weight-seed", str(folders["weight-seed1"]), str(folders["weight-seed2"])),
              steps.parse_series("data-seed", str(folders["data-seed1"]), str(folders["data-seed2"]))]
    base = Job(model_a="", model_b="", data=str(text), tokens=2048, eval_blocks=4, device="cpu")
    opts = AlignOptions(ff=True, attention="head-perm", residual="all")
    cache = ResultCache(str(tmp_path / "cache"))
    first = []
    curves, bars = steps.step_barriers(PipelineRegistry(cache), base, series, opts, lambdas=3,
                                       progress=lambda stage, *a, **k: first.append(stage))
    assert any("statistics" in s for s in first) and any("interpolation" in s for s in first), set(first)
    assert list(bars["series"].unique()) == ["weight-seed", "data-seed"]
    assert len(bars) == 2 * 3 * 2  # series x steps x (vanilla, aligned)
    assert bars["barrier"].notna().all() and set(bars["step"]) == {"0", "100", "1000"}
    assert len(curves) == len(bars) * 3  # three lambda points per curve
    aligned = bars[bars["method"] == opts.label()]
    assert (aligned["function_preserving"]).all()
    # a fresh registry on the same cache computes nothing: every curve comes from the cache
    seen = []
    again_curves, again = steps.step_barriers(PipelineRegistry(cache), base, series, opts, lambdas=3,
                                              progress=lambda stage, *a, **k: seen.append(stage))
    assert again["barrier"].tolist() == bars["barrier"].tolist()
    assert not any("statistics" in s or "interpolation" in s for s in seen), seen
    from permerge import plots_steps

    fig = plots_steps.barrier_along_steps(bars)
    assert len(fig.data) == 4  # two series x two methods
    assert len(plots_steps.curves_along_steps(curves, "data-seed", "vanilla").data) == 3


@pytest.mark.slow
def test_training_steps_page(runs, tmp_path, monkeypatch):
    """Pick and run on one step pair, then the Training steps page on both series."""
    import time

    pytest.importorskip("streamlit")
    from dashboard import state
    from test_families import run_dashboard

    folders, text = runs
    root = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("PERMERGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(root)
    state.registry.clear()
    at = run_dashboard(root, folders["weight-seed1"] / "step1000", folders["weight-seed2"] / "step1000", text)
    at.switch_page("pages/steps.py").run()
    assert not at.exception, [e.value for e in at.exception]
    at.text_area(key="steps_a_weight-seed").set_value(str(folders["weight-seed1"]))
    at.text_area(key="steps_b_weight-seed").set_value(str(folders["weight-seed2"]))
    at.text_area(key="steps_a_data-seed").set_value(str(folders["data-seed1"]))
    at.text_area(key="steps_b_data-seed").set_value(f"{folders['data-seed2']}/step0\n{folders['data-seed2']}/step100")
    at.run()
    assert any("3 checkpoints for A but 2 for B" in e.value for e in at.error)  # a one-line error, nothing runs
    at.text_area(key="steps_b_data-seed").set_value(str(folders["data-seed2"])).run()
    assert not at.error
    [x for x in at.button if x.label == "Compute"][0].click().run()
    t0 = time.time()
    while any(h.active for h in list(state.jobs()._jobs.values())) and time.time() - t0 < 240:
        time.sleep(0.5)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(page_charts(at)) >= 1 + 2 * 2  # the barrier chart, curves per series and method
    state.registry.clear()
