"""The teaching pages (Start here, See the permutation, the Correlations orderings and histogram) under
Streamlit's AppTest before and after a small run on the bundled default pair, and the figure
builders' shared colours and labels."""
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from conftest import HAVE_PAIR, page_charts  # noqa: E402
from permerge import plots, views  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
_skip_without_pair = pytest.mark.skipif(not HAVE_PAIR, reason="the bundled default pair (mlm-seed1, mlm-seed2) is not built")


def needs_pair(test):  # a real run of the bundled pair: slow (left out by `make test-fast`)
    return pytest.mark.slow(_skip_without_pair(test))


pytestmark = pytest.mark.usefixtures("app_env")  # this module's own result cache (conftest)


def fresh() -> AppTest:
    return AppTest.from_file(str(ROOT / "app.py"), default_timeout=90)


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not [e for e in at.error if "fail" in e.value.lower() or "report" in e.value.lower()], \
        [e.value for e in at.error]


def figures(at) -> list:
    import plotly.io as pio

    return [pio.from_json(c.proto.spec) for c in page_charts(at)]


def array(v) -> np.ndarray:
    """A figure's array, also when it travels as Plotly's typed-array dict (dtype, bdata, shape)."""
    if isinstance(v, dict) and "bdata" in v:
        import base64

        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        shape = v.get("shape")
        return a.reshape([int(x) for x in str(shape).split(",")]) if shape else a
    return np.array(v, dtype=float)


def title_of(fig) -> str:
    return fig.layout.title.text or ""


def page_links(at) -> list[str]:
    return [e.proto.page for e in at.get("page_link")]


# --- without a run -----------------------------------------------------------------------------------

def test_start_page_is_the_default_and_links_into_the_pages():
    at = fresh().run()
    assert_clean(at)
    assert at.title[0].value == "Start here"
    links = page_links(at)
    for page in ("run", "permutation", "correlations", "features", "interpolation", "methods", "data_amount",
                 "export"):
        assert page in links, (page, links)
    text = " ".join(m.value for m in at.markdown)
    assert "Vanilla averaging > Monotonic > Ignore-Heads > Head-Perm" in text
    assert "M-shaped" in text and "residual stream" in text


def test_start_page_without_a_run_says_whose_picture_it_is():
    """Before any run the picture is the bundled measurement in docs/figures, labelled as not yours."""
    at = fresh().run()
    assert at.title[0].value == "Start here"
    figs = figures(at)
    assert len(figs) == 1
    names = {t.name for t in figs[0].data}
    assert {"vanilla", "FF + attn:head-perm"} <= names
    assert any("Not your run" in c.value and "docs/method.md" in c.value for c in at.caption)
    bars = json.loads((ROOT / "docs" / "figures" / "default-pair-barrier.json").read_text())
    assert any(f"{bars['vanilla']['barrier']:.3f}" in m.value for m in at.markdown)


def test_a_settings_link_opens_the_run_page():
    at = fresh()
    at.query_params["tokens"] = "2048"
    at.run()
    assert_clean(at)
    assert at.title[0].value == "Pick and run"


def test_permutation_page_without_result():
    at = fresh().run()
    at.switch_page("pages/permutation.py").run()
    assert_clean(at)
    assert at.title[0].value == "See the permutation"
    assert any("run an alignment first" in i.value for i in at.info)
    assert not page_charts(at)


# --- after a run -------------------------------------------------------------------------------------

def _set(at, label, value):
    [w for w in at.number_input if w.label == label][0].set_value(value)


