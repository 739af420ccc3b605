"""Weight matching (permerge.weight_match): generic over every family table, exact on a permuted
copy, monotone in its objective, function-preserving where the rules say so, independent of the
thread count; and its options on the command line."""
import math

import numpy as np
import pytest
import torch

from conftest import random_valid_perms
from test_families import CASES, PAIR_MODELS, TOL, make, probe, saved_pair  # noqa: F401 (fixture)
from permerge.align import AlignOptions
from permerge.arch import spec_for
from permerge.errors import PermergeError
from permerge.match import ATTENTION_VARIANTS, RESIDUAL_VARIANTS
from permerge.permute import logit_error, permute_model
from permerge.weight_match import WeightMatcher, weight_alignment


def options(spec, **kw) -> AlignOptions:
    return AlignOptions(**{"pooler": bool(spec.groups_of("pooler")), "matcher": "weight", **kw})


def permuted_copy(a, spec, seed: int, noise: float):
    """B = A with every group's units permuted (a valid, function-preserving permutation) plus noise."""
    perms = random_valid_perms(spec, seed)
    b = permute_model(a, spec, perms)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(torch.randn(p.shape, generator=g) * noise * p.detach().std(correction=0))
    return b, perms


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_permuted_copy_is_aligned_back_exactly(case):
    a = make(case, 1)
    spec = spec_for(a)
    b, perms = permuted_copy(a, spec, seed=3, noise=0.02)
    al, trace = weight_alignment(spec, a, b, options(spec, residual="all"))
    for g in spec.groups:  # row i of B' is row perms^-1[i] of B, i.e. row i of A
        assert np.array_equal(al.perms[g], np.argsort(perms[g])), (case, g)
        assert al.groups[g].aligned
    assert trace.converged and trace.objective[-1] > trace.objective[0]
    att = spec.groups_of("att")[0]
    assert al.groups[att.name].outer is not None  # head-perm keeps heads: a head assignment per group


@pytest.mark.parametrize("case", ["bert-mlm-h5-dk6", "electra-gen-untied-e20-h3-dk12"])
@pytest.mark.parametrize("residual", RESIDUAL_VARIANTS)
def test_the_objective_never_decreases(case, residual):
    """Two independent models (nothing to recover): J after every sweep is at least J before it,
    including the residual variants under which one weight carries a coordinate on both axes."""
    a, b = make(case, 1), make(case, 2)
    spec = spec_for(a)
    m = WeightMatcher(spec, dict(a.named_parameters()), dict(b.named_parameters()), options(spec, residual=residual))
    with torch.no_grad():
        trace = m.run()
        final = m.objective()
    J = trace.objective
    assert len(J) == trace.sweeps + 1 and J[-1] == final
    assert all(later >= earlier for earlier, later in zip(J, J[1:])), J
    assert J[-1] > J[0]


PRESERVING = [(att, res) for att in ATTENTION_VARIANTS for res in RESIDUAL_VARIANTS
              if att != "ignore-heads" and res != "separate"]


# one case per family (and the classifiers' pooler): every table's weights, every preserving variant
ONE_PER_FAMILY = ["bert-cls-h7-dk4", "roberta-mlm-untied-h3-dk12", "distilbert-mlm-tied-h5-dk6",
                  "gpt2-lm-tied-h5-dk6", "electra-gen-untied-e20-h3-dk12"]


