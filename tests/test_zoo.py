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
}
TASK_LABELS = {"style": 2, "paraphrase": 2, "supersense": 4}


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
    # every task has classifiers from at least two base seeds
    for task in TASK_COLUMNS:
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