@pytest.fixture(scope="module")
def ran():
    """The default pair (FF + Head-Perm, function-preserving) with small settings, run to the end."""
    if not HAVE_PAIR:
        pytest.skip("the bundled default pair (mlm-seed1, mlm-seed2) is not built")
    at = fresh().run()
    at.switch_page("pages/run.py").run()
    _set(at, "Alignment tokens", 2048)
    _set(at, "λ points", 3)
    _set(at, "Masked-LM evaluation blocks (128 tokens each)", 4)
    [s for s in at.selectbox if s.label == "Device"][0].set_value("cpu")
    at.run()
    [b for b in at.button if b.label == "Run alignment"][0].click().run()
    t0 = time.time()
    while "run" not in at.session_state and time.time() - t0 < 150:
        time.sleep(1.0)
        at.run()
    assert "run" in at.session_state, "the run did not finish in time"
    at.run()
    assert_clean(at)
    return at


@needs_pair
def test_start_page_shows_this_run(ran):
    at = ran
    at.switch_page("pages/start.py").run()
    assert_clean(at)
    figs = figures(at)
    assert len(figs) == 1
    names = {t.name for t in figs[0].data}
    assert "vanilla" in names and "FF + attn:head-perm" in names
    assert any("your current run" in c.value for c in at.caption)
    assert any("Your pair" in m.value for m in at.markdown)


@needs_pair
def test_permutation_page_steps_and_b_prime_computes_b(ran):
    at = ran
    at.switch_page("pages/permutation.py").run()
    assert_clean(at)
    assert at.selectbox(key="perm_group").value == "att.0"
    ok = [s.value for s in at.success]
    assert any("B′ computes B" in s for s in ok), ok
    assert any("bit for bit" in s for s in ok), ok
    # one unit: the in-projection and out-projection panels, and the permutation matrix
    assert len(page_charts(at)) == 3
    titles = [title_of(f) for f in figures(at)]
    from dashboard.state import registry

    spec = registry().get(at.session_state["run"].job).spec
    touched = [p for p, ax in spec.params_of("att.0") if p.endswith("weight")]
    assert any(any(t.startswith(p) for t in titles) for p in touched), titles
    # one head: under Head-Perm every head of B' is one whole head of B
    at.radio(key="perm_step").set_value("one head").run()
    assert_clean(at)
    assert any("moved as one block" in m.value for m in at.markdown)
    moves = [d.value for d in at.dataframe if "whole block" in d.value.columns][0]
    assert moves["whole block"].all()
    at.radio(key="perm_step").set_value("the whole group").run()
    assert_clean(at)
    at.selectbox(key="perm_group").set_value("ff.1").run()
    assert_clean(at)
    assert any("B′ computes B" in s.value for s in at.success)


@needs_pair
def test_correlation_orderings_change_the_rows_and_keep_the_diagonal(ran):
    at = ran
    at.switch_page("pages/correlations.py").run()
    assert_clean(at)

    def after_z():
        f = [f for f in figures(at) if title_of(f).startswith("att.0: after")][0]
        return array(f.data[0].z).astype(float)

    assert after_z().shape == (64, 64)  # a window by default: bigger cells
    at.slider(key="corr_window_att.0").set_value((0, 128)).run()
    z0 = after_z()
    assert z0.shape == (128, 128)
    at.radio(key="corr_order").set_value(views.ORDERS[1]).run()
    assert_clean(at)
    z1 = after_z()
    assert z0.shape == z1.shape
    assert not np.allclose(z0, z1)  # the rows moved
    assert np.allclose(np.sort(np.diag(z0)), np.sort(np.diag(z1)))  # the matched pairs stay on the diagonal
    assert np.allclose(np.sort(z0.ravel()), np.sort(z1.ravel()))  # same entries, new order
    hist = [f for f in figures(at) if "matched pairs against all other pairs" in title_of(f)]
    assert len(hist) == 1 and len(hist[0].data) == 3
    assert not any("binary_string" in c.value for c in at.caption)


# --- figure builders ---------------------------------------------------------------------------------

def _curves_df(methods):
    rows = [{"method": m, "lambda": lam, "loss": 6 + lam * (1 - lam) * (i + 1), "function_preserving": True}
            for i, m in enumerate(methods) for lam in np.linspace(0, 1, 5)]
    return pd.DataFrame(rows)