@pytest.mark.parametrize("case", ONE_PER_FAMILY)
def test_every_preserving_variant_reproduces_b(case):
    a, b = make(case, 1), make(case, 2)
    spec = spec_for(a)
    x = probe(spec)
    for att, res in PRESERVING:
        opts = options(spec, attention=att, residual=res)
        assert opts.function_preserving
        al, _ = weight_alignment(spec, a, b, opts)
        err = logit_error(b, permute_model(b, spec, al.perms), x, spec, al.perms)
        assert err["max_rel_logit_error"] < TOL, (case, att, res, err)
        moved = [g for g, r in al.groups.items() if r.aligned and not np.array_equal(r.perm, np.arange(len(r.perm)))]
        assert moved, (case, att, res)  # something was matched, not the identity everywhere
        for g in spec.groups_of("att"):
            perm, dk = al.perms[g.name], g.size // g.heads
            assert (perm.reshape(g.heads, dk) // dk == (perm.reshape(g.heads, dk) // dk)[:, :1]).all()
            if att == "monotonic":
                assert np.array_equal(perm.reshape(g.heads, dk) // dk, np.repeat(np.arange(g.heads), dk).reshape(g.heads, dk))


@pytest.mark.parametrize("case", ["bert-mlm-h5-dk6", "gpt2-lm-untied-h3-dk12"])
def test_non_preserving_variants_are_flagged_and_change_b(case):
    a, b = make(case, 1), make(case, 2)
    spec = spec_for(a)
    for att, res in (("ignore-heads", "identity"), ("head-perm", "separate")):
        opts = options(spec, attention=att, residual=res)
        assert not opts.function_preserving
        al, _ = weight_alignment(spec, a, b, opts)
        err = logit_error(b, permute_model(b, spec, al.perms), probe(spec), spec, al.perms)
        assert err["max_rel_logit_error"] > 1e-3, (case, att, res)


def test_the_result_does_not_depend_on_the_thread_count():
    from conftest import make_model

    kw = dict(hidden_size=64, num_attention_heads=4, intermediate_size=256, num_hidden_layers=2)
    a, b = make_model(1, **kw), make_model(2, **kw)
    spec = spec_for(a)
    before = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            al, trace = weight_alignment(spec, a, b, options(spec, residual="all"))
            runs.append((al.perms, trace.objective))
    finally:
        torch.set_num_threads(before)
    (p0, j0), *rest = runs
    for p, j in rest:
        assert all(np.array_equal(p0[g], p[g]) for g in p0)
        assert j == pytest.approx(j0, rel=1e-12)  # the same sweeps; sums in float64 round by thread count


def test_options_that_do_not_apply_to_weight_matching_are_refused():
    with pytest.raises(PermergeError, match="absolute"):
        AlignOptions(matcher="weight", absolute=True)
    with pytest.raises(PermergeError, match="unknown matcher"):
        AlignOptions(matcher="gradient")
    # nothing to align: vanilla whichever matcher is named
    assert AlignOptions(ff=False, attention="vanilla", matcher="weight").matcher == "activation"
    opts = AlignOptions(matcher="weight")
    assert opts.label().startswith("weights: ") and opts.to_dict()["matcher"] == "weight"
    assert "matcher" not in AlignOptions().to_dict()  # activation keys and reports are as before


ZOO = "permerge/zoo/checkpoints/mlm-seed"
TEXT = "permerge/zoo/data/eval.txt"


@pytest.mark.parametrize("argv, message", [
    (["align", ZOO + "1", ZOO + "2", "--out", "{out}"], "--data is required for activation matching"),
    (["align", ZOO + "1", ZOO + "2", "--matcher", "weight", "--absolute", "--out", "{out}"], "--absolute"),
    (["align", ZOO + "1", ZOO + "2", "--matcher", "weight", "--exclude-special", "--out", "{out}"], "--exclude-special"),
    (["interpolate", ZOO + "1", ZOO + "2", "--matcher", "weight", "--data", TEXT, "--tokens", "100", "--out", "{out}"],
     "--tokens"),
    (["interpolate", ZOO + "1", ZOO + "2", "--matcher", "weight", "--out", "{out}"], "give --eval-data"),
    (["align", ZOO + "1", ZOO + "2", "--matcher", "weights", "--out", "{out}"], "invalid choice"),
])
def test_bad_combinations_are_one_line_errors(argv, message, tmp_path, capsys, monkeypatch):
    import permerge.pipeline
    from permerge.cli import main

    monkeypatch.setattr(permerge.pipeline, "load_pair", lambda *a, **k: pytest.fail("loaded weights before refusing"))
    out = tmp_path / "out"
    assert main([x.replace("{out}", str(out)) for x in argv] + ["--no-cache", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not out.exists()


def test_cli_align_without_data_on_the_bundled_pair(tmp_path):
    import json

    from safetensors.torch import load_file

    from permerge.cli import main

    out = tmp_path / "al"
    assert main(["align", ZOO + "1", ZOO + "2", "--matcher", "weight", "--out", str(out), "--no-cache", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["options"]["matcher"] == "weight" and report["data"] is None
    assert report["equivalent"] and report["max_rel_logit_error"] < TOL
    J = report["weight_matching"]["objective_per_sweep"]
    assert report["weight_matching"]["converged"] and J[-1] > J[0]
    perms = load_file(str(out / "permutations.safetensors"))
    assert not torch.equal(perms["ff.0"], torch.arange(len(perms["ff.0"])))
    assert torch.equal(perms["res.emb"], torch.arange(len(perms["res.emb"])))  # residual identity by default


def test_pipeline_caches_weight_matching_by_matcher(tmp_path):
    from permerge.cache import ResultCache
    from permerge.pipeline import Job, Pipeline

    cache = ResultCache(tmp_path / "cache")
    try:
        job = Job(ZOO + "1", ZOO + "2", None, eval_data=TEXT, eval_blocks=4)
        pipe = Pipeline(job, cache=cache)
        weight = pipe.alignment(AlignOptions(matcher="weight"))
        again = Pipeline(job, cache=cache).alignment(AlignOptions(matcher="weight"))
        assert all(np.array_equal(weight.perms[g], again.perms[g]) for g in weight.perms)
        assert again.trace.objective == weight.trace.objective
        with pytest.raises(PermergeError, match="need alignment data"):
            pipe.alignment(AlignOptions())  # activation matching on a pipeline without data
        # the curve of the weight matcher evaluates on --eval-data alone and is cached under the matcher
        c = pipe.curve(AlignOptions(matcher="weight"), 3)
        assert c.method.startswith("weights: ") and c.function_preserving and math.isfinite(c.barrier)
        assert c.rows[0]["loss"] == pytest.approx(c.loss_b, rel=1e-5)
    finally:
        cache.close()


@pytest.mark.slow
def test_cli_interpolate_with_weight_matching_on_other_families(saved_pair, tmp_path):  # noqa: F811
    import json

    import pandas as pd

    from permerge.cli import main

    family, a, b, text = saved_pair
    out = tmp_path / "curve"
    assert main(["interpolate", str(a), str(b), "--matcher", "weight", "--residual", "all", "--eval-data", str(text),
                 "--eval-blocks", "8", "--lambdas", "3", "--out", str(out), "--no-cache", "--quiet"]) == 0
    df = pd.read_csv(out / "curve.csv")
    van = df[df.method == "vanilla"].sort_values("lambda")
    al = df[df.method != "vanilla"].sort_values("lambda")
    assert list(al.method.unique()) == ["weights: FF + attn:head-perm + res:all"]
    assert al["loss"].iloc[0] == pytest.approx(van["loss"].iloc[0], rel=1e-5)  # B' computes B
    summary = json.loads((out / "barrier.json").read_text())
    assert len(summary) == 2, (family, summary)


def test_feature_correlations_of_weight_matching_come_from_the_statistics():
    """The Feature correlation view measures weight-matched permutations on the features, as it
    does activation-matched ones (the weight cosines stay in report.json)."""
    from permerge.align import compute_alignment
    from permerge.compare import agreement, matcher_options, with_feature_correlations
    from permerge.stats import collect_stats
    from test_families import batches

    a, b = make("bert-mlm-h5-dk6", 1), make("bert-mlm-h5-dk6", 2)
    spec = spec_for(a)
    points = collect_stats(a, b, spec, batches(spec), fractions=(1.0,)).points
    act, wgt = matcher_options(AlignOptions(residual="all"))
    al_a = compute_alignment(spec, points, act)
    al_w, _ = weight_alignment(spec, a, b, wgt)
    feat = with_feature_correlations(al_w, spec, points)
    for g, r in feat.groups.items():
        assert np.array_equal(r.perm, al_w.perms[g])
        assert r.corr_before == pytest.approx(al_a.groups[g].corr_before, abs=1e-12)  # the same diagonal
    # the activation matcher maximises the matched correlation: weight matching cannot beat it per group
    for g in spec.groups_of("ff"):
        assert feat.groups[g.name].corr_after <= al_a.groups[g.name].corr_after + 1e-12
    agree = agreement(al_a, al_w, spec)
    assert set(agree["group"]) == set(spec.groups)  # every group is aligned by both under residual All
    assert agree["agree"].between(0, 1).all() and (agree["chance"] == 1 / agree["units"]).all()
    same = agreement(al_a, al_a, spec)
    assert (same["agree"] == 1).all() and (same.loc[same.kind == "att", "heads_agree"] == 1).all()


def test_both_matchers_agree_fully_on_a_permuted_copy():
    """The two matchers share one convention: on B = A permuted (plus a little noise) both find the
    inverse permutation, so every group agrees on every unit and head."""
    from permerge.align import compute_alignment
    from permerge.compare import agreement, matcher_options
    from permerge.stats import collect_stats
    from test_families import batches

    a = make("bert-mlm-h5-dk6", 1)
    spec = spec_for(a)
    b, _ = permuted_copy(a, spec, seed=4, noise=0.01)
    act, wgt = matcher_options(AlignOptions(residual="all"))
    al_a = compute_alignment(spec, collect_stats(a, b, spec, batches(spec), fractions=(1.0,)).points, act)
    al_w, _ = weight_alignment(spec, a, b, wgt)
    df = agreement(al_a, al_w, spec)
    assert len(df) == len(spec.groups) and (df["agree"] == 1).all()
    assert (df.loc[df.kind == "att", "heads_agree"] == 1).all()
