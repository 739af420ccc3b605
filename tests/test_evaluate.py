"""Fixed masks, MLM loss / pseudo-perplexity, interpolation of parameters, the barrier."""
import math

import numpy as np
import pytest
import torch

from conftest import CONFIGS, VOCAB, make_model, write_tokenizer
from permerge import data as D
from permerge.arch import spec_for
from permerge.evaluate import evaluate, mlm_evalset
from permerge.interpolate import barrier, interpolate_state, lambda_grid, mean_sem


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp("tok")
    write_tokenizer(d)
    return AutoTokenizer.from_pretrained(str(d))


def test_masks_are_fixed_and_follow_80_10_10(tok):
    blocks = torch.randint(5, len(VOCAB), (200, 64), generator=torch.Generator().manual_seed(0))
    blocks[:, 0], blocks[:, -1] = tok.cls_token_id, tok.sep_token_id
    m1, m2 = D.mlm_masks(tok, blocks, seed=0), D.mlm_masks(tok, blocks, seed=0)
    assert torch.equal(m1["input_ids"], m2["input_ids"]) and torch.equal(m1["labels"], m2["labels"])
    assert not torch.equal(D.mlm_masks(tok, blocks, seed=1)["labels"], m1["labels"])
    sel = m1["labels"] != -100
    assert not sel[:, 0].any() and not sel[:, -1].any()  # special tokens never selected
    rate = sel.float().mean().item() * 64 / 62
    assert 0.14 < rate < 0.16
    masked = (m1["input_ids"][sel] == tok.mask_token_id).float().mean().item()
    kept = (m1["input_ids"][sel] == blocks[sel]).float().mean().item()
    assert 0.77 < masked < 0.83 and 0.08 < kept < 0.13
    assert torch.equal(m1["input_ids"][~sel], blocks[~sel])


