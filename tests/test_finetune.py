"""Fine-tuning: the library function, ``permerge finetune`` (one base and ``--pair``), the same head
for every base, checks before any training, and ``permerge interpolate`` on the result."""
import json
import shutil

import pandas as pd
import pytest
import torch

from conftest import HAVE_PAIR, VOCAB, write_tokenizer
from permerge import training, zoo
from permerge.cli import main

needs_pair = pytest.mark.skipif(not HAVE_PAIR, reason="the bundled pair is not built")
FAST = ["--max-examples", "48", "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def small_style(tmp_path_factory):
    """The bundled style task cut to 48 train and 40 dev rows (the same columns), for speed."""
    src = zoo.task_dir("style")
    dst = tmp_path_factory.mktemp("tasks") / "style"
    dst.mkdir()
    for name, n in (("train.tsv", 48), ("dev.tsv", 40)):
        lines = (src / name).read_text(encoding="utf-8").splitlines()
        (dst / name).write_text("\n".join(lines[: n + 1]) + "\n", encoding="utf-8")
    return dst


def _load_cls(path):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(str(path))


@needs_pair
def test_head_init_is_the_same_for_every_base():
    import transformers

    heads = []
    for name in zoo.DEFAULT_PAIR:
        model, info = transformers.BertForSequenceClassification.from_pretrained(
            zoo.resolve(f"zoo:{name}"), num_labels=2, output_loading_info=True)
        keys = training.head_init(model, set(info["missing_keys"]), 7)
        assert keys == ["bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"]
        heads.append({k: v.clone() for k, v in model.state_dict().items() if k in keys}
                     | {"enc": model.bert.encoder.layer[0].output.dense.weight.clone()})
    a, b = heads
    for k in ("bert.pooler.dense.weight", "classifier.weight"):
        assert torch.equal(a[k], b[k]) and a[k].std() > 0.01
    assert not torch.equal(a["enc"], b["enc"])  # the bases differ; only the head is shared
    model, info = transformers.BertForSequenceClassification.from_pretrained(
        zoo.resolve("zoo:mlm-seed1"), num_labels=2, output_loading_info=True)
    training.head_init(model, set(info["missing_keys"]), 8)
    assert not torch.equal(model.classifier.weight, a["classifier.weight"])


@needs_pair
def test_library_finetune_records_the_dev_metric(small_style, tmp_path):
    recipe = training.FinetuneRecipe(epochs=1, batch_size=16, max_examples=32)
    steps = []
    res = training.finetune(zoo.resolve("zoo:mlm-seed1"), small_style, head_seed=5, seed=1, recipe=recipe,
                            device="cpu", progress=lambda stage, d, t, **i: steps.append((d, t)))
    assert steps[-1] == (2, 2) and res.meta["steps"] == 2
    m = res.meta["metrics"]
    assert m["dev_examples"] == 40 and 0 <= m["dev_accuracy"] <= 1 and m["dev_loss"] > 0
    assert res.meta["head_init_seed"] == 5 and res.meta["train_examples"] == 32
    assert res.meta["architecture"] == "BertForSequenceClassification" and res.meta["autocast"] is None
    out = training.write_classifier(res, tmp_path / "clf")
    rec = json.loads((out / "permerge.json").read_text())
    assert rec["metrics"]["dev_accuracy"] == m["dev_accuracy"]
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForSequenceClassification"]
    assert (out / ".permerge-output").is_file() and not list(tmp_path.glob(".clf.partial-*"))
    # the saved folder is an ordinary checkpoint: its dev accuracy measured again from disk is the same
    from permerge import data as D

    again = training.evaluate_classifier(_load_cls(out), training.load_tokenizer(out), D.read_task(small_style, "dev"))
    assert again["dev_accuracy"] == pytest.approx(m["dev_accuracy"])


@needs_pair
def test_cli_pair_then_interpolate_gives_classifier_curves(small_style, tmp_path):
    out = tmp_path / "ft"
    assert main(["finetune", "--pair", "zoo:mlm-seed1", "zoo:mlm-seed2", "--task", str(small_style), "--out",
                 str(out), "--head-seed", "3", *FAST]) == 0
    a, b = out / "mlm-seed1", out / "mlm-seed2"
    ra, rb = (json.loads((p / "permerge.json").read_text()) for p in (a, b))
    assert ra["head_init_seed"] == rb["head_init_seed"] == 3 and ra["base"].endswith("mlm-seed1")
    assert "dev_accuracy" in ra["metrics"] and "dev_accuracy" in rb["metrics"]
    curves = tmp_path / "curves"
    assert main(["interpolate", str(a), str(b), "--data", str(small_style), "--pooler", "--lambdas", "3",
                 "--tokens", "512", "--out", str(curves), "--no-cache", "--quiet"]) == 0
    df = pd.read_csv(curves / "curve.csv")
    assert set(df["method"]) == {"vanilla", "FF + attn:head-perm + pooler"}
    assert list(df.columns) == ["lambda", "method", "loss", "accuracy"] and len(df) == 6
    # the end points are the fine-tuned classifiers' own dev accuracies
    assert df[df["lambda"] == 1.0]["accuracy"].iloc[0] == pytest.approx(ra["metrics"]["dev_accuracy"])
    assert df[df["lambda"] == 0.0]["accuracy"].iloc[0] == pytest.approx(rb["metrics"]["dev_accuracy"])


@needs_pair
def test_cli_refuses_bad_input_before_training(small_style, tmp_path, capsys):
    def err(*argv):
        capsys.readouterr()
        assert main(["finetune", *argv]) == 2
        e = capsys.readouterr().err.strip()
        assert e.startswith("error: ") and "\n" not in e, e
        return e

    base = ["zoo:mlm-seed1", "--task", str(small_style), "--device", "cpu", "--quiet"]
    assert "--glue-task 'XNLI' is not a GLUE task" in err(*base, "--out", str(tmp_path / "x"), "--glue-task", "XNLI")
    assert "give one BASE or --pair A B" in err("--task", str(small_style), "--out", str(tmp_path / "x"))
    assert "not a task folder" in err("zoo:mlm-seed1", "--task", str(tmp_path), "--out", str(tmp_path / "x"))
    assert "--epochs must be positive" in err(*base, "--out", str(tmp_path / "x"), "--epochs", "0")
    clf = zoo.list_checkpoints(kind="classifier")[0]["path"]
    assert "already a classifier" in err(clf, "--task", str(small_style), "--out", str(tmp_path / "x"))
    # an output folder permerge did not write is never replaced
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert "exists and is not empty" in err(*base, "--out", str(mine))
    assert "permerge did not write it" in err(*base, "--out", str(mine), "--overwrite")
    pair = tmp_path / "pair"
    (pair / "mlm-seed2").mkdir(parents=True)
    (pair / "mlm-seed2" / "x").write_text("keep")
    assert "mlm-seed2 exists and is not empty" in err("--pair", "zoo:mlm-seed1", "zoo:mlm-seed2", "--task",
                                                     str(small_style), "--out", str(pair), "--quiet")
    assert not (pair / "mlm-seed1").exists()  # nothing trained or written before the check
    twin = tmp_path / "twin" / "mlm-seed1"
    shutil.copytree(zoo.resolve("zoo:mlm-seed1"), twin)
    assert "both bases are named 'mlm-seed1'" in err("--pair", "zoo:mlm-seed1", str(twin), "--task",
                                                    str(small_style), "--out", str(tmp_path / "y"), "--quiet")
    assert (mine / "notes.txt").read_text() == "keep"
    bare = tmp_path / "bare"
    shutil.copytree(zoo.resolve("zoo:mlm-seed2"), bare, ignore=shutil.ignore_patterns("tokenizer*", "vocab*"))
    assert "has no tokenizer files" in err("--pair", "zoo:mlm-seed1", str(bare), "--task", str(small_style),
                                           "--out", str(tmp_path / "z"), "--quiet")
    assert not (tmp_path / "z").exists()


def test_gpt2_base_becomes_a_classifier_with_a_pad_token(tmp_path):
    """A causal LM without a pad token: the end-of-text token pads (on the right), the classifier
    reads the last real token, and the saved pair aligns with B' computing B."""
    import transformers

    from test_families import bpe_tokenizer
    from test_glue_tasks import LAYOUTS, write_glue

    lines = ["the day was good .", "he said it to her .", "the king was a man .", "it was night ."] * 20
    bases = []
    for s in (1, 2):
        d = tmp_path / f"gpt-{s}"
        tok = bpe_tokenizer(d, lines, "causal")
        torch.manual_seed(s)
        cfg = transformers.GPT2Config(vocab_size=len(tok), n_embd=24, n_head=3, n_layer=2, n_positions=64,
                                      bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
        transformers.GPT2LMHeadModel(cfg).save_pretrained(str(d))
        bases.append(d)
    task = write_glue(tmp_path / "glue", "RTE", [[str(i), lines[i], lines[i + 1], ("entailment", "not_entailment")[i % 2]]
                                               for i in range(24)])
    out = tmp_path / "ft"
    assert main(["finetune", "--pair", str(bases[0]), str(bases[1]), "--task", str(task), "--out", str(out),
                 "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--quiet", "--lr", "1e-3"]) == 0
    rec = json.loads((out / "gpt-1" / "permerge.json").read_text())
    assert rec["architecture"] == "GPT2ForSequenceClassification" and "pad token" in rec["pad_token"]
    assert rec["glue_task"] == "RTE" and rec["head_parameters"] == ["score.weight"]
    cfg = json.loads((out / "gpt-1" / "config.json").read_text())
    assert cfg["pad_token_id"] == cfg["eos_token_id"] and cfg["id2label"] == {"0": "entailment", "1": "not_entailment"}
    al = tmp_path / "al"
    assert main(["align", str(out / "gpt-1"), str(out / "gpt-2"), "--data", str(task), "--out", str(al),
                 "--no-cache", "--quiet"]) == 0
    assert json.loads((al / "report.json").read_text())["max_rel_logit_error"] < 1e-5


@needs_pair
def test_pair_work_whole_job_progress_cancel_and_reuse(small_style, tmp_path):
    """The dashboard's job: checks at submit time, one plan over both bases, a cancel leaves no
    partial classifier, a finished one is reused."""
    from permerge.errors import Cancelled, PermergeError
    from permerge.tune import pair_work

    bases = [zoo.resolve("zoo:mlm-seed1"), zoo.resolve("zoo:mlm-seed2")]
    recipe = training.FinetuneRecipe(epochs=1, batch_size=16, max_examples=32)
    with pytest.raises(PermergeError, match="not a task folder"):
        pair_work(bases, str(tmp_path), tmp_path / "root", head_seed=1, seed=0, recipe=recipe, device="cpu")
    events = []

    def cancel_in_second(stage, done, total, **info):
        events.append((stage, done, total, info["job"]["stage"], info["job"]["stages"], info["job"]["fraction"]))
        if "mlm-seed2" in stage:
            raise Cancelled("cancelled by the user")

    work = pair_work(bases, str(small_style), tmp_path / "root", head_seed=1, seed=0, recipe=recipe, device="cpu")
    with pytest.raises(Cancelled):
        work(cancel_in_second)
    assert [e[3:5] for e in events[:2]] == [(1, 2), (1, 2)] and events[1][5] == pytest.approx(0.5)
    assert events[-1][3] == 2  # the second base is stage 2 of 2
    (folder,) = (tmp_path / "root").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["mlm-seed1"]  # nothing of the cancelled one
    seen = []
    res = pair_work(bases, str(small_style), tmp_path / "root", head_seed=1, seed=0, recipe=recipe,
                    device="cpu")(lambda stage, *a, **i: seen.append(stage))
    assert res["reused"] and all("mlm-seed2" in s for s in seen)  # only the missing one was trained
    assert [r["head_init_seed"] for r in res["records"]] == [1, 1]
    again = pair_work(bases, str(small_style), tmp_path / "root", head_seed=1, seed=0, recipe=recipe,
                      device="cpu")(lambda *a, **i: pytest.fail("nothing to train"))
    assert again["pair"] == res["pair"]


def test_a_trained_pooler_is_replaced_by_the_seeded_head(tmp_path):
    """A MultiBERTs-style base (BertForPreTraining) carries a trained pooler; the paper starts the
    pooler at random, so it is re-initialised from the head seed like the classifier."""
    import transformers

    from test_glue_tasks import write_glue

    cfg = transformers.BertConfig(vocab_size=len(VOCAB), hidden_size=24, num_attention_heads=3, intermediate_size=40,
                                  num_hidden_layers=2, max_position_embeddings=64, architectures=["BertForPreTraining"])
    bases = []
    for s in (1, 2):
        torch.manual_seed(s)
        d = tmp_path / f"pt-{s}"
        transformers.BertForPreTraining(cfg).save_pretrained(str(d))
        write_tokenizer(d)
        bases.append(d)
    rows = [["the day was good", str(i % 2)] for i in range(8)]
    task = write_glue(tmp_path / "glue", "SST-2", rows)
    recipe = training.FinetuneRecipe(epochs=1, batch_size=8, lr=1e-12)  # one step that hardly moves anything
    res = [training.finetune(str(b), task, head_seed=9, recipe=recipe, device="cpu") for b in bases]
    assert res[0].meta["head_parameters"] == ["bert.pooler.dense.weight", "bert.pooler.dense.bias",
                                              "classifier.weight", "classifier.bias"]
    pooled = [r.model.bert.pooler.dense.weight for r in res]
    assert torch.allclose(pooled[0], pooled[1], atol=1e-6)  # the same head for both bases
    trained = transformers.BertForPreTraining.from_pretrained(str(bases[0])).bert.pooler.dense.weight
    assert not torch.allclose(pooled[0], trained, atol=1e-3)
    assert res[0].meta["glue_task"] == "SST-2" and res[0].meta["metrics"]["dev_accuracy"] == pytest.approx(0.5)