def _trace_color(fig, name):
    for t in fig.data:
        if t.name == name or (t.name or "").startswith(name):
            line = getattr(t, "line", None)  # a bar (the per-layer chart's bars) has its colour on the marker
            return line.color if line is not None and line.color else t.marker.color
    raise AssertionError(f"no trace {name}")


def test_vanilla_has_one_colour_in_every_figure_builder():
    df = _curves_df(["vanilla", "FF + attn:head-perm"])
    c = plots.curves(df, "loss")
    band = pd.DataFrame([{"method": m, "lambda": lam, "mean": 6.0, "std_err": 0.1, "pairs": 2}
                         for m in ("FF + attn:head-perm", "FF", "vanilla") for lam in (0, 0.5, 1)])
    b = plots.band(band)
    assert _trace_color(c, "vanilla") == _trace_color(b, "vanilla") == plots.method_color("vanilla")
    assert _trace_color(c, "FF + attn:head-perm") == _trace_color(b, "FF + attn:head-perm")
    # the paper's table names share their options' colours
    table = pd.DataFrame({"method": ["Head-Perm", "Identity"], "barrier": [0.5, 0.6], "std_err": [np.nan, np.nan],
                          "pairs": [1, 1], "function_preserving": ["yes", "yes"]})
    bars = plots.methods_bar(table)
    assert list(bars.data[0].marker.color) == [plots.method_color("FF + attn:head-perm"), plots.method_color("vanilla")]
    # the per-layer chart: before = vanilla, after = the alignment's colour
    lc = plots.layer_corr(pd.DataFrame([{"group": "ff.0", "kind": "ff", "layer": 0, "before": 0.1, "after": 0.5,
                                         "aligned": True}]))
    assert _trace_color(lc, "before") == plots.method_color("vanilla")
    assert _trace_color(lc, "after") == plots.method_color("FF + attn:head-perm")


def test_barrier_labels_do_not_overlap():
    methods = ["vanilla", "FF", "attn:head-perm", "FF + attn:head-perm"]
    df = _curves_df(methods)
    bars = pd.DataFrame([{"method": m, "barrier": 0.25 * (i + 1), "barrier_lambda": 0.5, "loss_a": 6.0,
                          "loss_b": 6.0} for i, m in enumerate(methods)])
    fig = plots.curves(df, "loss", bars)
    labels = [a for a in fig.layout.annotations if "barrier" in (a.text or "")]
    assert len(labels) == 5  # one per method and the endpoint-mean line
    # above the plotting area, one text line (13 px font) apart: neither each other nor the curves
    assert all(a.yref == "paper" and a.y >= 1.0 and a.yanchor == "bottom" for a in labels)
    shifts = sorted(a.yshift for a in labels)
    assert min(np.diff(shifts)) >= 15 and all(a.font.size <= 15 for a in labels)
    assert fig.layout.margin.t >= max(shifts) + 30
    # each barrier is drawn as a segment of its length, from the endpoint mean
    segs = [t for t in fig.data if t.showlegend is False and len(t.y) == 2]
    assert sorted(round(t.y[1] - t.y[0], 6) for t in segs) == [0.25, 0.5, 0.75, 1.0]


def test_amount_of_data_ticks_are_token_counts():
    df = pd.DataFrame({"fraction": [0.01, 0.03, 0.1, 0.3, 1.0], "tokens": [256, 768, 2560, 7680, 25600],
                       "barrier": [0.6, 0.58, 0.55, 0.53, 0.52], "method": "FF + attn:head-perm",
                       "vanilla_barrier": 0.62})
    fig = plots.data_amount(df)
    assert fig.layout.xaxis.type == "log"
    assert list(fig.layout.xaxis.ticktext) == ["256", "768", "2.56k", "7.68k", "25.6k"]
    assert fig.data[0].line.color == plots.method_color("FF + attn:head-perm")


