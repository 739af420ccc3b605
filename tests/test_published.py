"""Checkpoints in the layouts their authors published (MultiBERTs: BertForPreTraining, a
pytorch_model.bin with the next-sentence head and pooler, a vocab.txt-only slow tokenizer, a
tf_model.h5 beside it) load as they are."""
import json

import pytest
import torch

from conftest import write_text
from permerge.cli import main
from published import write_multiberts


@pytest.fixture(scope="module")
def multiberts_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("multiberts")
    a = write_multiberts(root / "multiberts-seed_0", 0)
    b = write_multiberts(root / "multiberts-seed_1", 1)
    return a, b, write_text(root / "text.txt", n_words=3000)


def test_multiberts_layout_aligns_as_masked_lm(multiberts_pair, tmp_path, capsys):
    a, b, text = multiberts_pair
    out = tmp_path / "out"
    code = main([*map(str, ["align", a, b, "--data", text, "--tokens", 1024, "--out", out]), "--no-cache", "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    for side in ("model_a", "model_b"):
        s = report[side]
        assert s["architecture"] == "BertForMaskedLM" and s["head"] == "mlm" and s["vocab"] == 30522, s
        assert "published as BertForPreTraining" in s["published"] and "next-sentence" in s["published"], s
        assert set(s["ignored"]) == {"cls.seq_relationship", "bert.pooler"}, s["ignored"]
    assert report["function_preserving"] and report["max_rel_logit_error"] < 1e-5, report["max_rel_logit_error"]
    # B' is written as a plain masked LM with B's slow-tokenizer files
    saved = json.loads((out / "model" / "config.json").read_text())
    assert saved["architectures"] == ["BertForMaskedLM"]


def test_multiberts_config_summary_says_what_is_ignored(multiberts_pair):
    from permerge.checkpoints import config_summary, load_checkpoint

    s = config_summary(str(multiberts_pair[0]))
    assert s["architecture"] == "BertForMaskedLM" and s["published"].startswith("published as BertForPreTraining")
    ck = load_checkpoint(str(multiberts_pair[0]))
    assert ck.tokenizer is not None and ck.tokenizer.convert_tokens_to_ids("[MASK]") == 103
    assert ck.tokenizer("the king .")["input_ids"][0] == 101  # [CLS] where BERT has it


def test_bin_weights_are_read_as_tensors_only(multiberts_pair, tmp_path, capsys):
    """pytorch_model.bin goes through torch.load(weights_only=True): a pickle holding anything but
    tensors is refused with one line, and nothing in it runs."""
    import shutil

    a, b, text = multiberts_pair
    bad = tmp_path / "bad"
    shutil.copytree(b, bad)
    state = torch.load(bad / "pytorch_model.bin", weights_only=True)
    state["evil"] = _Evil()
    torch.save(state, bad / "pytorch_model.bin")
    _Evil.ran = False
    code = main([*map(str, ["align", a, bad, "--data", text, "--tokens", 512, "--out", tmp_path / "o"]),
                 "--no-cache", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "weights_only=True" in err[0], err
    assert not _Evil.ran


class _Evil:
    ran = False

    def __reduce__(self):
        return (_Evil._run, ())

    @staticmethod
    def _run():
        _Evil.ran = True
        return 0
