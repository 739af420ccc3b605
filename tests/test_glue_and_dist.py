"""GLUE-format tasks with classifier pairs; torch.distributed statistics equal single-process ones."""
import json
import os
import socket

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

from conftest import CONFIGS, VOCAB, WORDS, make_model, random_batches, save_checkpoint
from permerge import data as D
from permerge.arch import spec_for
from permerge.cli import main
from permerge.stats import collect_stats


def write_task(folder, pair: bool, n_train=40, n_dev=24, seed=0, labels=("0", "1", "2")):
    import random

    rng = random.Random(seed)
    folder.mkdir(parents=True)
    sent = lambda: " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))  # noqa: E731
    for split, n in (("train", n_train), ("dev", n_dev)):
        head = "sentence1\tsentence2\tlabel" if pair else "sentence\tlabel"
        rows = [(f"{sent()}\t{sent()}" if pair else sent()) + f"\t{rng.choice(labels)}" for _ in range(n)]
        (folder / f"{split}.tsv").write_text("\n".join([head] + rows) + "\n")
    return folder


@pytest.fixture(scope="module")
def cls_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    kw = dict(head="cls", hidden_size=24, num_attention_heads=3, intermediate_size=40, num_hidden_layers=2,
              vocab_size=len(VOCAB), num_labels=3)
    return save_checkpoint(make_model(21, **kw), root / "a"), save_checkpoint(make_model(22, **kw), root / "b"), root


def test_task_reader_handles_glue_layouts(tmp_path):
    # RTE-like (index, sentence1, sentence2, string label)
    rte = tmp_path / "RTE"
    rte.mkdir()
    (rte / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta b\tc d\tnot_entailment\n1\te\tf\tentailment\n")
    (rte / "dev.tsv").write_text((rte / "train.tsv").read_text())
    t = D.read_task(rte, "train")
    assert t.texts_b == ["c d", "f"] and t.labels == [1.0, 0.0] and t.num_labels == 2
    # CoLA: no header
    cola = tmp_path / "CoLA"
    cola.mkdir()
    (cola / "dev.tsv").write_text("gj04\t1\t\tthe light was good .\ngj04\t0\t*\tgood was the .\n")
    t = D.read_task(cola, "dev")
    assert t.texts_a[0] == "the light was good ." and t.labels == [1.0, 0.0] and t.texts_b is None
    # STS-B: regression
    sts = tmp_path / "STS-B"
    sts.mkdir()
    (sts / "dev.tsv").write_text("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
                                 "0\tx\tx\tx\tx\tx\tx\ta man\ta woman\t3.800\n1\tx\tx\tx\tx\tx\tx\tday\tnight\t0.5\n")
    t = D.read_task(sts, "dev")
    assert t.regression and t.labels == [3.8, 0.5] and t.num_labels == 1
    # MNLI mismatched dev file name
    mnli = tmp_path / "MNLI"
    mnli.mkdir()
    (mnli / "dev_mismatched.tsv").write_text("index\tsentence1\tsentence2\tgold_label\n0\ta\tb\tneutral\n")
    assert D.read_task(mnli, "dev").labels == [1.0]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "dev.tsv").write_text("foo\tbar\n1\t2\n")
    with pytest.raises(D.DataError, match="unrecognised columns"):
        D.read_task(bad, "dev")


def test_pair_task_uses_real_token_type_ids(tmp_path):
    from transformers import BertTokenizer

    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tok = BertTokenizer(vocab=str(tmp_path / "tok" / "vocab.txt"))
    task = D.read_task(write_task(tmp_path / "p", pair=True), "train")
    b = D.task_batches(tok, task, 8)[0]
    assert b["token_type_ids"].max() == 1
    first_sep = (b["input_ids"][0] == tok.sep_token_id).nonzero()[0].item()
    assert (b["token_type_ids"][0, : first_sep + 1] == 0).all() and b["token_type_ids"][0, first_sep + 1] == 1