# --- the computations behind the views ----------------------------------------------------------------

def test_cluster_order_is_a_permutation_and_groups_alike_rows():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(2, 30))
    X = np.vstack([base[i % 2] + 0.05 * rng.normal(size=30) for i in range(10)])
    o = views.cluster_order(X)
    assert sorted(o) == list(range(10))
    kinds = [i % 2 for i in o]
    assert kinds == sorted(kinds) or kinds == sorted(kinds, reverse=True)  # the two families sit together
    M, rows, cols = views.ordered(X[:, :10], views.ORDERS[1])
    assert np.allclose(np.diag(M), np.diag(X[:, :10])[rows])


def test_group_weights_and_gather_checks_follow_the_table():
    from tests.conftest import make_model

    from permerge.arch import spec_for
    from permerge.match import match_attention
    from permerge.permute import permute_model

    a, b = make_model(1, hidden_size=24, num_attention_heads=3, intermediate_size=20, num_hidden_layers=1), \
        make_model(2, hidden_size=24, num_attention_heads=3, intermediate_size=20, num_hidden_layers=1)
    spec = spec_for(a)
    rng = np.random.default_rng(0)
    perms = {"ff.0": rng.permutation(20), "att.0": match_attention(rng.normal(size=(24, 24)), 3, "head-perm").perm}
    bp = permute_model(b, spec, perms)
    for g in ("ff.0", "att.0"):
        ws = views.group_weights(spec, views.state_of(a), views.state_of(b), perms, g)
        assert {w.name for w in ws} == {p for p, _ in spec.params_of(g) if p.endswith("weight")}
        for w in ws:
            assert np.array_equal(w.bp, dict(bp.named_parameters())[w.name].detach().numpy())
            assert views.gather_checks(w, perms[g])["all_exact"]
    # with the residual stream permuted too, the other axis moves as well and the checks account for it
    res = rng.permutation(24)
    perms_r = {**perms, **{g: res for g in spec.residual_points}}
    bp_r = permute_model(b, spec, perms_r)
    for g in ("ff.0", "att.0"):
        for w in views.group_weights(spec, views.state_of(a), views.state_of(b), perms_r, g):
            assert w.other is not None
            assert np.array_equal(w.bp, dict(bp_r.named_parameters())[w.name].detach().numpy())
            assert views.gather_checks(w, perms_r[g])["all_exact"]
    broken = views.group_weights(spec, views.state_of(a), views.state_of(b), perms_r, "ff.0")[0]
    broken.bp[0, 0] += 1.0
    assert not views.gather_checks(broken, perms_r["ff.0"])["all_exact"]
    assert all(r["whole block"] for r in views.head_moves(perms["att.0"], 3))
    scattered = np.arange(24)
    scattered[[0, 23]] = scattered[[23, 0]]
    assert not all(r["whole block"] for r in views.head_moves(scattered, 3))


def run_with(**choices) -> AppTest:
    """A fresh session that runs the default pair with the small settings and the given selectbox choices."""
    at = fresh().run()
    at.switch_page("pages/run.py").run()
    _set(at, "Alignment tokens", 2048)
    _set(at, "λ points", 3)
    _set(at, "Masked-LM evaluation blocks (128 tokens each)", 4)
    [s for s in at.selectbox if s.label == "Device"][0].set_value("cpu")
    for label, value in choices.items():
        [s for s in at.selectbox if s.label == label][0].set_value(value)
    at.run()
    [b for b in at.button if b.label == "Run alignment"][0].click().run()
    t0 = time.time()
    while "run" not in at.session_state and time.time() - t0 < 150:
        time.sleep(1.0)
        at.run()
    assert "run" in at.session_state
    return at


