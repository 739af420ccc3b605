"""Streaming statistics against a float64 reference from stored activations; additivity."""
import numpy as np
import pytest
import torch

from conftest import CONFIGS, make_model, random_batches
from permerge.arch import spec_for
from permerge.errors import StatisticsError
from permerge.stats import PairStats, collect_stats, pooled


def reference_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    ac, bc = a - a.mean(0), b - b.mean(0)
    cov = ac.T @ bc / len(a)
    sa, sb = np.sqrt((ac ** 2).mean(0)), np.sqrt((bc ** 2).mean(0))
    out = cov / np.outer(np.where(sa > 0, sa, 1), np.where(sb > 0, sb, 1))
    out[sa == 0, :] = 0
    out[:, sb == 0] = 0
    return out


def stored_features(model, spec, batches, group):
    """Reference path: keep every activation (what the library must NOT do)."""
    grp = spec.groups[group]
    mod = dict(model.named_modules())[grp.capture]
    rows = []
    for batch in batches:
        got = {}
        if grp.capture_io == "input":
            h = mod.register_forward_pre_hook(lambda m, args: got.setdefault("x", args[0]))
        else:
            h = mod.register_forward_hook(lambda m, args, out: got.setdefault("x", out))
        with torch.no_grad():
            model(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
        h.remove()
        x = got["x"]
        rows.append(x.reshape(x.shape[0], -1) if grp.per_sentence else x[batch["attention_mask"].bool()])
    return torch.cat(rows).double().numpy()


@pytest.mark.parametrize("name", ["mlm-untied-h3-dk12", "cls3-h7-dk4"])
def test_statistics_match_float64_reference(name):
    kw = CONFIGS[name]
    a, b = make_model(1, **kw), make_model(2, **kw)
    spec = spec_for(a)
    batches = random_batches(4, seed=5)
    res = collect_stats(a, b, spec, batches, fractions=(1.0,))
    assert res.tokens == sum(int(x["attention_mask"].sum()) for x in batches)
    for g in spec.groups:
        fa, fb = stored_features(a, spec, batches, g), stored_features(b, spec, batches, g)
        s = res.points[g]
        assert s.n == len(fa)
        np.testing.assert_allclose(s.mean_a().numpy(), fa.mean(0), atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(s.mean_b().numpy(), fb.mean(0), atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(s.correlation(), reference_corr(fa, fb), atol=2e-5)


def test_halves_sum_to_whole_and_snapshots_are_prefixes():
    kw = CONFIGS["mlm-tied-h5-dk6"]
    a, b = make_model(1, **kw), make_model(2, **kw)
    spec = spec_for(a)
    batches = random_batches(4, seed=9)
    whole = collect_stats(a, b, spec, batches, fractions=(0.5, 1.0))
    first = collect_stats(a, b, spec, batches[:2], fractions=(1.0,))
    second = collect_stats(a, b, spec, batches[2:], fractions=(1.0,))
    for g in spec.groups:
        s = first.points[g] + second.points[g]
        w = whole.points[g]
        assert s.n == w.n
        # equal up to the float32 rounding of the per-batch products (the halves use other shifts)
        np.testing.assert_allclose(s.correlation(), w.correlation(), atol=1e-6)
        np.testing.assert_allclose(s.reshifted(w.shift_a, w.shift_b).cross.numpy(), w.cross.numpy(),
                                   rtol=1e-5, atol=1e-6 * float(w.cross.abs().max()))
        # the 50% snapshot is exactly the first half's statistics
        np.testing.assert_allclose(whole.at(0.5)[g].correlation(), first.points[g].correlation(), atol=1e-12)
    assert whole.snapshot_tokens[0.5] == first.tokens


def test_large_offsets_do_not_cancel():
    """Features with a mean 1e4 times their spread: the shift keeps the correlation exact."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4000, 6, generator=g, dtype=torch.float64)
    a = (1e4 + z).float()
    b = (-3e4 + z[:, [2, 0, 1, 5, 4, 3]] + 0.1 * torch.randn(4000, 6, generator=g, dtype=torch.float64)).float()
    s = PairStats.empty(6, 6)
    for i in range(0, 4000, 500):
        s.update(a[i:i + 500], b[i:i + 500])
    np.testing.assert_allclose(s.correlation(), reference_corr(a.numpy(), b.numpy()), atol=1e-4)
    assert (s.correlation()[np.arange(6), [1, 2, 0, 5, 4, 3]] > 0.99).all()


def test_constant_features_correlate_zero_not_nan():
    s = PairStats.empty(3, 3)
    a = torch.randn(50, 3)
    a[:, 1] = 7.0
    b = torch.randn(50, 3)
    b[:, 2] = 0.0
    s.update(a, b)
    C = s.correlation()
    assert np.isfinite(C).all()
    assert (C[1] == 0).all() and (C[:, 2] == 0).all()


def test_nan_features_give_a_clear_error():
    kw = CONFIGS["mlm-tied-h5-dk6"]
    a, b = make_model(1, **kw), make_model(2, **kw)
    with torch.no_grad():
        b.bert.encoder.layer[0].intermediate.dense.bias[0] = float("nan")
    with pytest.raises(StatisticsError, match="non-finite.*model B"):
        collect_stats(a, b, spec_for(a), random_batches(1), fractions=(1.0,))


def test_empty_statistics_error():
    with pytest.raises(StatisticsError, match="no tokens"):
        PairStats.empty(2, 2).correlation()


def test_pooled_is_sum_of_points():
    kw = CONFIGS["mlm-tied-h5-dk6"]
    a, b = make_model(1, **kw), make_model(2, **kw)
    spec = spec_for(a)
    batches = random_batches(2)
    res = collect_stats(a, b, spec, batches, fractions=(1.0,))
    p = pooled([res.points[x] for x in spec.residual_points])
    fa = np.concatenate([stored_features(a, spec, batches, x) for x in spec.residual_points])
    fb = np.concatenate([stored_features(b, spec, batches, x) for x in spec.residual_points])
    np.testing.assert_allclose(p.correlation(), reference_corr(fa, fb), atol=2e-5)


def test_exclude_special_tokens_drops_rows():
    kw = CONFIGS["mlm-tied-h5-dk6"]
    a, b = make_model(1, **kw), make_model(2, **kw)
    batches = random_batches(1)
    batches[0]["special_tokens_mask"][:, 0] = 1
    spec = spec_for(a)
    full = collect_stats(a, b, spec, batches, fractions=(1.0,), groups=["ff.0"])
    excl = collect_stats(a, b, spec, batches, fractions=(1.0,), groups=["ff.0"], exclude_special=True)
    assert excl.points["ff.0"].n == full.points["ff.0"].n - batches[0]["input_ids"].shape[0]
