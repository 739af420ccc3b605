"""Assignment variants against brute force; planted permutations are recovered exactly."""
import itertools

import numpy as np
import pytest

from conftest import CONFIGS, make_model, random_batches
from permerge.align import AlignOptions, compute_alignment
from permerge.arch import spec_for
from permerge.match import assign, match_attention
from permerge.permute import permute_model
from permerge.stats import collect_stats


def brute_force(C):
    n = C.shape[0]
    best = max(itertools.permutations(range(n)), key=lambda p: sum(C[i, p[i]] for i in range(n)))
    return np.array(best)


@pytest.mark.parametrize("seed", range(5))
def test_assign_agrees_with_brute_force(seed):
    C = np.random.default_rng(seed).normal(size=(6, 6))
    p = assign(C)
    assert np.isclose(C[np.arange(6), p].sum(), C[np.arange(6), brute_force(C)].sum())
    pa = assign(C, absolute=True)
    assert np.isclose(np.abs(C)[np.arange(6), pa].sum(), np.abs(C)[np.arange(6), brute_force(np.abs(C))].sum())


def head_respecting_perms(H, dk):
    for outer in itertools.permutations(range(H)):
        for inners in itertools.product(itertools.permutations(range(dk)), repeat=H):
            yield np.concatenate([outer[h] * dk + np.array(inners[h]) for h in range(H)])


@pytest.mark.parametrize("seed", range(4))
def test_head_perm_is_the_best_head_respecting_permutation(seed):
    H, dk = 3, 2
    C = np.random.default_rng(seed).normal(size=(H * dk, H * dk))
    best = max(C[np.arange(H * dk), p].sum() for p in head_respecting_perms(H, dk))
    m = match_attention(C, H, "head-perm")
    assert np.isclose(C[np.arange(H * dk), m.perm].sum(), best)
    # monotonic: best over permutations that keep every head in place
    mono = max(C[np.arange(H * dk), p].sum() for p in head_respecting_perms(H, dk)
               if all(p[h * dk] // dk == h for h in range(H)))
    assert np.isclose(C[np.arange(H * dk), match_attention(C, H, "monotonic").perm].sum(), mono)
    # ignore-heads: the unconstrained optimum, never worse than head-perm
    ign = match_attention(C, H, "ignore-heads").perm
    assert np.isclose(C[np.arange(H * dk), ign].sum(), C[np.arange(H * dk), brute_force(C)].sum())
    assert m.head_cost.shape == (H, H)


def test_head_perm_recovers_planted_head_permutation():
    """Heads shuffled and units shuffled inside heads: Head-Perm finds both levels exactly."""
    H, dk = 5, 6
    rng = np.random.default_rng(0)
    outer = rng.permutation(H)
    planted = np.concatenate([outer[h] * dk + rng.permutation(dk) for h in range(H)])
    C = rng.uniform(-0.3, 0.3, size=(H * dk, H * dk))
    C[np.arange(H * dk), planted] = 0.9
    m = match_attention(C, H, "head-perm")
    np.testing.assert_array_equal(m.perm, planted)
    np.testing.assert_array_equal(m.outer, outer)


def test_model_permuted_by_known_permutation_is_aligned_back_exactly():
    """B = A with a known random head-respecting / FF permutation: alignment finds its inverse,
    and the correlation after alignment is 1 on the diagonal."""
    kw = CONFIGS["cls3-h7-dk4"]
    a = make_model(1, **kw)
    spec = spec_for(a)
    rng = np.random.default_rng(3)
    perms = {}
    for name, g in spec.groups.items():
        if g.kind == "att":
            dk = g.size // g.heads
            o = rng.permutation(g.heads)
            perms[name] = np.concatenate([o[h] * dk + rng.permutation(dk) for h in range(g.heads)])
        elif g.kind in ("ff", "pooler"):
            perms[name] = rng.permutation(g.size)
    res = rng.permutation(spec.hidden)
    perms.update({p: res for p in spec.residual_points})
    b = permute_model(a, spec, perms)
    stats = collect_stats(a, b, spec, random_batches(3, seed=1), fractions=(1.0,))
    al = compute_alignment(spec, stats.points, AlignOptions(attention="head-perm", residual="all", pooler=True))
    for name, g in al.groups.items():
        np.testing.assert_array_equal(np.argsort(perms[name]), g.perm, err_msg=name)
        assert g.corr_after > 1 - 1e-6, name
        assert g.corr_before < 0.9, name


@pytest.mark.parametrize("opts", [AlignOptions(attention="head-perm", residual="all", pooler=True),
                                  AlignOptions(attention="ignore-heads", residual="separate", absolute=True),
                                  AlignOptions(ff=False, attention="monotonic", residual="first")])
def test_concurrent_assignments_equal_one_after_another(opts):
    kw = CONFIGS["cls3-h7-dk4"]
    a, b = make_model(1, **kw), make_model(2, **kw)
    spec = spec_for(a)
    stats = collect_stats(a, b, spec, random_batches(2, seed=4), fractions=(1.0,))
    seen = []
    one = compute_alignment(spec, stats.points, opts, workers=1)
    many = compute_alignment(spec, stats.points, opts, workers=4,
                             progress=lambda stage, done, total, group=None: seen.append((done, total, group)))
    assert list(one.groups) == list(many.groups) == list(spec.groups)
    for name, g in one.groups.items():
        h = many.groups[name]
        np.testing.assert_array_equal(g.perm, h.perm, err_msg=name)
        assert (g.aligned, g.corr_before, g.corr_after) == (h.aligned, h.corr_before, h.corr_after)
        if g.head_cost is not None:
            np.testing.assert_array_equal(g.head_cost, h.head_cost)
    assert [d for d, _, _ in seen] == list(range(1, len(spec.groups) + 1))
    assert sorted(g for _, _, g in seen) == sorted(spec.groups)


def test_a_raising_progress_callback_stops_the_assignments():
    kw = CONFIGS["mlm-tied-h5-dk6"]
    a, b = make_model(1, **kw), make_model(2, **kw)
    spec = spec_for(a)
    stats = collect_stats(a, b, spec, random_batches(1), fractions=(1.0,))

    def stop(*_, **__):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compute_alignment(spec, stats.points, AlignOptions(residual="all"), workers=3, progress=stop)