@needs_pair
def test_permutation_page_on_a_variant_that_breaks_heads(ran):
    """Ignore-Heads (same statistics as the run above, from the cache): units leave their heads, the page
    says so and does not claim that B' computes B."""
    at = run_with(Attention="ignore-heads")
    at.switch_page("pages/permutation.py").run()
    assert_clean(at)
    moves = [d.value for d in at.dataframe if "whole block" in d.value.columns][0]
    assert not moves["whole block"].all()
    assert not any("B′ computes B" in s.value for s in at.success)
    assert any("not function-preserving" in w.value for w in at.warning)
    assert any("bit for bit" in s.value for s in at.success)  # the gathers themselves are still exact
    broken = int(moves.loc[~moves["whole block"], "head of B′"].iloc[0])
    at.radio(key="perm_step").set_value("one head").run()
    at.number_input(key="perm_head_att.0").set_value(broken).run()
    assert_clean(at)
    assert any("breaks heads apart" in w.value for w in at.warning)


def test_diagonal_summary():
    C = np.full((4, 4), 0.1) + np.diag([0.8, 0.8, 0.8, 0.8])
    C[0, 1] = 0.95  # one row whose best partner is not its match
    s = views.diagonal_summary(C)
    assert s["mean_matched"] == pytest.approx(0.9)
    assert s["share_row_best"] == pytest.approx(0.75)
    assert s["share_other_above_mean_matched"] == pytest.approx(1 / 12)


@needs_pair
def test_permutation_page_with_the_residual_stream_permuted(ran):
    """Residual 'last': the weights' other axis moves too; the checks still hold and B' computes B."""
    at = run_with(**{"Residual stream": "last"})
    at.switch_page("pages/permutation.py").run()
    assert_clean(at)
    ok = [s.value for s in at.success]
    assert any("B′ computes B" in s for s in ok) and any("bit for bit" in s for s in ok), ok
    assert any("which this run permutes too" in c.value for c in at.caption)


@pytest.mark.parametrize("page", ["pages/start.py", "pages/permutation.py", "pages/correlations.py"])
def test_teaching_pages_are_thin_views(page):
    """Their work goes through the job manager (``permerge.views``' work functions); no pipeline call on
    the script thread, no model class, no spelled-out weight name."""
    src = (ROOT / page).read_text()
    for bad in ("BertFor", "run.pipe", ".curve(", ".alignment(", ".stats(", "function_check", "bert.", ".weight\""):
        assert bad not in src, (page, bad)


def test_group_weights_on_a_fused_transposed_layout():
    """GPT-2: Conv1D weights are stored [in, out] and c_attn holds Q, K and V side by side (3 tiles):
    the views read both from the table, and the checks hold."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from permerge.arch import spec_for
    from permerge.match import match_attention
    from permerge.permute import permute_model

    def make(seed):
        import torch

        torch.manual_seed(seed)
        return GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=12, n_head=3, n_inner=20,
                                          n_layer=1)).eval()

    a, b = make(1), make(2)
    spec = spec_for(a)
    rng = np.random.default_rng(0)
    perms = {"ff.0": rng.permutation(20), "att.0": match_attention(rng.normal(size=(12, 12)), 3, "head-perm").perm}
    bp = dict(permute_model(b, spec, perms).named_parameters())
    for g in ("ff.0", "att.0"):
        ws = views.group_weights(spec, views.state_of(a), views.state_of(b), perms, g)
        assert {w.role for w in ws} == {"in", "out"}
        for w in ws:
            assert np.array_equal(w.bp, bp[w.name].detach().numpy())
            assert views.gather_checks(w, perms[g])["all_exact"]
            if spec.layouts.get(w.name) == "conv1d":
                assert w.axis == (1 if w.role == "in" else 0)
    fused = [w for w in views.group_weights(spec, views.state_of(a), views.state_of(b), perms, "att.0") if w.tiles > 1]
    assert fused and fused[0].tiles == 3 and len(fused[0].index) == 36
    assert views.tile_ranges([(0, 4)], 12, 3) == [(0, 4), (12, 16), (24, 28)]
