"""The GLUE tasks as distributed: each task's exact layout, its metrics (checked against numbers
worked out by hand), and the metrics beside the loss along lambda."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import VOCAB, make_model, save_checkpoint
from permerge import data as D
from permerge import glue as G
from permerge.cli import main
from permerge.errors import DataError

# Two rows per file in each task's layout as shipped (header rows exactly as in the GLUE download).
LAYOUTS = {
    "CoLA": (None, [["gj04", "1", "", "the light was good ."], ["gj04", "0", "*", "good was the ."]], 3, None, 1),
    "SST-2": (["sentence", "label"], [["a good day ", "1"], ["the night was bad", "0"]], 0, None, 1),
    "MRPC": (["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
             [["1", "702876", "702977", "he said it .", "it was said by him ."],
              ["0", "2108705", "2108831", "the day .", "a night ."]], 3, 4, 0),
    "STS-B": (["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
               "score"],
              [["0", "main-captions", "MSRvid", "2012test", "0001", "none", "none", "a man is here .",
                "a man was here .", "5.000"],
               ["1", "main-captions", "MSRvid", "2012test", "0004", "none", "none", "a day .", "the night .",
                "0.750"]], 7, 8, 9),
    "QQP": (["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
            [["133273", "213221", "213222", "how is the day ?", "what is the day like ?", "1"],
             ["402555", "536040", "536041", "who is he ?", "where is the city ?", "0"]], 3, 4, 5),
    "QNLI": (["index", "question", "sentence", "label"],
             [["0", "who was king ?", "the king was he .", "entailment"],
              ["1", "what is water ?", "the day was good .", "not_entailment"]], 1, 2, 3),
    "RTE": (["index", "sentence1", "sentence2", "label"],
            [["0", "he was the king .", "he was king .", "entailment"],
             ["1", "the day was good .", "it was night .", "not_entailment"]], 1, 2, 3),
    "MNLI": (["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
              "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"],
             [["0", "31193", "31193n", "government", "( ( a b ) )", "( c )", "(ROOT (S a b))", "(ROOT c)",
               "he was the king .", "he was a man .", "neutral", "neutral"],
              ["1", "101457", "101457e", "telephone", "( d )", "( e )", "(ROOT d)", "(ROOT e)",
               "the day was good .", "the day was good .", "entailment", "entailment"]], 8, 9, 11),
    "WNLI": (["index", "sentence1", "sentence2", "label"],
             [["0", "he said it to her .", "she said it .", "0"], ["1", "the man was king .", "he was king .", "1"]],
             1, 2, 3),
}


def write_glue(root, task, rows=None, dev_names=None):
    header, body, ia, ib, il = LAYOUTS[task]
    folder = root / task
    folder.mkdir(parents=True, exist_ok=True)
    text = "".join("\t".join(r) + "\n" for r in ([header] if header else []) + (rows or body))
    (folder / "train.tsv").write_text(text)
    for name in dev_names or (("dev_matched.tsv", "dev_mismatched.tsv") if task == "MNLI" else ("dev.tsv",)):
        (folder / name).write_text(text)
    return folder


@pytest.mark.parametrize("task", sorted(LAYOUTS))
def test_each_glue_layout_is_read_by_its_name(tmp_path, task):
    header, body, ia, ib, il = LAYOUTS[task]
    folder = write_glue(tmp_path, task)
    for split in ("train", "dev"):
        t = D.read_task(folder, split)
        assert t.glue == task
        assert t.texts_a == [r[ia] for r in body]
        assert t.texts_b == ([r[ib] for r in body] if ib is not None else None)
        assert t.regression == (task == "STS-B")
        assert t.metrics == G.GLUE[task].metrics
    labels = D.read_task(folder, "train").labels
    expected = {"CoLA": [1.0, 0.0], "SST-2": [1.0, 0.0], "MRPC": [1.0, 0.0], "STS-B": [5.0, 0.75],
                "QQP": [1.0, 0.0], "QNLI": [0.0, 1.0], "RTE": [0.0, 1.0], "MNLI": [1.0, 0.0], "WNLI": [0.0, 1.0]}
    assert labels == expected[task]


def test_mnli_has_matched_and_mismatched_dev_files(tmp_path):
    folder = write_glue(tmp_path, "MNLI")
    rows = LAYOUTS["MNLI"][1]
    (folder / "dev_mismatched.tsv").write_text("\t".join(LAYOUTS["MNLI"][0]) + "\n" + "\t".join(rows[0]) + "\n")
    assert D.read_task(folder, "dev").file.endswith("dev_matched.tsv")  # MNLI's dev set is the matched one
    assert len(D.read_task(folder, "dev_matched").labels) == 2
    assert len(D.read_task(folder, "dev_mismatched").labels) == 1


def test_stsb_integer_scores_are_still_regression(tmp_path):
    header, body, *_ = LAYOUTS["STS-B"]
    rows = [r[:-1] + [s] for r, s in zip(body, ("5", "1"))]
    t = D.read_task(write_glue(tmp_path, "STS-B", rows), "train")
    assert t.regression and t.num_labels == 1 and t.labels == [5.0, 1.0]


def test_glue_task_by_option_and_layout_errors(tmp_path):
    # a folder of another name is read as MRPC when told so
    folder = write_glue(tmp_path, "MRPC")
    other = folder.rename(tmp_path / "paraphrases")
    assert D.read_task(other, "train").glue is None
    assert D.read_task(other, "train", "mrpc").glue == "MRPC"
    # told it is QQP, the MRPC file does not fit: the file, the line and the expected columns
    with pytest.raises(DataError, match=r"paraphrases/train.tsv, line 1: QQP files have the columns .*missing question1"):
        D.read_task(other, "train", "QQP")
    with pytest.raises(DataError, match="'XNLI' is not a GLUE task; choose from CoLA, SST-2"):
        D.read_task(other, "train", "XNLI")
    # named MRPC by its folder but laid out otherwise: a warning, read as a plain task folder
    odd = tmp_path / "MRPC-odd" / "MRPC"
    odd.mkdir(parents=True)
    (odd / "train.tsv").write_text("sentence\tlabel\na b\t1\nc d\t0\n")
    with pytest.warns(Warning, match="the folder's name says GLUE's MRPC"):
        t = D.read_task(odd, "train")
    assert t.glue is None and t.metrics == ("accuracy",)


@pytest.mark.parametrize("task,bad_line,row,msg", [
    ("MRPC", 3, ["1", "1", "2", "only one sentence"], "4 tab-separated column"),
    ("CoLA", 2, ["gj04", "x", "", "bad label ."], "label 'x' mixes with numeric"),
    ("STS-B", 3, ["1", "g", "f", "y", "o", "s", "s", "a", "b", "high"], "label 'high'"),
    ("QNLI", 2, ["0", "q", "s", ""], "empty label"),
])
def test_a_malformed_row_names_file_and_line(tmp_path, task, bad_line, row, msg):
    header, body, *_ = LAYOUTS[task]
    rows = list(body)
    rows.insert(bad_line - (2 if header else 1), row)
    folder = write_glue(tmp_path, task, rows)
    with pytest.raises(DataError, match=rf"{task}/train.tsv, line {bad_line}: .*{msg}"):
        D.read_task(folder, "train")


# --- metrics, against numbers worked out by hand ----------------------------------------------------

def test_metrics_match_hand_computed_values():
    y, p = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]  # TP 2, TN 1, FP 1, FN 1
    assert G.accuracy(y, p) == pytest.approx(3 / 5)
    assert G.f1(y, p) == pytest.approx(4 / 6)  # 2 TP / (2 TP + FP + FN)
    assert G.matthews(y, p) == pytest.approx(1 / 6)  # (TP TN - FP FN) / sqrt(3 * 3 * 2 * 2)
    # three classes: C = [[1,1,0],[0,0,1],[0,0,1]]: (c n - t.q) / sqrt((n^2 - q.q)(n^2 - t.t)) = (8 - 5) / 10
    assert G.matthews([0, 1, 2, 0], [0, 2, 2, 1]) == pytest.approx(0.3)
    assert G.matthews([1, 1, 1], [1, 1, 1]) == 0.0  # one class only: defined as 0
    assert G.f1([0, 0], [0, 0]) == 0.0
    assert G.pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 4 / sqrt(5 * 5)
    assert G.spearman([10, 20, 30, 40], [1, 9, 4, 16]) == pytest.approx(0.8)  # ranks 1 2 3 4 vs 1 3 2 4
    assert G.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / np.sqrt(4.5 * 5))  # tied ranks 2.5
    assert G.compute(["f1", "mcc"], [1, 0], [1, 1], False) == {"f1": pytest.approx(2 / 3), "mcc": 0.0}


# --- metrics along lambda ------------------------------------------------------------------------

WORDS = [w for w in VOCAB[5:] if len(w) > 1]


def _rows(task, n, seed):
    rng = np.random.default_rng(seed)
    header, body, *_ = LAYOUTS[task]
    out = []
    for i in range(n):
        r = list(body[i % 2])
        s1 = " ".join(rng.choice(WORDS, 6))
        s2 = " ".join(rng.choice(WORDS, 5))
        if task == "MRPC":
            r[0], r[3], r[4] = str(int(rng.integers(2))), s1, s2
        elif task == "STS-B":
            r[7], r[8], r[9] = s1, s2, f"{rng.uniform(0, 5):.3f}"
        elif task == "CoLA":
            r[1], r[3] = str(int(rng.integers(2))), s1
        out.append(r)
    return out


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gluepairs")
    kw = dict(head="cls", hidden_size=24, num_attention_heads=3, intermediate_size=40, num_hidden_layers=2,
              vocab_size=len(VOCAB))
    out = {}
    for labels in (1, 2):
        out[labels] = tuple(save_checkpoint(make_model(s, num_labels=labels, **kw), root / f"l{labels}-{s}")
                            for s in (31, 32))
    return out, root


@pytest.mark.parametrize("task,labels,columns", [("MRPC", 2, ["f1"]), ("CoLA", 2, ["mcc"]),
                                                 ("STS-B", 1, ["pearson", "spearman"])])
def test_interpolate_reports_the_task_metric(pairs, tmp_path, task, labels, columns):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    models, root = pairs
    a, b = models[labels]
    folder = write_glue(tmp_path / "glue", task, _rows(task, 40, 0))
    out = tmp_path / "c"
    assert main(["interpolate", str(a), str(b), "--data", str(folder), "--lambdas", "3", "--out", str(out),
                 "--no-cache", "--quiet"]) == 0
    df = pd.read_csv(out / "curve.csv")
    assert all(c in df.columns for c in columns)
    # the value at lambda = 1 is model A's own, computed here from its predictions
    dev = D.read_task(folder, "dev")
    tok = AutoTokenizer.from_pretrained(str(a))
    model = AutoModelForSequenceClassification.from_pretrained(str(a)).eval()
    with torch.no_grad():
        enc = tok(dev.texts_a, dev.texts_b, padding=True, truncation=True, return_tensors="pt")
        logits = model(**enc).logits
    outputs = logits.squeeze(-1).numpy() if labels == 1 else logits.argmax(-1).numpy()
    want = G.compute(columns, np.asarray(dev.labels), outputs, labels == 1)
    at_a = df[(df["lambda"] == 1.0)].iloc[0]
    for c in columns:
        assert at_a[c] == pytest.approx(want[c], abs=1e-6), c


def test_interpolate_takes_glue_task_for_a_folder_of_another_name(pairs, tmp_path, capsys):
    models, root = pairs
    a, b = models[2]
    folder = write_glue(tmp_path / "glue", "MRPC", _rows("MRPC", 24, 1)).rename(tmp_path / "paraphrase-data")
    out = tmp_path / "c"
    assert main(["interpolate", str(a), str(b), "--data", str(folder), "--lambdas", "3", "--out", str(out),
                 "--no-cache", "--quiet"]) == 0
    assert "f1" not in pd.read_csv(out / "curve.csv").columns  # the name says nothing
    assert main(["interpolate", str(a), str(b), "--data", str(folder), "--glue-task", "mrpc", "--lambdas", "3",
                 "--out", str(tmp_path / "d"), "--no-cache", "--quiet"]) == 0
    assert "f1" in pd.read_csv(tmp_path / "d" / "curve.csv").columns
    capsys.readouterr()
    assert main(["interpolate", str(a), str(b), "--data", str(folder), "--glue-task", "QQP", "--lambdas", "3",
                 "--out", str(tmp_path / "e"), "--no-cache", "--quiet"]) == 2
    assert "QQP files have the columns" in capsys.readouterr().err
    assert main(["interpolate", str(a), str(b), "--data", str(folder), "--glue-task", "XNLI",
                 "--out", str(tmp_path / "e"), "--no-cache", "--quiet"]) == 2
    assert "is not a GLUE task" in capsys.readouterr().err