def test_classifier_interpolation_on_task_folder(cls_pair, tmp_path):
    a, b, root = cls_pair
    task = write_task(root / "pairtask", pair=True) if not (root / "pairtask").exists() else root / "pairtask"
    out = tmp_path / "c"
    assert main(["interpolate", str(a), str(b), "--data", str(task), "--pooler", "--residual", "last",
                 "--lambdas", "5", "--out", str(out), "--no-cache", "--quiet"]) == 0
    df = pd.read_csv(out / "curve.csv")
    assert list(df.columns) == ["lambda", "method", "loss", "accuracy"]
    assert df["accuracy"].between(0, 1).all()
    out2 = tmp_path / "al"
    assert main(["align", str(a), str(b), "--data", str(task), "--pooler", "--residual", "all", "--out", str(out2),
                 "--no-cache", "--quiet"]) == 0
    rep = json.loads((out2 / "report.json").read_text())
    assert rep["max_rel_logit_error"] < 1e-5 and rep["groups"]["pooler"]["aligned"]


def test_classifier_aligns_on_plain_text(cls_pair, tmp_path, capsys):
    """Labels are needed only to evaluate: align works on plain text; interpolate needs a task to
    evaluate on (``--eval-data`` a task folder) and says so without one."""
    a, b, root = cls_pair
    text = tmp_path / "t.txt"
    text.write_text(" ".join(WORDS * 20))
    out = tmp_path / "o"
    assert main(["align", str(a), str(b), "--data", str(text), "--pooler", "--out", str(out), "--no-cache",
                 "--quiet"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["equivalent"] and rep["groups"]["pooler"]["aligned"]
    assert main(["interpolate", str(a), str(b), "--data", str(text), "--lambdas", "3", "--out",
                 str(tmp_path / "i"), "--no-cache", "--quiet"]) == 2
    assert "task folder" in capsys.readouterr().err
    task = write_task(root / "pairtask", pair=True) if not (root / "pairtask").exists() else root / "pairtask"
    assert main(["interpolate", str(a), str(b), "--data", str(text), "--eval-data", str(task), "--lambdas", "3",
                 "--out", str(tmp_path / "i2"), "--no-cache", "--quiet"]) == 0
    assert "accuracy" in (tmp_path / "i2" / "curve.csv").read_text().splitlines()[0]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, result_path):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    kw = CONFIGS["mlm-tied-h5-dk6"]
    a, b = make_model(1, **kw), make_model(2, **kw)
    res = collect_stats(a, b, spec_for(a), random_batches(5, seed=4), fractions=(0.5, 1.0), distributed=True)
    if rank == 0:
        torch.save({g: s.to_numpy() for g, s in res.points.items()} | {"_half": res.at(0.5)["ff.1"].to_numpy(),
                                                                        "_tokens": res.tokens}, result_path)
    # no rank tears its connections down while another still uses them (rank 0 writes the result and
    # hosts the rendezvous store): a barrier first, then each process destroys its own group while
    # Python is alive, not gloo's threads at interpreter exit
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_statistics_equal_single_process(tmp_path):
    path = tmp_path / "dist.pt"
    mp.spawn(_worker, args=(2, _free_port(), str(path)), nprocs=2, join=True)
    got = torch.load(path, weights_only=False)
    kw = CONFIGS["mlm-tied-h5-dk6"]
    a, b = make_model(1, **kw), make_model(2, **kw)
    ref = collect_stats(a, b, spec_for(a), random_batches(5, seed=4), fractions=(0.5, 1.0))
    from permerge.stats import PairStats

    assert got["_tokens"] == ref.tokens
    for g, s in ref.points.items():
        d = PairStats.from_numpy(got[g])
        assert d.n == s.n
        np.testing.assert_allclose(d.correlation(), s.correlation(), atol=1e-6)
        np.testing.assert_allclose(d.mean_a().numpy(), s.mean_a().numpy(), rtol=1e-6, atol=1e-7)
    half = PairStats.from_numpy(got["_half"])
    np.testing.assert_allclose(half.correlation(), ref.at(0.5)["ff.1"].correlation(), atol=1e-6)
