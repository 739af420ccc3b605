"""Every family in permerge.arch: B' computes B for every function-preserving variant, on random
small configurations built offline from configs; the non-preserving variants are flagged.

Adding a family adds its cases to CASES below, nothing else."""
import itertools

import numpy as np
import pytest
import torch

from conftest import random_batches, random_valid_perms, page_charts
from permerge.align import AlignOptions, compute_alignment
from permerge.arch import FAMILIES, spec_for
from permerge.arch.spec import axis_index
from permerge.match import ATTENTION_VARIANTS, RESIDUAL_VARIANTS
from permerge.permute import logit_error, permute_model
from permerge.stats import collect_stats

TOL = 1e-5
VOCAB = 97
BERTLIKE = dict(max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
DISTIL = dict(max_position_embeddings=64, dropout=0.0, attention_dropout=0.0)
GPT = dict(n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
NEOX = dict(max_position_embeddings=64, hidden_dropout=0.0, attention_dropout=0.0)
LLAMA = dict(max_position_embeddings=64, attention_dropout=0.0)

# case -> (HF class, model_type, config).  Odd head counts, head widths that are not powers of two,
# tied and untied decoders, classifiers and bare models.
CASES = {
    "bert-mlm-h5-dk6": ("BertForMaskedLM", "bert", dict(hidden_size=30, num_attention_heads=5, intermediate_size=37,
                                                        num_hidden_layers=2, **BERTLIKE)),
    "bert-cls-h7-dk4": ("BertForSequenceClassification", "bert",
                        dict(hidden_size=28, num_attention_heads=7, intermediate_size=40, num_hidden_layers=2,
                             num_labels=3, **BERTLIKE)),
    "roberta-mlm-tied-h5-dk6": ("RobertaForMaskedLM", "roberta",
                                dict(hidden_size=30, num_attention_heads=5, intermediate_size=37, num_hidden_layers=2,
                                     type_vocab_size=1, **BERTLIKE)),
    "roberta-mlm-untied-h3-dk12": ("RobertaForMaskedLM", "roberta",
                                   dict(hidden_size=36, num_attention_heads=3, intermediate_size=50,
                                        num_hidden_layers=3, tie_word_embeddings=False, **BERTLIKE)),
    "roberta-cls-h7-dk4": ("RobertaForSequenceClassification", "roberta",
                           dict(hidden_size=28, num_attention_heads=7, intermediate_size=40, num_hidden_layers=2,
                                num_labels=3, **BERTLIKE)),
    "distilbert-mlm-tied-h5-dk6": ("DistilBertForMaskedLM", "distilbert",
                                   dict(dim=30, n_heads=5, hidden_dim=37, n_layers=2, **DISTIL)),
    "distilbert-mlm-untied-h3-dk12": ("DistilBertForMaskedLM", "distilbert",
                                      dict(dim=36, n_heads=3, hidden_dim=50, n_layers=3, tie_word_embeddings=False,
                                           **DISTIL)),
    "distilbert-cls-h7-dk4": ("DistilBertForSequenceClassification", "distilbert",
                              dict(dim=28, n_heads=7, hidden_dim=40, n_layers=2, num_labels=3, seq_classif_dropout=0.0,
                                   **DISTIL)),
    "gpt2-lm-tied-h5-dk6": ("GPT2LMHeadModel", "gpt2", dict(n_embd=30, n_head=5, n_inner=37, n_layer=2, **GPT)),
    "gpt2-lm-untied-h3-dk12": ("GPT2LMHeadModel", "gpt2", dict(n_embd=36, n_head=3, n_layer=3,
                                                               tie_word_embeddings=False, **GPT)),
    "gpt2-base-h7-dk3": ("GPT2Model", "gpt2", dict(n_embd=21, n_head=7, n_inner=29, n_layer=2, **GPT)),
    "gpt2-cls-h5-dk6": ("GPT2ForSequenceClassification", "gpt2", dict(n_embd=30, n_head=5, n_inner=37, n_layer=2,
                                                                      num_labels=3, pad_token_id=0, **GPT)),
    "electra-gen-tied-e16-h5-dk6": ("ElectraForMaskedLM", "electra",
                                    dict(embedding_size=16, hidden_size=30, num_attention_heads=5, intermediate_size=37,
                                         num_hidden_layers=2, **BERTLIKE)),
    "electra-gen-untied-e20-h3-dk12": ("ElectraForMaskedLM", "electra",
                                       dict(embedding_size=20, hidden_size=36, num_attention_heads=3,
                                            intermediate_size=50, num_hidden_layers=2, tie_word_embeddings=False,
                                            **BERTLIKE)),
    "electra-disc-h7-dk4": ("ElectraForPreTraining", "electra",
                            dict(embedding_size=28, hidden_size=28, num_attention_heads=7, intermediate_size=40,
                                 num_hidden_layers=2, **BERTLIKE)),
    "electra-cls-e12-h5-dk6": ("ElectraForSequenceClassification", "electra",
                               dict(embedding_size=12, hidden_size=30, num_attention_heads=5, intermediate_size=37,
                                    num_hidden_layers=2, num_labels=3, **BERTLIKE)),
    # GPT-NeoX: rotary fraction 0.25 / 0.5 / 1.0, parallel and sequential residual, untied and tied head
    "gpt_neox-lm-rot25-parallel-h4-dk8": ("GPTNeoXForCausalLM", "gpt_neox",
                                          dict(hidden_size=32, num_attention_heads=4, intermediate_size=37,
                                               num_hidden_layers=2, rotary_pct=0.25, **NEOX)),
    "gpt_neox-lm-rot50-sequential-h3-dk12": ("GPTNeoXForCausalLM", "gpt_neox",
                                             dict(hidden_size=36, num_attention_heads=3, intermediate_size=40,
                                                  num_hidden_layers=2, rotary_pct=0.5, use_parallel_residual=False,
                                                  **NEOX)),
    "gpt_neox-lm-rot100-tied-h5-dk6": ("GPTNeoXForCausalLM", "gpt_neox",
                                       dict(hidden_size=30, num_attention_heads=5, intermediate_size=29,
                                            num_hidden_layers=2, rotary_pct=1.0, tie_word_embeddings=True, **NEOX)),
    "gpt_neox-base-rot25-nobias-h2-dk10": ("GPTNeoXModel", "gpt_neox",
                                           dict(hidden_size=20, num_attention_heads=2, intermediate_size=24,
                                                num_hidden_layers=2, rotary_pct=0.25, attention_bias=False, **NEOX)),
    # Llama: grouped and ungrouped key/value heads, tied and untied head, biases, a head_dim of its own
    "llama-lm-gqa-h6-kv2-dk6": ("LlamaForCausalLM", "llama",
                                dict(hidden_size=36, num_attention_heads=6, num_key_value_heads=2,
                                     intermediate_size=37, num_hidden_layers=2, **LLAMA)),
    "llama-lm-mha-tied-h4-dk8": ("LlamaForCausalLM", "llama",
                                 dict(hidden_size=32, num_attention_heads=4, intermediate_size=29,
                                      num_hidden_layers=2, tie_word_embeddings=True, **LLAMA)),
    "llama-lm-gqa-bias-h4-kv1-hd10": ("LlamaForCausalLM", "llama",
                                      dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=1, head_dim=10,
                                           intermediate_size=30, num_hidden_layers=2, attention_bias=True,
                                           mlp_bias=True, **LLAMA)),
    "llama-base-gqa-h4-kv2-dk6": ("LlamaModel", "llama",
                                  dict(hidden_size=24, num_attention_heads=4, num_key_value_heads=2,
                                       intermediate_size=30, num_hidden_layers=2, **LLAMA)),
}


def family_of(case: str) -> str:
    return CASES[case][1]


def make(case: str, seed: int):
    import transformers

    cls, model_type, kw = CASES[case]
    torch.manual_seed(seed)
    cfg = transformers.AutoConfig.for_model(model_type, vocab_size=VOCAB, **kw)
    model = getattr(transformers, cls)(cfg).eval()
    with torch.no_grad():  # spread the weights so that a wrong permutation shows in the outputs
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def batches(spec, n=2, seed=3):
    return [{k: v for k, v in b.items() if k in spec.inputs or k == "special_tokens_mask"}
            for b in random_batches(n, seed=seed, vocab=VOCAB)]


def probe(spec):
    return spec.model_inputs(random_batches(1, batch=3, seq=12, seed=7, vocab=VOCAB)[0])


def test_every_family_has_cases():
    covered = {family_of(c) for c in CASES}
    for fam in FAMILIES:
        assert set(fam.model_types) & covered, f"family {fam.name} has no test case"
        assert sum(family_of(c) in fam.model_types for c in CASES) >= 2, fam.name


@pytest.fixture(params=sorted(CASES))
def case(request):
    return request.param


def movable(spec, perms) -> list[str]:
    """The weights with an axis that ``perms`` move (a lone key/value head under full RoPE stays)."""
    return [n for n, axes in spec.axes.items()
            if any(i is not None and not np.array_equal(i, np.arange(len(i)))
                   for i in (axis_index(e, perms) for e in axes))]


def test_random_valid_permutations_preserve_outputs(case):
    b = make(case, 1)
    spec = spec_for(b)
    for seed in range(2):
        perms = random_valid_perms(spec, seed)
        bp = permute_model(b, spec, perms)
        err = logit_error(b, bp, probe(spec), spec, perms)
        assert err["max_rel_logit_error"] < TOL, (case, err)
        moved = [n for (n, p), q in zip(b.named_parameters(), bp.parameters()) if not torch.equal(p, q)]
        assert len(moved) >= len(movable(spec, perms)) - 1, case


def test_a_residual_permutation_alone_preserves_outputs(case):
    """So no weight that reads or writes the residual stream is missing from the table."""
    b = make(case, 4)
    spec = spec_for(b)
    res = np.random.default_rng(1).permutation(spec.hidden)
    perms = {p: res for p in spec.residual_points}
    err = logit_error(b, permute_model(b, spec, perms), probe(spec), spec, perms)
    assert err["max_rel_logit_error"] < TOL, (case, err)


PRESERVING = [(att, res) for att, res in itertools.product(ATTENTION_VARIANTS, RESIDUAL_VARIANTS)
              if att != "ignore-heads" and res != "separate"]


def test_aligned_variants_preserve_outputs(case):
    """Every function-preserving variant (attention x residual, FF on), permutations from real statistics."""
    a, b = make(case, 1), make(case, 2)
    spec = spec_for(a)
    stats = collect_stats(a, b, spec, batches(spec), fractions=(1.0,))
    assert set(stats.points) == set(spec.groups)
    for att, res in PRESERVING:
        opts = AlignOptions(ff=True, attention=att, residual=res, pooler=spec.head == "classifier")
        assert opts.function_preserving
        al = compute_alignment(spec, stats.points, opts)
        if res != "identity":
            assert not np.array_equal(al.perms[spec.residual_points[0]], np.arange(spec.hidden)), (case, res)
        bp = permute_model(b, spec, al.perms)
        err = logit_error(b, bp, probe(spec), spec, al.perms)
        assert err["max_rel_logit_error"] < TOL, (case, att, res, err)


FIRST_CASE = {fam.name: next(c for c in sorted(CASES) if family_of(c) in fam.model_types) for fam in FAMILIES}


@pytest.mark.parametrize("family", sorted(FIRST_CASE))
@pytest.mark.parametrize("att,res", [("ignore-heads", "identity"), ("head-perm", "separate")])
def test_non_preserving_variants_are_flagged_and_change_outputs(family, att, res):
    case = FIRST_CASE[family]
    a, b = make(case, 1), make(case, 2)
    spec = spec_for(a)
    stats = collect_stats(a, b, spec, batches(spec), fractions=(1.0,))
    opts = AlignOptions(attention=att, residual=res)
    assert not opts.function_preserving
    al = compute_alignment(spec, stats.points, opts)
    assert logit_error(b, permute_model(b, spec, al.perms), probe(spec), spec, al.perms)["max_rel_logit_error"] > 1e-3


def test_gpt2_fused_qkv_is_tiled_and_conv1d_transposed():
    spec = spec_for(make("gpt2-lm-tied-h5-dk6", 0))
    assert spec.norm == "pre-ln" and "token_type_ids" not in spec.inputs
    assert spec.axes["transformer.h.0.attn.c_attn.weight"] == ("res.emb", ("att.0", 3))
    assert spec.axes["transformer.h.0.attn.c_attn.bias"] == (("att.0", 3),)
    assert spec.axes["transformer.h.1.mlp.c_proj.weight"] == ("ff.1", "res.1.ff")
    assert spec.axes["transformer.ln_f.weight"] == ("res.1.ff",)
    assert spec.axis_label("transformer.h.0.attn.c_attn.weight", 1) == "columns (3 tiles)"


def test_every_permuted_weight_in_the_table_is_needed(case):
    """Leaving any one weight of the table unpermuted breaks equivalence: the tests above would
    catch a table that forgot a weight.  (A key bias is the exception: it adds the same score to
    every key of a query, which softmax ignores.)"""
    import dataclasses

    b = make(case, 1)
    spec = spec_for(b)
    perms = random_valid_perms(spec, 0)
    moving = movable(spec, perms)
    for name, axes in spec.axes.items():
        if name not in moving or (spec.roles[name] == "k" and name.endswith("bias")):
            continue
        broken = dataclasses.replace(spec, axes={k: v for k, v in spec.axes.items() if k != name})
        err = logit_error(b, permute_model(b, broken, perms), probe(spec), spec, perms)["max_rel_logit_error"]
        assert err > 1e-4, (case, name, err)


# --- CLI and dashboard on tiny random pairs (tokenizers built offline) ---------------------------------

def bpe_tokenizer(folder, lines, kind: str):
    """A small byte-level BPE tokenizer trained on ``lines``: RoBERTa-style (``kind`` "mlm": <s>, </s>,
    <pad>, <mask>) or GPT-2-style ("causal": <|endoftext|> only)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GPT2TokenizerFast, RobertaTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"] if kind == "mlm" else ["<|endoftext|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=320, special_tokens=specials,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if kind == "mlm":
        tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                          ("<s>", tok.token_to_id("<s>")))
        fast = RobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                    cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
    else:
        fast = GPT2TokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                 unk_token="<|endoftext|>")
    fast.save_pretrained(str(folder))
    return fast


# family -> a tiny pair: HF class, model_type, config (hidden 30, 5 heads, FF 37, 2 layers), the
# tokenizer kind, the curve's metric and a config field of the family's pair check.  (BERT's pair
# runs through the CLI and the dashboard in test_cli.py and test_app.py.)
PAIR_MODELS = {
    "roberta": ("RobertaForMaskedLM", "roberta", dict(hidden_size=30, num_attention_heads=5, intermediate_size=37,
                                                      num_hidden_layers=2, type_vocab_size=1, pad_token_id=1,
                                                      **{**BERTLIKE, "max_position_embeddings": 66}),
                "mlm", "pseudo_perplexity", "intermediate_size"),
    "distilbert": ("DistilBertForMaskedLM", "distilbert", dict(dim=30, n_heads=5, hidden_dim=37, n_layers=2, **DISTIL),
                   "mlm", "pseudo_perplexity", "hidden_dim"),
    "electra": ("ElectraForMaskedLM", "electra", dict(embedding_size=16, hidden_size=30, num_attention_heads=5,
                                                      intermediate_size=37, num_hidden_layers=2, **BERTLIKE),
                "mlm", "pseudo_perplexity", "embedding_size"),
    "gpt2": ("GPT2LMHeadModel", "gpt2", dict(n_embd=30, n_head=5, n_inner=37, n_layer=2, **GPT),
             "causal", "perplexity", "n_inner"),
    "gpt_neox": ("GPTNeoXForCausalLM", "gpt_neox", dict(hidden_size=30, num_attention_heads=5, intermediate_size=37,
                                                        num_hidden_layers=2, rotary_pct=0.5, **NEOX),
                 "causal", "perplexity", "intermediate_size"),
    "llama": ("LlamaForCausalLM", "llama", dict(hidden_size=30, num_attention_heads=5, num_key_value_heads=1,
                                                intermediate_size=37, num_hidden_layers=2, **LLAMA),
              "causal", "perplexity", "intermediate_size"),
}


@pytest.fixture(scope="module", params=sorted(PAIR_MODELS))
def saved_pair(request, tmp_path_factory):
    import transformers

    from conftest import write_text

    family = request.param
    root = tmp_path_factory.mktemp(family)
    text = write_text(root / "text.txt")
    cls, model_type, kw, kind = PAIR_MODELS[family][:4]
    tok = bpe_tokenizer(root / "tok", text.read_text().splitlines(), kind)
    out = []
    for seed in (11, 12):
        torch.manual_seed(seed)
        cfg = transformers.AutoConfig.for_model(model_type, vocab_size=len(tok), **kw)
        model = getattr(transformers, cls)(cfg).eval()
        model.save_pretrained(str(root / f"m{seed}"))
        tok.save_pretrained(str(root / f"m{seed}"))
        out.append(root / f"m{seed}")
    return family, out[0], out[1], text


@pytest.mark.slow
def test_cli_align_on_other_families(saved_pair, tmp_path):
    import json

    import transformers
    from safetensors.torch import load_file

    from permerge.cli import main

    family, a, b, text = saved_pair
    out = tmp_path / "out"
    assert main(["align", str(a), str(b), "--data", str(text), "--residual", "all", "--tokens", "3000",
                 "--out", str(out), "--no-cache", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model_b"]["family"] == family
    assert report["function_preserving"] is True and report["max_rel_logit_error"] < TOL
    if family in ("gpt_neox", "llama"):  # the report says which attention dims stayed in place
        assert "rotary" in report["kept_in_place"] and "checked" in report["kept_in_place"]
    else:
        assert "kept_in_place" not in report
    perms = load_file(str(out / "permutations.safetensors"))
    assert torch.equal(perms["res.emb"], perms["res.1.ff"])
    assert not torch.equal(perms["res.emb"], torch.arange(30)) and not torch.equal(perms["ff.0"], torch.arange(37))
    cls = getattr(transformers, PAIR_MODELS[family][0])
    mb, mp = cls.from_pretrained(str(b)).eval(), cls.from_pretrained(str(out / "model")).eval()
    ids = torch.randint(5, mb.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lb, lp = mb(input_ids=ids).logits, mp(input_ids=ids).logits
    assert ((lb - lp).abs().max() / lb.abs().max()).item() < TOL


@pytest.mark.slow
def test_cli_interpolate_on_other_families(saved_pair, tmp_path):
    import math

    import pandas as pd

    from permerge.cli import main

    family, a, b, text = saved_pair
    out = tmp_path / "curve"
    assert main(["interpolate", str(a), str(b), "--data", str(text), "--tokens", "3000", "--eval-blocks", "8",
                 "--lambdas", "5", "--out", str(out), "--no-cache", "--quiet"]) == 0
    df = pd.read_csv(out / "curve.csv")
    metric = PAIR_MODELS[family][4]
    assert list(df.columns) == ["lambda", "method", "loss", metric]
    assert len(df) == 10 and df["loss"].notna().all()
    assert all(math.isclose(p, math.exp(l), rel_tol=1e-9) for p, l in zip(df[metric], df["loss"]))
    # lambda = 0 is B' (B permuted), which computes B: its loss equals vanilla's lambda = 0 (B itself)
    van = df[df.method == "vanilla"].sort_values("lambda")
    al = df[df.method != "vanilla"].sort_values("lambda")
    assert al["loss"].iloc[0] == pytest.approx(van["loss"].iloc[0], rel=1e-5)
    assert al["loss"].iloc[-1] == pytest.approx(van["loss"].iloc[-1], rel=1e-9)


def run_dashboard(root, a, b, text):
    """The run page of the dashboard on a local pair with a text file, run to the end (AppTest)."""
    import time

    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(root / "app.py"), default_timeout=90).run().switch_page("pages/run.py").run()
    for side, path in (("A", a), ("B", b)):
        at.radio(key=f"src_{side}").set_value("local folder or hub id").run()
        at.text_input(key=f"path_{side}").set_value(str(path)).run()
    [r for r in at.radio if r.label == "Alignment data"][0].set_value("text file").run()
    [t for t in at.text_input if t.label == "Text file path"][0].set_value(str(text)).run()
    for label, value in (("Alignment tokens", 2048), ("λ points", 3)):
        [w for w in at.number_input if w.label == label][0].set_value(value)
    [w for w in at.number_input if "evaluation blocks" in w.label][0].set_value(4)
    [s for s in at.selectbox if s.label == "Device"][0].set_value("cpu")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Compatible" in s.value for s in at.success)
    [x for x in at.button if x.label == "Run alignment"][0].click().run()
    t0 = time.time()
    while "pending_run" in at.session_state and time.time() - t0 < 120:
        time.sleep(0.5)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
    assert "run" in at.session_state and "pending_run" not in at.session_state, "the run did not finish in time"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("computes B's function" in s.value for s in at.success)
    return at


@pytest.mark.slow
def test_dashboard_runs_other_families(saved_pair, tmp_path, monkeypatch):
    """The run page on a local pair of each family with a text file, then every detail page."""
    import time
    from pathlib import Path

    pytest.importorskip("streamlit")
    from dashboard import state

    family, a, b, text = saved_pair
    root = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("PERMERGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(root)
    state.registry.clear()
    at = run_dashboard(root, a, b, text)
    metric = PAIR_MODELS[family][4].replace("_", "-")
    assert [t.label for t in at.tabs] == ["loss", metric]
    for page in sorted(str(p.relative_to(root)) for p in (root / "pages").glob("*.py")):
        at.switch_page(page).run()
        t0 = time.time()  # pages that compute start a background job: let it finish, then redraw
        while any(h.active for h in list(state.jobs()._jobs.values())) and time.time() - t0 < 60:
            time.sleep(0.3)
        at.run()
        assert not at.exception, (page, [e.value for e in at.exception])
        if page in ("pages/correlations.py", "pages/features.py", "pages/interpolation.py"):
            assert page_charts(at), page
    state.registry.clear()


def test_pair_checks_and_summaries_come_from_the_table(saved_pair, tmp_path):
    import transformers

    from permerge.checkpoints import config_summary, read_config, validate_pair
    from permerge.errors import IncompatibleModels

    family, a, b, text = saved_pair
    cls, model_type, kw, _, _, field = PAIR_MODELS[family]
    s = config_summary(str(a))
    assert (s["architecture"], s["family"], s["layers"], s["heads"], s["hidden"], s["intermediate"]) == \
        (cls, family, 2, 5, 30, 37)
    validate_pair(read_config(str(a)), read_config(str(b)))
    # a pair differing in a field of this family's list is refused, naming the field
    other = transformers.AutoConfig.for_model(model_type, vocab_size=read_config(str(a)).vocab_size, **{**kw, field: 41})
    other.architectures = [cls]
    with pytest.raises(IncompatibleModels, match=field):
        validate_pair(read_config(str(a)), other)
    # two families never pair
    other = transformers.AutoConfig.for_model("gpt2" if family != "gpt2" else "roberta")
    with pytest.raises(IncompatibleModels, match="model_type"):
        validate_pair(read_config(str(a)), other)


def test_a_weight_the_table_does_not_know_is_refused():
    """A table accounts for every parameter: an architecture option it does not cover (GPT-2 with
    cross-attention) fails with a one-line error before any statistics, not with a wrong B'."""
    import transformers

    from permerge.arch.spec import LayoutError
    from permerge.errors import PermergeError

    cfg = transformers.GPT2Config(n_embd=24, n_head=3, n_layer=1, vocab_size=VOCAB, add_cross_attention=True)
    with pytest.raises(LayoutError, match=r"crossattention\.c_attn\.weight is not in the gpt2 table") as e:
        spec_for(transformers.GPT2LMHeadModel(cfg))
    assert isinstance(e.value, PermergeError)
