"""Rotary position embeddings (GPT-NeoX, Llama): the permutations that keep the function are exactly
the ones the tables allow, the checks catch the ones that do not, and both matchers recover a
planted permutation."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import grouped_valid_perms, random_valid_perms, page_charts
from permerge.align import AlignOptions, compute_alignment
from permerge.arch import spec_for
from permerge.permute import equivalence, logit_error, permute_model
from permerge.stats import collect_stats
from permerge.weight_match import weight_alignment
from test_families import CASES, batches, make, probe

TOL = 1e-5
ROPE_CASES = sorted(c for c in CASES if CASES[c][1] in ("gpt_neox", "llama"))
# (case, rotary dims per head expected from its config): 25 % of 8, 50 % of 12, 100 % of 6; Llama: all
ROTARY = {"gpt_neox-lm-rot25-parallel-h4-dk8": 2, "gpt_neox-lm-rot50-sequential-h3-dk12": 6,
          "gpt_neox-lm-rot100-tied-h5-dk6": 6, "gpt_neox-base-rot25-nobias-h2-dk10": 2,
          "llama-lm-gqa-h6-kv2-dk6": 6, "llama-lm-mha-tied-h4-dk8": 8, "llama-lm-gqa-bias-h4-kv1-hd10": 10,
          "llama-base-gqa-h4-kv2-dk6": 6}


@pytest.fixture(params=ROPE_CASES)
def case(request):
    return request.param


def test_tables_fix_the_rotary_dims_and_group_the_heads(case):
    spec = spec_for(make(case, 0))
    cfg = CASES[case][2]
    kv = cfg.get("num_key_value_heads")
    for l in range(spec.num_layers):
        att, qk = spec.groups[f"att.{l}"], spec.groups[f"qk.{l}"]
        assert att.qk == qk.name and qk.kind == "qk" and qk.heads == att.heads
        assert qk.fixed == ROTARY[case], case
        assert att.kv_heads == (kv if kv and kv != att.heads else None)


def _swap_in_head(perm, dk, head, i, j):
    p = perm.copy()
    p[head * dk + i], p[head * dk + j] = p[head * dk + j], p[head * dk + i]
    return p


def test_permuting_a_rotary_dim_is_caught(case):
    """Swapping two rotary dims of one head (in queries and keys alike) changes the function and the
    float64 check says so; swapping two non-rotary dims keeps it (partial rotary only)."""
    b = make(case, 1)
    spec = spec_for(b)
    batch = probe(spec)
    perms = random_valid_perms(spec, 0)
    bp = permute_model(b, spec, perms)
    assert logit_error(b, bp, batch, spec, perms)["max_rel_logit_error"] < TOL
    assert equivalence(b, bp, batch, spec, perms)["equivalent"]
    qk = spec.groups["qk.0"]
    dk = qk.size // qk.heads
    broken = {**perms, "qk.0": _swap_in_head(perms["qk.0"], dk, 0, 0, 1)}  # two rotary dims of head 0
    bad = permute_model(b, spec, broken)
    assert logit_error(b, bad, batch, spec, broken)["max_rel_logit_error"] > 1e-3, case
    assert not equivalence(b, bad, batch, spec, broken)["equivalent"]
    if qk.fixed <= dk - 2:  # two dims RoPE does not turn: free, in queries and keys together
        free = {**perms, "qk.0": _swap_in_head(perms["qk.0"], dk, 0, qk.fixed, qk.fixed + 1)}
        ok = permute_model(b, spec, free)
        assert logit_error(b, ok, batch, spec, free)["max_rel_logit_error"] < TOL
        assert equivalence(b, ok, batch, spec, free)["equivalent"]


def test_value_dims_are_free_and_query_dims_are_not_alone(case):
    """Value dims move alone (with the output projection); moving only the queries' and keys' head
    assignment without the values' breaks the function."""
    b = make(case, 1)
    spec = spec_for(b)
    batch = probe(spec)
    att = spec.groups["att.0"]
    dk = att.size // att.heads
    ident = {g: np.arange(grp.size) for g, grp in spec.groups.items()}
    kv = att.kv_heads or att.heads
    r = att.heads // kv
    p = ident["att.0"]
    for h in range(r):  # every query head of key/value block 0 reads the same values
        p = _swap_in_head(p, dk, h, 0, dk - 1)
    values = {**ident, "att.0": p}
    assert logit_error(b, permute_model(b, spec, values), batch, spec, values)["max_rel_logit_error"] < TOL
    if r > 1:  # one query head's value dims alone: its block's value rows cannot follow
        alone = {**ident, "att.0": _swap_in_head(ident["att.0"], dk, 0, 0, dk - 1)}
        assert logit_error(b, permute_model(b, spec, alone), batch, spec, alone)["max_rel_logit_error"] > 1e-3
    if kv > 1:  # whole key/value blocks swapped in q/k only
        r = att.heads // kv
        blocks = np.roll(np.arange(kv), 1)
        heads = np.concatenate([blocks[s] * r + np.arange(r) for s in range(kv)])
        qk_only = {**ident, "qk.0": np.concatenate([h * dk + np.arange(dk) for h in heads])}
        assert logit_error(b, permute_model(b, spec, qk_only), batch, spec, qk_only)["max_rel_logit_error"] > 1e-3


