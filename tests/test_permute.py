"""B' must compute B: every function-preserving variant, on several random configurations."""
import itertools

import numpy as np
import pytest
import torch

from conftest import CONFIGS, make_model, random_batches, random_valid_perms
from permerge.align import AlignOptions, compute_alignment
from permerge.arch import spec_for
from permerge.match import ATTENTION_VARIANTS, RESIDUAL_VARIANTS
from permerge.permute import logit_error, permute_model
from permerge.stats import collect_stats

TOL = 1e-5


def probe(name):
    return {k: v for k, v in random_batches(1, batch=3, seq=12, seed=7)[0].items() if k != "special_tokens_mask"}


def test_random_valid_permutations_preserve_logits(config_name):
    kw = CONFIGS[config_name]
    b = make_model(1, **kw)
    spec = spec_for(b)
    for seed in range(3):
        bp = permute_model(b, spec, random_valid_perms(spec, seed))
        err = logit_error(b, bp, probe(config_name), spec, random_valid_perms(spec, seed))
        assert err["max_rel_logit_error"] < TOL, (config_name, err)
        # and the permutation really moved weights
        assert any(not torch.equal(p, q) for p, q in zip(b.parameters(), bp.parameters()))


PRESERVING = [(att, res) for att, res in itertools.product(ATTENTION_VARIANTS, RESIDUAL_VARIANTS)
              if att != "ignore-heads" and res != "separate"]


def test_aligned_variants_preserve_logits(config_name):
    """Every function-preserving variant, with permutations found from real statistics."""
    kw = CONFIGS[config_name]
    a, b = make_model(1, **kw), make_model(2, **kw)
    spec = spec_for(a)
    stats = collect_stats(a, b, spec, random_batches(2, seed=3), fractions=(1.0,))
    for att, res in PRESERVING:
        opts = AlignOptions(ff=True, attention=att, residual=res, pooler=kw["head"] == "cls")
        assert opts.function_preserving
        al = compute_alignment(spec, stats.points, opts)
        bp = permute_model(b, spec, al.perms)
        err = logit_error(b, bp, probe(config_name), spec, al.perms)
        assert err["max_rel_logit_error"] < TOL, (config_name, att, res, err)


@pytest.mark.parametrize("att,res", [("ignore-heads", "identity"), ("head-perm", "separate")])
def test_non_preserving_variants_are_flagged_and_change_logits(att, res):
    kw = CONFIGS["mlm-tied-h5-dk6"]
    a, b = make_model(1, **kw), make_model(2, **kw)
    spec = spec_for(a)
    stats = collect_stats(a, b, spec, random_batches(2, seed=3), fractions=(1.0,))
    opts = AlignOptions(attention=att, residual=res)
    assert not opts.function_preserving
    bp = permute_model(b, spec, compute_alignment(spec, stats.points, opts).perms)
    assert logit_error(b, bp, probe("x"))["max_rel_logit_error"] > 1e-3


def _without_mlm_transform():
    """A tied MLM, its spec, a valid permutation set, and the spec with the public code's bug: the
    residual permutation skips cls.predictions.transform."""
    b = make_model(1, **CONFIGS["mlm-tied-h5-dk6"])
    spec = spec_for(b)
    broken_axes = {k: v for k, v in spec.axes.items() if not k.startswith("cls.predictions.transform")}
    return b, spec, random_valid_perms(spec, 0), type(spec)(**{**spec.__dict__, "axes": broken_axes})


def test_forgetting_the_mlm_transform_breaks_equivalence():
    """The public code's bug: a residual permutation that skips cls.predictions.transform."""
    b, spec, perms, broken = _without_mlm_transform()
    assert logit_error(b, permute_model(b, spec, perms), probe("x"))["max_rel_logit_error"] < TOL
    assert logit_error(b, permute_model(b, broken, perms), probe("x"))["max_rel_logit_error"] > 1e-2


def test_spec_covers_every_weight_that_touches_the_residual():
    """A random residual permutation alone must preserve logits: so no residual weight is missed."""
    for name, kw in CONFIGS.items():
        b = make_model(4, **kw)
        spec = spec_for(b)
        res = np.random.default_rng(1).permutation(spec.hidden)
        perms = {p: res for p in spec.residual_points}
        err = logit_error(b, permute_model(b, spec, perms), probe(name), spec, perms)
        assert err["max_rel_logit_error"] < TOL, (name, err)


def test_equivalence_judged_in_float64_no_false_alarm_on_a_wide_model():
    """4 layers of width 256: a correct permutation's float32 logit error reaches about 3e-5 relative
    (float32 rounding), which must not raise the alarm; in float64 it is about 1e-13."""
    from permerge.permute import equivalence

    b = make_model(1, head="mlm", hidden_size=256, num_attention_heads=4, intermediate_size=1024, num_hidden_layers=4)
    spec = spec_for(b)
    perms = random_valid_perms(spec, 0)
    batch = {k: v for k, v in random_batches(1, batch=3, seq=32, seed=7)[0].items() if k != "special_tokens_mask"}
    verdict = equivalence(b, permute_model(b, spec, perms), batch, spec, perms)
    assert verdict["equivalent"] and verdict["max_rel_logit_error_float64"] < 1e-11, verdict


def test_equivalence_copies_the_weights_straight_to_the_cpu(monkeypatch):
    """The float64 check must not duplicate the models' weights on their device first (on a GPU
    that briefly doubled the memory): no parameter or buffer goes through ``deepcopy``."""
    from permerge.permute import _cpu_float64_copy, equivalence

    b = make_model(1, **CONFIGS["mlm-tied-h5-dk6"])
    spec = spec_for(b)
    perms = random_valid_perms(spec, 0)
    bp = permute_model(b, spec, perms)
    copied = []
    real = torch.Tensor.__deepcopy__
    monkeypatch.setattr(torch.Tensor, "__deepcopy__", lambda t, memo: copied.append(t.shape) or real(t, memo))
    monkeypatch.setattr(torch.nn.Parameter, "__deepcopy__",
                        lambda t, memo: copied.append(t.shape) or real(t, memo))
    assert equivalence(b, bp, probe("x"), spec, perms)["equivalent"]
    big = [s for s in copied if s.numel() > 1]
    assert not big, big
    c = _cpu_float64_copy(b)
    assert all(p.dtype == torch.float64 and p.device.type == "cpu" for p in c.parameters())
    assert all(p.dtype == torch.float32 for p in b.parameters())  # the original is untouched
    assert c.get_output_embeddings().weight is c.get_input_embeddings().weight  # ties kept


def test_equivalence_keeps_the_alarm_for_a_real_break():
    from permerge.permute import equivalence

    b, spec, perms, broken = _without_mlm_transform()
    assert equivalence(b, permute_model(b, spec, perms), probe("x"), spec, perms)["equivalent"]
    verdict = equivalence(b, permute_model(b, broken, perms), probe("x"), spec, perms)
    assert not verdict["equivalent"] and verdict["max_rel_logit_error_float64"] > 1e-2, verdict