def test_mlm_loss_on_masked_positions_only_equals_full_logits(tok):
    kw = dict(CONFIGS["mlm-untied-h3-dk12"], vocab_size=len(VOCAB))
    model = make_model(3, **kw)
    blocks = torch.randint(5, len(VOCAB), (6, 32), generator=torch.Generator().manual_seed(1))
    ev = mlm_evalset(D.mlm_masks(tok, blocks, seed=0), spec_for(model).inputs, batch_size=4)
    fast = evaluate(model, ev, mlm_head="cls")
    full = evaluate(model, ev)
    assert fast["loss"] == pytest.approx(full["loss"], rel=1e-5)
    # and both equal a direct computation over all masked tokens
    nll, n = 0.0, 0
    with torch.no_grad():
        for b in ev.batches:
            logits = model(input_ids=b["input_ids"]).logits
            sel = b["labels"] != -100
            nll += torch.nn.functional.cross_entropy(logits[sel], b["labels"][sel], reduction="sum").item()
            n += int(sel.sum())
    assert full["loss"] == pytest.approx(nll / n, rel=1e-6)
    assert full["pseudo_perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-6)


def test_interpolation_touches_float_tensors_only():
    a = {"w": torch.ones(3), "ids": torch.arange(3)}
    b = {"w": torch.zeros(3), "ids": torch.arange(3) + 7}
    mid = interpolate_state(a, b, 0.25)
    assert torch.allclose(mid["w"], torch.full((3,), 0.25))
    assert torch.equal(mid["ids"], a["ids"])
    assert torch.equal(interpolate_state(a, b, 1.0)["w"], a["w"])
    assert torch.equal(interpolate_state(a, b, 0.0)["w"], b["w"])


def test_barrier_definition_and_grid():
    grid = lambda_grid(21)
    assert len(grid) == 21 and grid[0] == 0 and grid[-1] == 1 and np.isclose(grid[10], 0.5)
    losses = [2.0, 3.0, 5.0, 4.0, 1.0]
    b, lam = barrier([0, 0.25, 0.5, 0.75, 1], losses, loss_a=1.0, loss_b=2.0)
    assert b == pytest.approx(5.0 - 1.5) and lam == 0.5
    # M shape: the path dips below both ends: barrier is still the max over lambda
    b, lam = barrier([0, 0.5, 1], [1.0, 0.8, 1.2], 1.2, 1.0)
    assert b == pytest.approx(1.2 - 1.1) and lam == 1.0
    m, se = mean_sem([1.0, 2.0, 3.0])
    assert m == 2.0 and se == pytest.approx(1.0 / math.sqrt(3))


def test_exact_pseudo_perplexity_masks_each_token_alone(tok):
    from permerge.evaluate import exact_evalset

    kw = dict(CONFIGS["mlm-tied-h5-dk6"], vocab_size=len(VOCAB))
    model = make_model(4, **kw)
    blocks = torch.randint(5, len(VOCAB), (2, 10), generator=torch.Generator().manual_seed(2))
    blocks[:, 0], blocks[:, -1] = tok.cls_token_id, tok.sep_token_id
    got = evaluate(model, exact_evalset(blocks, tok.all_special_ids, tok.mask_token_id, spec_for(model).inputs), mlm_head="cls")
    nll, n = 0.0, 0
    with torch.no_grad():
        for row in blocks:
            for i in range(1, 9):
                ids = row.clone()
                ids[i] = tok.mask_token_id
                logp = torch.log_softmax(model(input_ids=ids[None]).logits[0, i], -1)
                nll -= logp[row[i]].item()
                n += 1
    assert got["loss"] == pytest.approx(nll / n, rel=1e-5)
    assert got["pseudo_perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-5)


def test_coarse_first_order_and_barrier_standard_error():
    import numpy as np

    from permerge.interpolate import barrier_sem, coarse_first

    order = coarse_first(21)
    assert order[:5] == [20, 0, 10, 5, 15] and sorted(order) == list(range(21))
    assert coarse_first(2) == [1, 0]
    rng = np.random.default_rng(0)
    a, b = rng.normal(2.0, 1.0, 4000), rng.normal(2.2, 1.0, 4000)
    mid = 0.5 * (a + b) + rng.normal(0.5, 1.0, 4000)
    se, n = barrier_sem(mid, a, b)
    assert n == 4000 and abs(se - 1.0 / np.sqrt(4000)) < 0.002
    assert barrier_sem(None, a, b) == (None, None)


def test_curve_points_are_cached_one_by_one_and_shared_between_grids(tiny_mlm_pair, tmp_path):
    """A 5-point curve after a 3-point one evaluates only the 2 new points; the progress callback
    receives the rows evaluated so far, coarse grid first."""
    from permerge.align import AlignOptions
    from permerge.cache import ResultCache
    from permerge.pipeline import Job, Pipeline

    a, b, text = tiny_mlm_pair
    pipe = Pipeline(Job(str(a), str(b), data=str(text), tokens=512, eval_blocks=2, device="cpu"),
                    cache=ResultCache(tmp_path))
    seen = []
    c3 = pipe.curve(AlignOptions(), 3, progress=lambda s, d, t, **i: seen.append([r["lambda"] for r in i.get("rows", [])]))
    assert [x for x in seen if x][:3] == [[1.0], [0.0, 1.0], [0.0, 0.5, 1.0]]
    assert c3.barrier_se is not None and c3.barrier_se > 0 and c3.items > 0
    calls = []
    import permerge.pipeline as P

    real = P.evaluate
    P.evaluate = lambda *a, **k: (calls.append(1), real(*a, **k))[1]
    try:
        c5 = pipe.curve(AlignOptions(), 5)
    finally:
        P.evaluate = real
    assert len(calls) == 2 and c5.rows[2]["loss"] == c3.rows[1]["loss"]


def test_a_folder_of_checkpoints_gives_all_its_pairs(tmp_path):
    """A user's own set of seeds: every sub-folder with a config.json; names told apart."""
    from permerge.errors import DataError
    from permerge.study import folder_pairs, pair_name, short_names

    for s in ("seed1", "seed2", "seed3"):
        (tmp_path / s).mkdir()
        (tmp_path / s / "config.json").write_text("{}")
    (tmp_path / "notes").mkdir()
    pairs = folder_pairs(str(tmp_path))
    assert [(a[-5:], b[-5:]) for a, b in pairs] == [("seed1", "seed2"), ("seed1", "seed3"), ("seed2", "seed3")]
    with pytest.raises(DataError):
        folder_pairs(str(tmp_path / "notes"))
    assert short_names(["/x/m/seed1", "/y/m/seed1"]) == {"/x/m/seed1": "x/m/seed1", "/y/m/seed1": "y/m/seed1"}
    assert pair_name("/x/seed1", "/x/seed2") == "seed1 | seed2"


def test_causal_lm_loss_matches_transformers_labels_loss():
    """The causal-LM loss is next-token cross-entropy exactly as transformers computes it with
    ``labels=input_ids`` (which shifts by one inside the model); a wrong shift would not match."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from permerge.evaluate import causal_evalset

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=61, n_positions=32, n_embd=24, n_head=4, n_layer=2, initializer_range=0.3,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg).eval()
    x = torch.randint(0, cfg.vocab_size, (5, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(input_ids=x, labels=x).loss.item()
        unshifted = torch.nn.functional.cross_entropy(model(input_ids=x).logits.flatten(0, 1), x.flatten()).item()
    assert abs(unshifted - want) > 1e-2  # the comparison can tell a shift error apart
    got = evaluate(model, causal_evalset(x, spec_for(model).inputs, batch_size=2))
    assert abs(got["loss"] - want) < 1e-6 * max(1.0, abs(want)), (got, want)
    assert got["perplexity"] == pytest.approx(math.exp(want), rel=1e-6)
