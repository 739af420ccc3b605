"""The statistics pass's forward size, chosen from the model's widths so that one forward's memory
stays bounded: batches cut into smaller forwards (and merged into larger ones) give the same
statistics, and the size shrinks as the model widens."""
import numpy as np
import torch

from conftest import CONFIGS, make_model, random_batches
from permerge.arch import spec_for
from permerge.stats import FORWARD_BYTES, MAX_FORWARD_TOKENS, MIN_FORWARD_TOKENS, collect_stats, forward_tokens


def _meta_bert(**kw):
    from transformers import BertConfig, BertForMaskedLM

    with torch.device("meta"):  # the architecture without its weights
        return BertForMaskedLM(BertConfig(vocab_size=1024, **kw))


def _per_token_bytes(spec):
    sizes = [g.size for g in spec.groups.values() if not g.per_sentence]
    return 4 * sum(sizes)  # model A's captured features alone, in float32


def test_forward_size_follows_the_widths_and_bounds_the_features_held():
    base = spec_for(_meta_bert(hidden_size=768, num_attention_heads=12, intermediate_size=3072, num_hidden_layers=12))
    large = spec_for(_meta_bert(hidden_size=1024, num_attention_heads=16, intermediate_size=4096, num_hidden_layers=24))
    n_base, n_large = forward_tokens(base), forward_tokens(large)
    # bert-base: several thousand tokens (not a fixed 8192), and the features held stay in budget
    assert 3000 <= n_base <= 8000
    assert n_base * _per_token_bytes(base) <= FORWARD_BYTES
    assert MIN_FORWARD_TOKENS <= n_large < n_base / 2
    assert n_large * _per_token_bytes(large) <= FORWARD_BYTES
    tiny = spec_for(make_model(1, **CONFIGS["mlm-tied-h5-dk6"]))
    assert forward_tokens(tiny) == MAX_FORWARD_TOKENS
    assert forward_tokens(base, budget=FORWARD_BYTES // 2) < n_base  # the budget sets it


def _rows_per_forward(model, fn):
    seen = []
    h = model.bert.embeddings.register_forward_hook(lambda m, a, out: seen.append(out.shape[0]))
    try:
        return fn(), seen
    finally:
        h.remove()


def test_a_batch_larger_than_the_forward_size_is_cut_with_the_same_statistics(monkeypatch):
    """A batch of 8 sequences over a forward size of 3 sequences runs as forwards of 3, 3 and 2, on
    the CPU by default too, with the same statistics and snapshots as uncut."""
    import permerge.stats as S

    kw = CONFIGS["mlm-untied-h3-dk12"]
    a, b = make_model(1, **kw), make_model(2, **kw)
    spec = spec_for(a)
    batches = random_batches(4, batch=8, seed=5)  # 8 x 16 tokens each
    whole, seen = _rows_per_forward(a, lambda: collect_stats(a, b, spec, batches, fractions=(0.5, 1.0)))
    assert seen == [8, 8, 8, 8]
    monkeypatch.setattr(S, "MIN_FORWARD_TOKENS", 1)
    budget = _budget_for(spec, 3 * 16)  # forwards of 3 sequences of 16 tokens
    cut, seen = _rows_per_forward(a, lambda: collect_stats(a, b, spec, batches, fractions=(0.5, 1.0),
                                                           forward_budget=budget))
    assert seen == [3, 3, 2] * 4
    assert cut.tokens == whole.tokens and cut.snapshot_tokens == whole.snapshot_tokens
    for g in spec.groups:
        assert cut.points[g].n == whole.points[g].n
        np.testing.assert_allclose(cut.points[g].correlation(), whole.points[g].correlation(), atol=1e-6)
        np.testing.assert_allclose(cut.at(0.5)[g].correlation(), whole.at(0.5)[g].correlation(), atol=1e-6)
    # an explicit forward size cuts large batches alike
    _, seen = _rows_per_forward(a, lambda: collect_stats(a, b, spec, batches, fractions=(1.0,), batch_tokens=5 * 16))
    assert seen == [4, 4] * 4  # even slices of at most 5


def _budget_for(spec, tokens):
    """The budget whose forward size is ``tokens``."""
    from permerge.stats import forward_tokens as ft

    lo, hi = 1, 1 << 40
    while lo < hi:
        mid = (lo + hi) // 2
        if ft(spec, budget=mid) >= tokens:
            hi = mid
        else:
            lo = mid + 1
    assert ft(spec, budget=lo) == tokens
    return lo