def test_grouped_query_heads_cannot_leave_their_block():
    """With grouped key/value heads, query heads permute within their block, never across."""
    case = "llama-lm-gqa-h6-kv2-dk6"
    b = make(case, 1)
    spec = spec_for(b)
    batch = probe(spec)
    att = spec.groups["att.0"]
    dk, r = att.size // att.heads, att.heads // att.kv_heads
    ident = {g: np.arange(grp.size) for g, grp in spec.groups.items()}

    def heads(order):
        p = np.concatenate([h * dk + np.arange(dk) for h in order])
        return {**ident, "att.0": p, "qk.0": p.copy()}

    within = heads([1, 2, 0, 3, 5, 4])  # r = 3: inside each block
    assert logit_error(b, permute_model(b, spec, within), batch, spec, within)["max_rel_logit_error"] < TOL
    across = heads([0, 1, 3, 2, 4, 5])  # query heads 2 and 3 trade blocks
    assert logit_error(b, permute_model(b, spec, across), batch, spec, across)["max_rel_logit_error"] > 1e-3
    assert r == 3


def _constraints_hold(spec, perms):
    for name, g in spec.groups.items():
        if g.kind not in ("att", "qk"):
            continue
        dk = g.size // g.heads
        p = perms[name].reshape(g.heads, dk)
        heads = p // dk
        assert (heads == heads[:, :1]).all(), name  # whole heads
        r = g.heads // (g.kv_heads or g.heads)
        inner = p % dk
        for s in range(g.heads // r):
            block = inner[s * r:(s + 1) * r]
            assert (block == block[:1]).all(), name  # one inner permutation per key/value block
            assert len(set(heads[s * r:(s + 1) * r, 0] // r)) == 1, name  # the block moves as a whole
        assert (inner[:, :g.fixed] == np.arange(g.fixed)).all(), name  # rotary dims in place


@pytest.mark.parametrize("attention", ["monotonic", "head-perm"])
def test_matchers_assign_only_what_is_free(case, attention):
    a, b = make(case, 1), make(case, 2)
    spec = spec_for(a)
    stats = collect_stats(a, b, spec, batches(spec), fractions=(1.0,))
    for opts in (AlignOptions(attention=attention, residual="all"),
                 AlignOptions(attention=attention, residual="all", matcher="weight")):
        al = compute_alignment(spec, stats.points, opts) if opts.matcher == "activation" else \
            weight_alignment(spec, a, b, opts, max_sweeps=5)[0]
        _constraints_hold(spec, al.perms)
        bp = permute_model(b, spec, al.perms)
        assert logit_error(b, bp, probe(spec), spec, al.perms)["max_rel_logit_error"] < TOL, (case, opts.label())


def _planted(case):
    """A and B = A permuted by random function-preserving permutations (non-rotary q/k dims moved)."""
    a = make(case, 1)
    spec = spec_for(a)
    rng = np.random.default_rng(5)
    perms = random_valid_perms(spec, 3)
    for l in range(spec.num_layers):
        perms.update(grouped_valid_perms(spec, f"att.{l}", rng))
    return a, permute_model(a, spec, perms), spec, perms


def _recovered(spec, planted, found):
    """B's unit i is A's unit planted[i]; the matchers give A's unit k <- B's unit found[k]."""
    for g, p in planted.items():
        assert np.array_equal(found[g], np.argsort(p)), g


def test_activation_matching_recovers_a_planted_permutation(case):
    a, b, spec, planted = _planted(case)
    stats = collect_stats(a, b, spec, batches(spec, n=3), fractions=(1.0,))
    al = compute_alignment(spec, stats.points, AlignOptions(attention="head-perm", residual="all"))
    _recovered(spec, planted, al.perms)
    qk = spec.groups["qk.0"]
    if qk.fixed < qk.size // qk.heads:  # the non-rotary q/k dims were moved and found
        dk = qk.size // qk.heads
        assert not np.array_equal(planted["qk.0"] % dk, np.tile(np.arange(dk), qk.heads))


def test_weight_matching_recovers_a_planted_permutation(case):
    a, b, spec, planted = _planted(case)
    al, trace = weight_alignment(spec, a, b, AlignOptions(attention="head-perm", residual="all", matcher="weight"))
    assert trace.converged
    _recovered(spec, planted, al.perms)


def test_the_matchers_name_no_family():
    """RoPE and grouped heads reach the matchers as table data: no family, module or weight name."""
    root = Path(__file__).resolve().parents[1] / "permerge"
    words = re.compile(r"gpt_neox|neox|llama|pythia|bert|gpt2|query_key_value|q_proj|rotary_pct", re.I)
    for f in ("match.py", "permute.py", "weight_match.py", "align.py", "stats.py"):
        code = "\n".join(line for line in (root / f).read_text().splitlines() if not line.lstrip().startswith("#"))
        hits = words.findall(code)
        assert not hits, (f, hits[:3])


# --- the dashboard on a tiny GPT-NeoX pair ---------------------------------------------------------------

def _settle(at, state):
    import time

    t0 = time.time()  # pages that compute start a background job: let it finish, then redraw
    while any(h.active for h in list(state.jobs()._jobs.values())) and time.time() - t0 < 60:
        time.sleep(0.3)
    at.run()
    assert not at.exception, [e.value for e in at.exception]


def _head_lines(chart) -> int:
    import json

    fig = json.loads(chart.proto.spec)
    return len(fig.get("layout", {}).get("shapes", []))


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt_neox", "llama"])
def test_dashboard_shows_rope_heads(family, tmp_path, monkeypatch):
    """Pick and run on a GPT-NeoX (partial rotary) / Llama (grouped heads) pair, then the correlation
    heatmaps of the attention and query/key groups with their head blocks, the permutation page of the
    query/key group, the feature correlations and the perplexity curve."""
    import transformers

    pytest.importorskip("streamlit")
    from conftest import write_text
    from dashboard import state
    from test_families import PAIR_MODELS, bpe_tokenizer, run_dashboard

    root = Path(__file__).resolve().parents[1]
    text = write_text(tmp_path / "text.txt")
    cls, model_type, kw, kind = PAIR_MODELS[family][:4]
    tok = bpe_tokenizer(tmp_path / "tok", text.read_text().splitlines(), kind)
    pair = []
    for seed in (11, 12):
        torch.manual_seed(seed)
        model = getattr(transformers, cls)(transformers.AutoConfig.for_model(model_type, vocab_size=len(tok), **kw))
        model.save_pretrained(str(tmp_path / f"m{seed}"))
        tok.save_pretrained(str(tmp_path / f"m{seed}"))
        pair.append(tmp_path / f"m{seed}")
    monkeypatch.setenv("PERMERGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(root)
    state.registry.clear()
    at = run_dashboard(root, pair[0], pair[1], text)
    assert [t.label for t in at.tabs] == ["loss", "perplexity"]
    heads = kw["num_attention_heads"]
    at.switch_page("pages/correlations.py").run()
    _settle(at, state)
    for group in ("att.0", "qk.0"):
        at.selectbox(key="corr_group").set_value(group).run()
        _settle(at, state)
        charts = page_charts(at)
        assert charts and max(_head_lines(c) for c in charts) >= heads - 1, group  # head block lines
    at.switch_page("pages/permutation.py").run()
    _settle(at, state)
    at.selectbox(key="perm_group").set_value("qk.0").run()
    _settle(at, state)
    assert any("bit for bit" in s.value for s in at.success)
    for page in ("pages/features.py", "pages/interpolation.py"):
        at.switch_page(page).run()
        _settle(at, state)
        assert page_charts(at), page
    state.registry.clear()


def test_an_odd_rotary_count_is_rounded_up_as_the_model_does():
    """50 % of a 6-dim head is 3, but the rotary embedding turns pairs: 4 dims rotate.  Dim 3 is
    therefore fixed (moving it breaks the function) and dims 4, 5 are free."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.AutoConfig.for_model("gpt_neox", vocab_size=97, hidden_size=30, num_attention_heads=5,
                                            intermediate_size=20, num_hidden_layers=1, rotary_pct=0.5,
                                            max_position_embeddings=64)
    b = transformers.GPTNeoXForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in b.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    spec = spec_for(b)
    assert spec.groups["qk.0"].fixed == 4
    ident = {g: np.arange(grp.size) for g, grp in spec.groups.items()}
    batch = probe(spec)
    for (i, j), breaks in (((2, 3), True), ((4, 5), False)):
        perms = {**ident, "qk.0": _swap_in_head(ident["qk.0"], 6, 1, i, j)}
        err = logit_error(b, permute_model(b, spec, perms), batch, spec, perms)["max_rel_logit_error"]
        assert (err > 1e-3) if breaks else (err < TOL), (i, j, err)


def test_pair_summary_and_report_text_name_the_fixed_dims(tmp_path):
    from permerge.checkpoints import config_summary
    from permerge.fixed import describe

    neox = make("gpt_neox-lm-rot25-parallel-h4-dk8", 0)
    neox.save_pretrained(str(tmp_path / "neox"))
    s = config_summary(str(tmp_path / "neox"))
    assert s["rotary q/k dims per head (kept in place)"] == "2 of 8"
    assert "key/value heads (each moves with its query heads)" not in s
    text = describe(spec_for(neox))
    assert "first 2 of 8 query/key dims are rotary" in text and "other 6 are permuted" in text
    llama = make("llama-lm-gqa-h6-kv2-dk6", 0)
    llama.save_pretrained(str(tmp_path / "llama"))
    s = config_summary(str(tmp_path / "llama"))
    assert s["rotary q/k dims per head (kept in place)"] == "6 of 6"
    assert s["key/value heads (each moves with its query heads)"] == "2 (3 query heads each)"
    assert "2 key/value heads serve 3 query heads each" in describe(spec_for(llama))
    assert describe(spec_for(make("gpt2-lm-tied-h5-dk6", 0))) is None


def test_feature_correlation_figure_has_a_query_key_panel():
    """Fig. 5 of a RoPE pair shows the query/key groups in a panel of their own."""
    from permerge import plots
    from permerge.study import layer_correlations

    a, b = make("gpt_neox-lm-rot25-parallel-h4-dk8", 1), make("gpt_neox-lm-rot25-parallel-h4-dk8", 2)
    spec = spec_for(a)
    stats = collect_stats(a, b, spec, batches(spec), fractions=(1.0,))
    al = compute_alignment(spec, stats.points, AlignOptions(attention="head-perm"))
    df = layer_correlations(al, spec)
    assert set(df[df["kind"] == "qk"]["group"]) == {"qk.0", "qk.1"}
    assert df[df["kind"] == "qk"]["aligned"].all()
    fig = plots.layer_corr(df)
    assert "query/key (RoPE)" in [a.text for a in fig.layout.annotations]
