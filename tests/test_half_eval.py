"""Half-precision evaluation along lambda: the accuracy bar against float32, the interpolated
weights written in place on the device, and the precision in every curve and point key."""
import copy

import numpy as np
import pytest
import torch

from conftest import CONFIGS, HAVE_PAIR, make_model
from permerge.arch import spec_for
from permerge.evaluate import evaluate, losses_along, mlm_evalset
from permerge.interpolate import barrier, clone_state, interpolate_into, interpolate_state, lambda_grid


@pytest.mark.skipif(not HAVE_PAIR, reason="the bundled default pair is not built")
def test_half_precision_barriers_within_001_nats_of_float32_on_the_bundled_pair():
    """On the CPU bf16 stands in for the CUDA default fp16 (it has fewer significant bits, so the
    bar is harder for it): vanilla and FF + Head-Perm barriers within 0.01 nats of float32 and
    their maxima at the same lambda; the low-precision path really ran (the losses differ).
    Kept small: bf16 products are slow on a CPU."""
    from permerge import data as D
    from permerge import zoo
    from permerge.align import AlignOptions, compute_alignment
    from permerge.checkpoints import load_pair
    from permerge.permute import permute_model
    from permerge.stats import collect_stats

    ca, cb = load_pair(*map(str, zoo.default_pair()))
    tok, spec = cb.tokenizer, spec_for(ca.model)
    align = D.block_batches(D.text_blocks(tok, D.read_text(str(zoo.align_text()))[:60_000]), 16)[:1]
    stats = collect_stats(ca.model, cb.model, spec, align, fractions=(1.0,), precision="fp32")
    bp = permute_model(cb.model, spec, compute_alignment(spec, stats.points, AlignOptions(attention="head-perm")).perms)
    blocks = D.text_blocks(tok, D.read_text(str(zoo.eval_text()))[:30_000])[:2]
    ev = mlm_evalset(D.mlm_masks(tok, blocks), spec.inputs)
    grid = lambda_grid(5)
    work, state_a = copy.deepcopy(ca.model), clone_state(ca.model)
    curves = {}
    for method, model_b in (("vanilla", cb.model), ("aligned", bp)):
        state_b = clone_state(model_b)
        for p in ("fp32", "bf16"):  # lambda = 1 (A) is shared by both curves
            losses = losses_along(work, state_a, state_b, ev, grid[:-1], "cpu", spec.mlm_head, p)
            curves[method, p] = losses + [curves["vanilla", p][-1] if method == "aligned" else
                                          losses_along(work, state_a, state_b, ev, grid[-1:], "cpu", spec.mlm_head, p)[0]]
    for method in ("vanilla", "aligned"):
        got = {p: barrier(grid, curves[method, p], curves[method, p][-1], curves["vanilla", p][0])
               for p in ("fp32", "bf16")}
        assert abs(got["bf16"][0] - got["fp32"][0]) <= 0.01, (method, got)
        assert got["bf16"][1] == got["fp32"][1], (method, got)
        assert got["fp32"][0] > 0.1  # a real barrier, not a flat curve
        assert curves[method, "bf16"] != curves[method, "fp32"]


def test_interpolation_is_written_in_place_and_exact_at_both_ends():
    kw = CONFIGS["mlm-untied-h3-dk12"]
    a, b = make_model(1, **kw), make_model(2, **kw)
    sa, sb = clone_state(a), clone_state(b)
    work = make_model(3, **kw)
    ptrs = {k: v.data_ptr() for k, v in work.state_dict().items()}
    for lam in (0.0, 0.3, 1.0):
        interpolate_into(work, sa, sb, lam)
        ref = interpolate_state(sa, sb, lam)
        for k, v in work.state_dict().items():
            assert v.data_ptr() == ptrs[k]  # the model's own tensors, no new state dict
            torch.testing.assert_close(v, ref[k], rtol=0, atol=1e-6)
            if lam in (0.0, 1.0) and v.is_floating_point():
                assert torch.equal(v, (sa if lam == 1.0 else sb)[k])  # bit for bit


def _random_mlm_evalset(spec, vocab, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (n, 16), generator=g)
    sel = torch.rand(ids.shape, generator=g) < 0.3
    masked = {"input_ids": torch.where(sel, torch.zeros_like(ids), ids), "labels": torch.where(sel, ids, -100)}
    return mlm_evalset(masked, spec.inputs, batch_size=2)


def test_merged_forwards_and_one_read_give_the_same_losses_and_items():
    """Batches merged into larger forwards (as on a GPU) change nothing but rounding; the per-item
    losses come back in evaluation order as one host tensor."""
    kw = CONFIGS["mlm-tied-h5-dk6"]
    model = make_model(1, **kw)
    spec = spec_for(model)
    ev = _random_mlm_evalset(spec, model.config.vocab_size)
    k1, k2 = [], []
    one = evaluate(model, ev, "cpu", spec.mlm_head, keep=k1)
    merged = evaluate(model, ev, "cpu", spec.mlm_head, keep=k2, forward_tokens=10_000)
    assert abs(one["loss"] - merged["loss"]) < 1e-6
    assert len(k2) == 1 and k2[0].dtype == torch.float64 and k2[0].device.type == "cpu"
    np.testing.assert_allclose(torch.cat(k1).numpy(), k2[0].numpy(), atol=1e-5)
    assert len(k2[0]) == sum(int((b["labels"] != -100).sum()) for b in ev.batches)
    low = evaluate(model, ev, "cpu", spec.mlm_head, precision="bf16")
    assert low["loss"] != one["loss"] and abs(low["loss"] - one["loss"]) < 0.05


def test_the_evaluation_precision_separates_cached_curves(tiny_mlm_pair, tmp_path):
    """The job's precision reaches the evaluation along lambda, and fp32 and bf16 curves never share
    a cached point or curve; auto is fp32 on a CPU and shares fp32's."""
    from permerge.align import VANILLA
    from permerge.cache import ResultCache
    import permerge.pipeline as P

    a, b, text = tiny_mlm_pair
    cache = ResultCache(tmp_path)
    pipes = {p: P.Pipeline(P.Job(str(a), str(b), data=str(text), tokens=512, eval_blocks=2, device="cpu", precision=p),
                           cache=cache) for p in ("fp32", "bf16", "auto")}
    keys = {p: (pipe._point_key(VANILLA, 1.0, 0.5), pipe._point_key(VANILLA, 1.0, 1.0)) for p, pipe in pipes.items()}
    assert keys["fp32"] == keys["auto"]
    assert keys["fp32"][0] != keys["bf16"][0] and keys["fp32"][1] != keys["bf16"][1]
    calls = []
    real = P.evaluate
    P.evaluate = lambda *a, **k: (calls.append(k.get("precision")), real(*a, **k))[1]
    try:
        c32 = pipes["fp32"].curve(VANILLA, 3)
        n32 = len(calls)
        c16 = pipes["bf16"].curve(VANILLA, 3)
        n16 = len(calls) - n32
        cauto = pipes["auto"].curve(VANILLA, 3)
    finally:
        P.evaluate = real
    assert n32 == 3 and set(calls[:n32]) == {"fp32"}
    assert n16 == 3 and set(calls[n32:]) == {"bf16"}  # nothing reused from the fp32 curve
    assert len(calls) == n32 + n16  # auto on a CPU: fp32's cached curve
    assert cauto.rows == c32.rows
    assert [r["loss"] for r in c16.rows] != [r["loss"] for r in c32.rows]
    assert abs(c16.barrier - c32.barrier) < 0.05
