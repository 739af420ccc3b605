"""Fast checks of the bundled offline checkpoint family (permerge/zoo)."""
from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from permerge import zoo  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SEEDS = [1, 2, 3, 4, 5]
TASK_COLUMNS = {
    "style": ["sentence", "label"],
    "paraphrase": ["sentence1", "sentence2", "label"],
    "supersense": ["sentence", "label"],
    "testament": ["sentence", "label"],
}
TASK_LABELS = {"style": 2, "paraphrase": 2, "supersense": 4, "testament": 2}


def _ckpts():
    return zoo.list_checkpoints()


def _names():
    return [e["name"] for e in _ckpts()]


def test_import_is_light():
    # load permerge/zoo/__init__.py on its own in a fresh interpreter: no torch/transformers
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('zoo_only', {str(REPO / 'permerge/zoo/__init__.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "assert len(m.list_checkpoints()) > 0\n"
        "bad = [k for k in ('torch', 'transformers', 'numpy') if k in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_list_checkpoints_has_family():
    entries = _ckpts()
    names = [e["name"] for e in entries]
    for s in SEEDS:
        assert f"mlm-seed{s}" in names
    assert len(names) == len(set(names))
    for e in entries:
        assert set(e) >= {"name", "path", "kind", "task", "seed", "metrics"}
        p = Path(e["path"])
        assert p.is_absolute() and p.is_dir()
        assert (p / "config.json").is_file() and (p / "model.safetensors").is_file()
        assert (p / "tokenizer.json").is_file() and (p / "README.md").is_file()
        assert e["kind"] in ("mlm", "classifier")
        assert isinstance(e["seed"], int)
        if e["kind"] == "mlm":
            assert e["task"] == "mlm"
            assert 0 < e["metrics"]["eval_mlm_loss"] < math.log(8192)
        else:
            assert e["task"] in TASK_COLUMNS
            assert 0.0 <= e["metrics"]["dev_accuracy"] <= 1.0
            assert e["base"] in names
            assert e["num_labels"] == TASK_LABELS[e["task"]]
    # three tasks have classifiers, each from at least two base seeds
    clf_tasks = {e["task"] for e in entries if e["kind"] == "classifier"}
    assert len(clf_tasks) >= 3, clf_tasks
    for task in clf_tasks:
        seeds = {e["seed"] for e in entries if e["task"] == task}
        assert len(seeds) >= 2, (task, seeds)
    assert zoo.list_checkpoints(kind="mlm") == [e for e in entries if e["kind"] == "mlm"]


def test_default_pair():
    a, b = zoo.default_pair()
    assert a != b
    for p in (a, b):
        assert Path(p).is_dir()
        assert json.loads((Path(p) / "permerge.json").read_text())["kind"] == "mlm"


def test_data_files():
    ev, al = zoo.eval_text(), zoo.align_text()
    assert 80_000 < ev.stat().st_size < 250_000
    assert 250_000 < al.stat().st_size < 700_000
    ev_lines = set(ev.read_text(encoding="utf-8").splitlines())
    al_lines = set(al.read_text(encoding="utf-8").splitlines())
    assert not (ev_lines & al_lines) - {""}


def _read_tsv(path: Path):
    lines = path.read_text(encoding="utf-8").rstrip("\n").split("\n")
    return lines[0].split("\t"), [ln.split("\t") for ln in lines[1:]]


@pytest.mark.parametrize("task", sorted(TASK_COLUMNS))
def test_task_tsv(task):
    assert task in zoo.list_tasks()
    d = zoo.task_dir(task)
    sizes = {}
    texts = {}
    for split in ("train", "dev"):
        header, rows = _read_tsv(d / f"{split}.tsv")
        assert header == TASK_COLUMNS[task]
        labels = []
        for r in rows:
            assert len(r) == len(header), r
            assert all(x.strip() for x in r[:-1])
            labels.append(int(r[-1]))
        assert set(labels) == set(range(TASK_LABELS[task]))
        sizes[split] = len(rows)
        texts[split] = {tuple(r[:-1]) for r in rows}
    assert 200 <= sizes["dev"] <= 1000
    assert sizes["train"] >= 1000
    assert not texts["train"] & texts["dev"]


def test_task_dir_unknown():
    with pytest.raises(KeyError):
        zoo.task_dir("no-such-task")


def _safetensors_dtypes(path: Path) -> set[str]:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


def test_checkpoints_load_offline():
    import torch
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer

    text = "In the beginning God created the heaven and the earth."
    for e in _ckpts():
        p = Path(e["path"])
        assert _safetensors_dtypes(p / "model.safetensors") == {"F16"}
        meta = json.loads((p / "permerge.json").read_text())
        tok = AutoTokenizer.from_pretrained(str(p))
        cls = AutoModelForMaskedLM if e["kind"] == "mlm" else AutoModelForSequenceClassification
        model = cls.from_pretrained(str(p), dtype=torch.float32).eval()
        cfg = model.config
        assert cfg.model_type == "bert"
        assert cfg.max_position_embeddings == 128
        assert cfg.num_hidden_layers >= 4 and cfg.num_attention_heads >= 4
        assert cfg.hidden_size == meta["config"]["hidden_size"]
        assert cfg.vocab_size == len(tok) == meta["config"]["vocab_size"]
        enc = tok(text, return_tensors="pt")
        assert enc["input_ids"][0, 0].item() == tok.cls_token_id
        assert tok.convert_ids_to_tokens(enc["input_ids"][0, 1].item()) == "in"  # lowercased
        with torch.no_grad():
            out = model(**enc).logits
        assert torch.isfinite(out).all()
        if e["kind"] == "mlm":
            assert out.shape[-1] == cfg.vocab_size
            # tied decoder
            assert model.cls.predictions.decoder.weight.data_ptr() == \
                model.bert.embeddings.word_embeddings.weight.data_ptr()
        else:
            assert out.shape == (1, e["num_labels"])


def test_mlm_beats_unigram_on_eval_text():
    """The stored eval loss is real: recompute it on a slice of eval.txt with fixed masks."""
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    p = Path(zoo.default_pair()[0])
    tok = AutoTokenizer.from_pretrained(str(p))
    model = AutoModelForMaskedLM.from_pretrained(str(p), dtype=torch.float32).eval()
    lines = zoo.eval_text().read_text(encoding="utf-8").splitlines()[:40]
    ids = tok(" ".join(lines), add_special_tokens=False)["input_ids"][: 126 * 8]
    n = len(ids) // 126
    blocks = torch.tensor(ids[: n * 126]).view(n, 126)
    blocks = torch.cat([torch.full((n, 1), tok.cls_token_id), blocks, torch.full((n, 1), tok.sep_token_id)], 1)
    g = torch.Generator().manual_seed(0)
    chosen = torch.rand(blocks.shape, generator=g) < 0.15
    chosen[:, 0] = chosen[:, -1] = False
    inp = blocks.clone()
    inp[chosen] = tok.mask_token_id
    with torch.no_grad():
        logits = model(input_ids=inp).logits[chosen]
    loss = torch.nn.functional.cross_entropy(logits, blocks[chosen]).item()
    # a uniform guess over the vocabulary scores ln(8192) = 9.01; the unigram entropy is ~6.5
    assert loss < 7.5, loss


# --------------------------------------------------------------------------- the build recipe
TINY = ["--hidden", "16", "--heads", "2", "--ffn", "24", "--layers", "1", "--steps", "3", "--batch", "4",
        "--warmup", "1", "--dropout", "0.05", "--lr", "5e-4", "--sampling", "blocks"]


def _tiny_zoo(tmp: Path) -> tuple[Path, Path]:
    """A build folder (tiny corpus + the bundled tokenizer) and an out folder with small data."""
    import shutil

    build, out = tmp / "build", tmp / "out"
    (build / "corpus").mkdir(parents=True)
    align = zoo.align_text().read_text(encoding="utf-8").splitlines()
    (build / "corpus" / "train.txt").write_text("\n".join(align[:60]) + "\n", encoding="utf-8")
    tok_src = Path(zoo.default_pair()[0])
    (build / "tokenizer").mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok_src / f, build / "tokenizer" / f)
    (out / "data").mkdir(parents=True)
    ev = zoo.eval_text().read_text(encoding="utf-8").splitlines()
    (out / "data" / "eval.txt").write_text("\n".join(ev[:6]) + "\n", encoding="utf-8")
    (out / "data" / "align.txt").write_text("\n".join(align[60:80]) + "\n", encoding="utf-8")
    for task in ("style", "supersense"):
        for split, n in (("train", 24), ("dev", 16)):
            header, rows = _read_tsv(zoo.task_dir(task) / f"{split}.tsv")
            # keep every label present
            by = {}
            for r in rows:
                by.setdefault(r[-1], []).append(r)
            pick = [r for i in range(n) for lab in sorted(by) for r in by[lab][i:i + 1]][:n]
            d = out / "data" / "tasks" / task
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{split}.tsv").write_text("\n".join(["\t".join(header)] + ["\t".join(r) for r in pick]) + "\n",
                                           encoding="utf-8")
    return build, out


# The tiny build of every stage after the corpus (pack, GPU step on the CPU, adopt, finetune,
# evaluate, acceptance) is tests/test_zoo_gpu_step.py's chain.


def _good_inputs():
    mlm = {f"mlm-seed{s}": 3.3 for s in range(1, 6)}
    bars = {"Vanilla": [3.2] * 10, "FF only": [3.14] * 10, "FF + Monotonic": [3.08] * 10,
            "FF + Ignore-Heads": [2.9] * 10, "FF + Head-Perm": [3.0] * 10,
            "FF + Head-Perm + residual First": [2.64] * 10, "FF + Head-Perm + residual Last": [2.56] * 10,
            "FF + Head-Perm + residual All": [2.51] * 10}
    clf = [{"name": f"{t}-seed{s}", "task": t, "seed": s, "dev_accuracy": 0.8, "chance": 0.5}
           for t in ("a", "b") for s in (1, 2, 3)]
    return mlm, bars, clf, 150 * 10 ** 6, ["a", "b"]


def test_acceptance_criteria_logic():
    import copy

    from permerge.zoo.acceptance import check

    good = _good_inputs()
    rows = check(*good)
    assert all(r["passed"] for r in rows), rows
    best = [r for r in rows if r["criterion"].startswith("best function-preserving")][0]
    assert "residual All" in best["criterion"] and abs(best["value"] - 2.51 / 3.2) < 1e-4
    # Ignore-Heads (2.9) is not function-preserving and must not count as the best variant

    def fails(mutate, key):
        args = copy.deepcopy(list(good))
        mutate(args)
        bad = [r for r in check(*args) if not r["passed"]]
        assert len(bad) == 1 and key in bad[0]["criterion"], bad

    fails(lambda a: a[0].__setitem__("mlm-seed3", 3.51), "eval loss")
    fails(lambda a: a[1].__setitem__("FF + Head-Perm", [3.05] * 10), "FF + Head-Perm / Vanilla")  # 0.953
    fails(lambda a: a[1].__setitem__("FF + Monotonic", [3.15] * 10), "Table 1 order")
    fails(lambda a: [a[1].__setitem__(k, [2.9] * 10) for k in list(a[1]) if "residual" in k], "best function")
    fails(lambda a: a[2].__setitem__(4, {**a[2][4], "dev_accuracy": 0.64}), "b: every dev accuracy")
    fails(lambda a: a[2].pop(), "b: classifiers from >= 3")
    fails(lambda a: a.__setitem__(3, 160 * 10 ** 6 + 1), "zoo folder")


def test_m_shape():
    from permerge.zoo.acceptance import m_shape

    assert m_shape([1.0, 0.9, 0.95, 1.2, 1.4, 1.2, 0.95, 0.9, 1.0])  # dips near both ends, hump between
    assert not m_shape([1.0, 1.1, 1.3, 1.5, 1.3, 1.1, 1.0])  # a plain hump
    assert not m_shape([1.0, 0.9, 1.1, 1.3, 1.2, 1.1, 1.0])  # a dip on one side only
    assert not m_shape([1.0, 0.95, 0.9, 0.85, 0.8])  # monotone


def test_parameter_count_and_size_budget():
    """The size budget of the bundled family, from parameter counts (fp16: 2 bytes each)."""
    from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

    from permerge.training import Recipe, parameter_count

    for r in (Recipe(hidden=16, heads=2, ffn=24, layers=1), Recipe()):
        cfg = BertConfig(vocab_size=8192, **r.model_config())
        assert parameter_count(r) == sum(p.numel() for p in BertForMaskedLM(cfg).parameters())
        cfg.num_labels = 4
        assert parameter_count(r, num_labels=4) == sum(
            p.numel() for p in BertForSequenceClassification(cfg).parameters())
    r = Recipe()
    tok = sum((Path(zoo.default_pair()[0]) / f).stat().st_size for f in ("tokenizer.json", "tokenizer_config.json"))
    per_ckpt_extra = tok + 8_000  # config.json, permerge.json, README.md card
    data = sum(p.stat().st_size for p in zoo.DATA_DIR.rglob("*") if p.is_file())
    total = (5 * 2 * parameter_count(r) + 9 * 2 * parameter_count(r, num_labels=4)
             + 14 * per_ckpt_extra + data + 200_000)
    assert total <= 160 * 10 ** 6, total


@pytest.mark.parametrize("flags, msg", [
    (["--hidden", "30", "--heads", "4"], "multiple of --heads"),
    (["--dropout", "1.5"], "--dropout"),
    (["--warmup", "10", "--steps", "10"], "--warmup"),
    (["--stages", "pretrain,nope"], "unknown stage"),
    (["--tasks", "style,nope"], "unknown task"),
    (["--seeds", "1,x"], "--seeds"),
    (["--sampling", "random"], "--sampling"),
    (["--steps", "many"], "--steps"),
])
def test_build_bad_flags(tmp_path, capsys, flags, msg):
    from permerge import cli

    rc = cli.main(["zoo", "build", "--device", "cpu", "--out", str(tmp_path / "out"),
                   "--build-dir", str(tmp_path / "b"), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and msg in err[0], err
    assert not (tmp_path / "out").exists() and not (tmp_path / "b").exists()


def test_build_defaults_are_the_recipe():
    from permerge.zoo import build
    from permerge.training import Recipe

    args = build.parse_args([])
    assert build.recipe_from_args(args) == Recipe(layers=4, hidden=256, heads=4, ffn=1024, dropout=0.1, steps=3000,
                                                  batch=256, lr=1e-3, warmup=200, sampling="window")
    assert args.finetune_seeds == "1,2,3" and args.seeds == "1,2,3,4,5"
    assert args.stages.split(",")[-1] == "acceptance"


def test_window_sampling():
    import numpy as np
    import torch

    from permerge.training import BatchSampler

    stream = np.arange(10, 1010, dtype=np.uint16)
    s = BatchSampler(stream, "window", 6, torch.Generator().manual_seed(0), cls=2, sep=3)
    x = s.next()
    assert x.shape == (6, 128) and (x[:, 0] == 2).all() and (x[:, -1] == 3).all()
    assert (x[:, 2:-1] - x[:, 1:-2] == 1).all()  # contiguous windows of the stream
    y = BatchSampler(stream, "window", 6, torch.Generator().manual_seed(0), cls=2, sep=3).next()
    assert torch.equal(x, y) and not torch.equal(x, s.next())


# --------------------------------------------------------------------------- tokenizer
_TOK_SCRIPT = """
import sys
from pathlib import Path
from permerge.zoo import tokenizer
tokenizer.train_tokenizer(Path(sys.argv[1]), Path(sys.argv[2]), vocab_size=1200, log=lambda *a: None)
"""


def test_tokenizer_training_is_reproducible(tmp_path):
    """Two processes (the trainer's hash maps are seeded per process) give byte-identical files."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(zoo.align_text().read_text(encoding="utf-8")[:100_000], encoding="utf-8")
    outs = []
    for i in range(2):
        out = tmp_path / f"tok{i}"
        subprocess.run([sys.executable, "-c", _TOK_SCRIPT, str(corpus), str(out)], check=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
        outs.append(out)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        assert (outs[0] / f).read_bytes() == (outs[1] / f).read_bytes(), f
    tj = json.loads((outs[0] / "tokenizer.json").read_text())
    assert tj["normalizer"]["strip_accents"] is None and tj["normalizer"]["lowercase"] is True
    vocab = tj["model"]["vocab"]
    from permerge.zoo.tokenizer import SPECIAL_TOKENS, canonical_vocab

    assert [t for t, i in sorted(vocab.items(), key=lambda kv: kv[1])][:5] == SPECIAL_TOKENS
    assert canonical_vocab(vocab) == vocab


def test_committed_tokenizer_is_stable_under_load_save(tmp_path):
    """The committed tokenizer files survive a load/save unchanged (what every checkpoint does)."""
    from transformers import AutoTokenizer

    src = Path(zoo.default_pair()[0])
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()


_CORPUS = REPO / "build" / "zoo" / "corpus" / "train.txt"


@pytest.mark.slow
@pytest.mark.skipif(not _CORPUS.exists(), reason="needs the full corpus: python -m permerge zoo build --stages corpus")
def test_full_tokenizer_matches_committed(tmp_path):
    """Slow (~1 min): the tokenizer stage on the full corpus against the committed tokenizer.  A
    family built by this code carries it byte for byte.  The family bundled before training was
    made deterministic carries one random draw of the trainer's tie-breaking: the same settings,
    and the same pieces but for a handful decided by ties (6 of 8192 when this was written)."""
    from permerge.zoo.tokenizer import canonical_vocab, train_tokenizer

    train_tokenizer(_CORPUS, tmp_path / "tok", log=lambda *a: None)
    built = (tmp_path / "tok" / "tokenizer.json").read_bytes()
    committed_path = Path(zoo.default_pair()[0]) / "tokenizer.json"
    committed = json.loads(committed_path.read_text())
    if canonical_vocab(committed["model"]["vocab"]) == committed["model"]["vocab"]:
        assert built == committed_path.read_bytes()
    else:
        new = json.loads(built)
        a, b = set(new["model"].pop("vocab")), set(committed["model"].pop("vocab"))
        committed["normalizer"]["strip_accents"] = None
        assert new == committed
        assert len(a) == len(b) and len(a - b) <= 12, sorted(a ^ b)


# --- which bundled tasks the classifiers learned ---------------------------------------------------

def _fake_zoo(tmp_path, monkeypatch, tasks: dict, ckpts: dict):
    """tasks: name -> dev labels; ckpts: name -> (task, dev_accuracy or None)."""
    for t, labels in tasks.items():
        d = tmp_path / "tasks" / t
        d.mkdir(parents=True)
        (d / "train.tsv").write_text("sentence\tlabel\nx\t0\n")
        (d / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"s{i}\t{v}\n" for i, v in enumerate(labels)))
    for n, (t, acc) in ckpts.items():
        d = tmp_path / "checkpoints" / n
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
        metrics = {} if acc is None else {"dev_accuracy": acc}
        (d / "permerge.json").write_text(json.dumps({"kind": "classifier", "task": t, "seed": 1, "metrics": metrics}))
    monkeypatch.setattr(zoo, "TASKS_DIR", tmp_path / "tasks")
    monkeypatch.setattr(zoo, "CHECKPOINTS_DIR", tmp_path / "checkpoints")


def test_learned_tasks_compare_each_classifier_with_the_majority_label(tmp_path, monkeypatch):
    _fake_zoo(tmp_path, monkeypatch,
              {"skewed": ["0"] * 7 + ["1"] * 3, "four": list("0123") * 5, "flat": ["a", "b"] * 5, "noacc": ["0", "1"]},
              {"skewed-s1": ("skewed", 0.80), "skewed-s2": ("skewed", 0.90),  # chance 0.7: 0.80 is not 0.15 above
               "four-s1": ("four", 0.45), "four-s2": ("four", 0.41),  # chance 0.25
               "flat-s1": ("flat", 0.95),
               "noacc-s1": ("noacc", None),
               "orphan-s1": ("no-such-task", 0.99)})  # no dev.tsv: cannot say
    assert zoo.task_chance("skewed") == pytest.approx(0.7)
    assert zoo.task_chance("four") == pytest.approx(0.25)
    report = {t["task"]: t for t in zoo.task_learning()}
    assert report["skewed"]["chance"] == pytest.approx(0.7)
    assert report["skewed"]["dev_accuracy"] == {"skewed-s1": 0.80, "skewed-s2": 0.90}
    assert [t for t, r in report.items() if r["learned"]] == ["flat", "four"]
    assert zoo.learned_tasks() == ["flat", "four"]
    assert zoo.learned_tasks(margin=0.05) == ["flat", "four", "skewed"]
    assert zoo.learned_tasks(margin=0.2) == ["flat"]


@pytest.mark.skipif(not zoo.list_checkpoints(kind="classifier"), reason="no bundled classifiers")
def test_learned_tasks_on_the_bundled_family():
    report = {t["task"]: t for t in zoo.task_learning()}
    assert set(report) == {e["task"] for e in zoo.list_checkpoints(kind="classifier")}
    for t, r in report.items():
        assert r["chance"] == pytest.approx(1 / TASK_LABELS[t])  # the bundled dev sets are balanced
        assert r["learned"] == (min(r["dev_accuracy"].values()) >= r["chance"] + 0.15)
    assert "style" in zoo.learned_tasks()  # about 0.9 dev accuracy against 0.5
    if "paraphrase" in report:  # its classifiers stay near 0.5 on a balanced dev set
        assert "paraphrase" not in zoo.learned_tasks()
