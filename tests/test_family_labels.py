"""Labels that follow the pair's family (CLI help, the run page), --pooler only where the family's
table has a pooler group, and the header of ``zoo list``.  Checkpoint folders here hold a config
(and for BERT a tokenizer) only: everything checked is decided before any weights load."""
from pathlib import Path

import pytest

from conftest import write_text, write_tokenizer
from permerge.cli import main

TINY = {"bert": dict(hidden_size=24, num_attention_heads=3, intermediate_size=40, num_hidden_layers=2),
        "roberta": dict(hidden_size=24, num_attention_heads=3, intermediate_size=40, num_hidden_layers=2),
        "gpt2": dict(n_embd=24, n_head=3, n_inner=40, n_layer=2, bos_token_id=0, eos_token_id=0),
        "electra": dict(embedding_size=16, hidden_size=24, num_attention_heads=3, intermediate_size=40,
                        num_hidden_layers=2)}


def config_only(folder: Path, model_type: str, cls: str, tokenizer: bool = False) -> Path:
    import transformers

    cfg = transformers.AutoConfig.for_model(model_type, vocab_size=120, architectures=[cls], **TINY[model_type])
    cfg.save_pretrained(str(folder))
    if tokenizer:
        write_tokenizer(folder)
    return folder


def flat(text: str) -> str:
    """Help text without whitespace: argparse wraps lines, also after a hyphen."""
    return "".join(text.split())


# --- command line ---------------------------------------------------------------------------------------

def test_help_does_not_assume_bert(capsys):
    assert main(["align", "--help"]) == 0
    out = flat(capsys.readouterr().out)
    assert "MLM" not in out and "[CLS]" not in out, out
    assert flat("evaluation blocks of 128 tokens: masked-LM or causal-LM loss") in out
    assert flat("leave the tokenizer's special tokens out of the statistics") in out


@pytest.mark.parametrize("model_type,cls,what", [
    ("roberta", "RobertaForSequenceClassification", "roberta classifier"),
    ("electra", "ElectraForSequenceClassification", "electra classifier"),
    ("bert", "BertForMaskedLM", "bert mlm model"),
    ("gpt2", "GPT2LMHeadModel", "gpt2 causal-lm model"),
])
def test_pooler_on_a_pair_without_one_is_refused_before_loading(tmp_path, capsys, model_type, cls, what):
    a = config_only(tmp_path / "a", model_type, cls)  # no weights: the check must not need them
    b = config_only(tmp_path / "b", model_type, cls)
    text = write_text(tmp_path / "t.txt", n_words=200)
    out = tmp_path / "out"
    for cmd in ("align", "interpolate"):
        assert main([cmd, str(a), str(b), "--data", str(text), "--pooler", "--out", str(out), "--no-cache",
                     "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: --pooler: this {what} has no pooler"), err
        assert "only bert classifiers have one" in err[0]
        assert not out.exists()


def test_pooler_check_passes_for_a_classifier_with_a_pooler(tmp_path):
    from permerge.checkpoints import config_spec
    from permerge.cli import _check_pooler

    a = config_only(tmp_path / "a", "bert", "BertForSequenceClassification")
    _check_pooler(str(a))  # no error
    assert [g.name for g in config_spec(str(a)).groups_of("pooler")] == ["pooler"]


def test_zoo_list_prints_a_header(capsys):
    assert main(["zoo", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "kind", "task", "metrics"]


# --- the run page ---------------------------------------------------------------------------------------

def run_page_on(a: Path, b: Path, monkeypatch, tmp_path):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    root = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("PERMERGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(root)
    at = AppTest.from_file(str(root / "app.py"), default_timeout=90).run().switch_page("pages/run.py").run()
    for side, path in (("A", a), ("B", b)):
        at.radio(key=f"src_{side}").set_value("local folder or hub id").run()
        at.text_input(key=f"path_{side}").set_value(str(path)).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Compatible" in s.value for s in at.success)
    return at


def labels(at) -> list[str]:
    return [w.label for kind in ("number_input", "checkbox", "selectbox") for w in at.get(kind)] + \
        [o for w in at.selectbox for o in w.options]


def test_run_page_labels_follow_a_gpt2_pair(tmp_path, monkeypatch):
    a = config_only(tmp_path / "a", "gpt2", "GPT2LMHeadModel")
    b = config_only(tmp_path / "b", "gpt2", "GPT2LMHeadModel")
    at = run_page_on(a, b, monkeypatch, tmp_path)
    shown = labels(at)
    assert "Causal-LM evaluation blocks (128 tokens each)" in shown
    assert not [x for x in shown if "MLM" in x or "[CLS]" in x or "LayerNorm" in x], shown
    assert at.checkbox(key="exclude_special").disabled
    assert any("no special tokens to exclude" in c.value for c in at.caption)
    res = at.selectbox(key="residual").options
    assert "first (embedding sum)" in res and "last (final block's output)" in res
    assert "all (pooled over 5 points: embedding sum, input of each ln_2, block outputs)" in res
    assert at.checkbox(key="pooler").disabled


def test_run_page_labels_follow_a_bert_pair(tmp_path, monkeypatch):
    a = config_only(tmp_path / "a", "bert", "BertForMaskedLM", tokenizer=True)
    b = config_only(tmp_path / "b", "bert", "BertForMaskedLM", tokenizer=True)
    at = run_page_on(a, b, monkeypatch, tmp_path)
    shown = labels(at)
    assert "Masked-LM evaluation blocks (128 tokens each)" in shown
    assert "Exclude the special tokens ([CLS]/[SEP]) from the statistics" in shown
    assert not at.checkbox(key="exclude_special").disabled
    res = at.selectbox(key="residual").options
    assert "first (embedding LayerNorm)" in res and "all (pooled over 5 LayerNorm outputs)" in res


@pytest.mark.parametrize("model_type,cls,enabled", [
    ("roberta", "RobertaForSequenceClassification", False),
    ("bert", "BertForSequenceClassification", True),
])
def test_pooler_checkbox_only_where_the_table_has_a_pooler(tmp_path, monkeypatch, model_type, cls, enabled):
    a = config_only(tmp_path / "a", model_type, cls)
    b = config_only(tmp_path / "b", model_type, cls)
    at = run_page_on(a, b, monkeypatch, tmp_path)
    box = at.checkbox(key="pooler")
    assert box.disabled is (not enabled)
    if not enabled:
        assert box.value is False
    note = [c.value for c in at.caption if "have no pooler" in c.value]
    assert note == ([] if enabled else [f"{model_type} classifiers have no pooler: their head reads the last "
                                        "residual point, which the residual options align."])


def test_residual_labels_name_a_projected_embedding(tmp_path):
    """ELECTRA with embedding_size != hidden_size: its first residual point is the projection's output."""
    pytest.importorskip("streamlit")
    from dashboard.state import pair_facts, residual_labels

    a = config_only(tmp_path / "a", "electra", "ElectraForMaskedLM")
    labels = residual_labels(pair_facts(str(a)))
    assert labels["first"] == "first (embedding projection)"
    assert labels["all"] == "all (pooled over 5 points: embedding projection, then LayerNorm outputs)"
