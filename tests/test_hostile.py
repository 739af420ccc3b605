"""Large, hostile and subtly wrong inputs: data read only as far as the token budget needs, cache
values that cannot run code, one tokenizer per pair, bounded configs, paths that never reach the
network, --overwrite that keeps the user's files, one-line errors instead of tracebacks."""
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import VOCAB, WORDS, make_model, save_checkpoint, write_text
from permerge.cli import main

KW = dict(head="mlm", hidden_size=24, num_attention_heads=3, intermediate_size=40, num_hidden_layers=2,
          vocab_size=len(VOCAB))


def run(*argv, cache=None):
    extra = ["--cache-dir", str(cache)] if cache else ["--no-cache"]
    return main([*map(str, argv), *extra, "--quiet"])


def one_line_error(capsys, argv, pattern, cache=None):
    code = run(*argv, cache=cache)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert pattern in err[0], err[0]
    return err[0]


@pytest.fixture
def tokenised_chars(monkeypatch):
    """Counts the characters given to any tokenizer call."""
    from transformers import PreTrainedTokenizerBase

    seen = [0]
    real = PreTrainedTokenizerBase.__call__

    def counting(self, text=None, *a, **k):
        for t in [text] if isinstance(text, str) else (text or []):
            seen[0] += len(t) if isinstance(t, str) else 0
        return real(self, text, *a, **k)
    monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", counting)
    return seen


# --- 1. the data is read and tokenised only as far as --tokens and the held-out tail need --------

@pytest.mark.parametrize("one_line", [False, True])
def test_large_data_is_read_lazily(tiny_mlm_pair, tmp_path, tokenised_chars, one_line):
    a, b, text = tiny_mlm_pair
    chunk = text.read_text()
    if one_line:
        chunk = chunk.replace("\n", " ")
    big = tmp_path / "big.txt"
    with big.open("w") as fh:
        while fh.tell() < 6 << 20:  # 6 MB, more than the size read whole
            fh.write(chunk)
    out = tmp_path / "o"
    assert run("align", a, b, "--data", big, "--tokens", 2048, "--eval-blocks", 8, "--out", out) == 0
    assert tokenised_chars[0] < 1 << 20, f"{tokenised_chars[0]} characters tokenised for 2048 tokens"
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["tokens"] == 2048  # 32 blocks of the tiny models' 64 tokens


# --- 2. cache values cannot run code; a value that does not fit its key is recomputed --------------

class _Planted:
    """Unpickling this creates a file: proof that a cache read ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_cache_values_never_run_code(tiny_mlm_pair, tmp_path, capsys):
    import pickle

    import diskcache

    from permerge.cache import ResultCache

    a, b, text = tiny_mlm_pair
    cache = tmp_path / "cache"
    argv = ("align", a, b, "--data", text, "--tokens", 512)
    assert run(*argv, "--out", tmp_path / "o1", cache=cache) == 0
    marker = tmp_path / "ran-code"
    vals = sorted(cache.rglob("*.val"))
    assert vals, "the statistics should be stored in a value file"
    for v in vals:  # a planted pickle in place of every value file
        v.write_bytes(pickle.dumps(_Planted(marker)))
    capsys.readouterr()
    assert run(*argv, "--out", tmp_path / "o2", cache=cache) == 0
    err = capsys.readouterr().err
    assert not marker.exists(), "a value read from the cache ran code"
    assert "Traceback" not in err and "warning: " in err and "damaged" in err, err
    r1 = json.loads((tmp_path / "o1" / "report.json").read_text())["groups"]
    assert json.loads((tmp_path / "o2" / "report.json").read_text())["groups"] == r1
    # values of the wrong form under every key: recomputed with a warning, never a traceback
    with diskcache.Cache(str(cache)) as dc:
        keys = [k for k in dc if isinstance(k, str) and k.split(":")[0] in ("stats", "alignment")]
    assert len(keys) >= 2
    c = ResultCache(cache)
    for k in keys:
        c.set(k, {"points": 3, "groups": "x"})
    c.close()
    capsys.readouterr()
    assert run(*argv, "--out", tmp_path / "o3", cache=cache) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "damaged" in err, err
    assert json.loads((tmp_path / "o3" / "report.json").read_text())["groups"] == r1
    # and a pickled entry written by diskcache's default disk (as older permerge did) is never unpickled
    with diskcache.Cache(str(cache)) as dc:
        for k in keys:
            dc.set(k, _Planted(marker))
    assert run(*argv, "--out", tmp_path / "o4", cache=cache) == 0
    assert not marker.exists(), "a pickled cache entry was unpickled"


# --- 3. one tokenizer per pair; ids within the embeddings --------------------------------------------

def _retokenised(src: Path, dst: Path, vocab, **options) -> Path:
    from transformers import BertTokenizer

    shutil.copytree(src, dst)
    for f in dst.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "special_tokens")):
            f.unlink()
    (dst / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(vocab=str(dst / "vocab.txt"), **options).save_pretrained(str(dst))
    return dst


def test_tokenizers_of_a_pair_must_agree(tiny_mlm_pair, tmp_path, capsys):
    a, b, text = tiny_mlm_pair
    cased = _retokenised(b, tmp_path / "cased", VOCAB, do_lower_case=False)
    for x, y in ((a, cased), (cased, a)):  # either order: refused, naming the normaliser's option
        msg = one_line_error(capsys, ["align", x, y, "--data", text, "--out", tmp_path / "o"], "tokenizers differ")
        assert "normaliser" in msg and "lowercase" in msg, msg
    shuffled = _retokenised(b, tmp_path / "shuffled", VOCAB[:5] + VOCAB[5:][::-1])
    msg = one_line_error(capsys, ["align", a, shuffled, "--data", text, "--out", tmp_path / "o"], "tokenizers differ")
    assert f"token {VOCAB[5]!r} is id 5 in A's vocabulary and id {len(VOCAB) - 1} in B's" in msg, msg
    # a tokenizer with more ids than the models' embeddings have rows: refused before the statistics
    small = dict(KW, vocab_size=len(VOCAB) - 10)
    sa = save_checkpoint(make_model(1, **small), tmp_path / "sa")
    sb = save_checkpoint(make_model(2, **small), tmp_path / "sb")
    msg = one_line_error(capsys, ["align", sa, sb, "--data", text, "--out", tmp_path / "o"], "embedding has")
    assert f"ids up to {len(VOCAB) - 1}" in msg and f"{len(VOCAB) - 10} rows" in msg, msg


# --- 6. a mistyped relative path is a path; a hub id never reaches the network unless allowed -------

def test_relative_paths_and_hub_ids_stay_offline(tiny_mlm_pair, tmp_path, capsys, monkeypatch):
    import socket

    a, b, text = tiny_mlm_pair
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fx").mkdir()
    shutil.copytree(b, tmp_path / "fx" / "ckB")
    attempts = []

    def no_network(*args, **kw):
        attempts.append(args)
        raise OSError(101, "Network is unreachable")
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    out = tmp_path / "o"
    # 'fx' exists here, so fx/ckAA is a mistyped path, not a hub id
    msg = one_line_error(capsys, ["align", "fx/ckAA", "fx/ckB", "--data", text, "--out", out], "checkpoint folder not found")
    assert msg == "error: checkpoint folder not found: fx/ckAA"
    # a hub id is looked up in the local Hugging Face cache only
    monkeypatch.delenv("PERMERGE_ALLOW_DOWNLOADS", raising=False)
    msg = one_line_error(capsys, ["align", "no-org/no-model", a, "--data", text, "--out", out], "Hugging Face cache")
    assert "PERMERGE_ALLOW_DOWNLOADS=1" in msg and not attempts, (msg, attempts)
    # downloads allowed but no network: one line, after one quick connection attempt
    monkeypatch.setenv("PERMERGE_ALLOW_DOWNLOADS", "1")
    msg = one_line_error(capsys, ["align", "no-org/no-model", a, "--data", text, "--out", out], "cannot be reached")
    assert len(attempts) == 1 and "Network is unreachable" in msg, (msg, attempts)


# --- 7. --overwrite replaces only what permerge wrote ------------------------------------------------

def test_overwrite_keeps_the_users_files(tiny_mlm_pair, tmp_path, capsys):
    a, b, text = tiny_mlm_pair
    out = tmp_path / "o"
    argv = ["align", a, b, "--data", text, "--tokens", 512, "--out", out, "--overwrite"]
    assert run(*argv) == 0
    assert run(*argv) == 0  # permerge's own folder is replaced
    (out / "notes.txt").write_text("mine")
    (out / "my-analysis").mkdir()
    (out / "my-analysis" / "plot.py").write_text("mine")
    capsys.readouterr()
    msg = one_line_error(capsys, argv, "did not write")
    assert "notes.txt" in msg and "my-analysis/" in msg and "model" not in msg.split("(")[1], msg
    assert (out / "notes.txt").read_text() == "mine" and (out / "my-analysis" / "plot.py").read_text() == "mine"
    assert (out / "report.json").is_file()
    # a folder from an older permerge, whose marker lists nothing: its known outputs only
    (out / ".permerge-output").write_text("written by permerge; `--overwrite` may replace this folder\n")
    one_line_error(capsys, argv, "notes.txt")
    (out / "notes.txt").unlink()
    shutil.rmtree(out / "my-analysis")
    assert run(*argv) == 0


# --- 5. configs are bounded by the weights file before anything is built ------------------------------

@pytest.mark.parametrize("field,value,pattern", [
    ("num_hidden_layers", 200000, "declares 200000 layers, but its weights hold 2"),
    ("intermediate_size", 10 ** 9, "the intermediate size 1000000000 is larger than any tensor dimension"),
    ("num_attention_heads", 0, "the number of heads must be a positive whole number, got 0"),
])
def test_config_is_bounded_before_building(tiny_mlm_pair, tmp_path, capsys, monkeypatch, field, value, pattern):
    import transformers

    from permerge.checkpoints import config_summary
    from permerge.errors import CheckpointError

    a, b, text = tiny_mlm_pair
    bad_a, bad = tmp_path / "bad_a", tmp_path / "bad"
    for src, dst in ((a, bad_a), (b, bad)):  # both alike, so that the pair check passes
        shutil.copytree(src, dst)
        cfg = json.loads((dst / "config.json").read_text())
        cfg[field] = value
        (dst / "config.json").write_text(json.dumps(cfg))

    def built(*a, **k):
        raise AssertionError("a model was built from a config the weights do not bound")
    for cls in ("BertForMaskedLM", "BertModel", "BertForSequenceClassification"):
        monkeypatch.setattr(getattr(transformers, cls), "__init__", built)
    one_line_error(capsys, ["align", bad_a, bad, "--data", text, "--out", tmp_path / "o"], pattern)
    with pytest.raises(CheckpointError, match=pattern):  # the dashboard's summary of a checkpoint
        config_summary(str(bad))


# --- 8. one-line errors instead of tracebacks ----------------------------------------------------------

def test_one_line_errors_instead_of_tracebacks(tiny_mlm_pair, tmp_path, capsys, monkeypatch):
    import torch

    a, b, text = tiny_mlm_pair
    out = tmp_path / "o"
    base = ["align", a, b, "--data", text, "--out", out]
    if not torch.cuda.is_available():  # a GPU index without a GPU, a malformed index: before loading
        one_line_error(capsys, ["align", a, b, "--data", text, "--device", "cuda:0", "--out", out],
                       "--device cuda:0 was asked for, but no CUDA GPU is available")
    one_line_error(capsys, ["align", a, b, "--data", text, "--device", "cuda:abc", "--out", out],
                   "unknown device 'cuda:abc'")
    # data the tokenizer knows nothing of: refused before the statistics, by align and interpolate
    unk = tmp_path / "unk.txt"
    unk.write_text("\n".join("\u2603\u2604 \u2605\u2606 \u2607" for _ in range(3000)) + "\n")
    for cmd in ("align", "interpolate"):
        one_line_error(capsys, [cmd, a, b, "--data", unk, "--out", out], "every token of the data")
    # names too long for the file system: one line each, and a long --out before any compute
    long = "n" * 256
    one_line_error(capsys, [*base[:-1], tmp_path / long], "too long")
    one_line_error(capsys, ["align", a, b, "--data", tmp_path / long, "--out", out], "too long")
    one_line_error(capsys, ["align", a, tmp_path / long, "--data", text, "--out", out], "too long")
    one_line_error(capsys, base, "too long", cache=tmp_path / long)
    import permerge.pipeline as P

    def no_stats(*args, **kw):
        raise AssertionError("the statistics ran for an --out that cannot be written")
    monkeypatch.setattr(P, "collect_stats", no_stats)
    one_line_error(capsys, [*base[:-1], tmp_path / ("n" * 250)], "too long")
    monkeypatch.undo()
    # a tensor of the wrong shape is named
    bad = tmp_path / "bad"
    shutil.copytree(b, bad)
    sd = load_file(str(bad / "model.safetensors"))
    name = "bert.encoder.layer.1.intermediate.dense.weight"
    sd[name] = sd[name][:-1].clone()
    save_file(sd, str(bad / "model.safetensors"), metadata={"format": "pt"})
    msg = one_line_error(capsys, ["align", a, bad, "--data", text, "--out", out], "wrong shape")
    assert name in msg and "(39, 24)" in msg, msg
    # weights rewritten while they load: an error, not a crash.  A memory map of the file (what
    # transformers' loader makes) faults with SIGBUS when the file shrinks under it, so the
    # weights must be read into memory instead, and a shrunken file must read as corrupt.
    import permerge.checkpoints as C
    import transformers.modeling_utils as mu

    moving = tmp_path / "moving"
    shutil.copytree(b, moving)
    mapped = []
    real_open, real_check = mu.safe_open, C._check_weight_files
    monkeypatch.setattr(mu, "safe_open", lambda path, *x, **k: mapped.append(path) or real_open(path, *x, **k))
    assert run("align", a, moving, "--data", text, "--tokens", 256, "--out", tmp_path / "m") == 0
    assert not mapped, f"weights were memory-mapped: {mapped}"
    capsys.readouterr()

    def then_truncate(folder):
        real_check(folder)
        if folder == moving:
            os.truncate(moving / "model.safetensors", 1000)
    monkeypatch.setattr(C, "_check_weight_files", then_truncate)
    one_line_error(capsys, ["align", a, moving, "--data", text, "--out", out], "corrupt weights file")


# --- 10. smaller things -----------------------------------------------------------------------------

def test_smaller_input_and_output_details(tiny_mlm_pair, tmp_path, capsys, monkeypatch):
    import stat

    import permerge.pipeline as P
    from permerge import data as D
    from permerge.errors import DataError, OutputError, StatisticsError

    a, b, text = tiny_mlm_pair
    # --tokens takes whole blocks, none more than needed (the tiny models' blocks hold 64 tokens)
    for tokens in (2000, 2048):
        out = tmp_path / f"t{tokens}"
        assert run("align", a, b, "--data", text, "--tokens", tokens, "--out", out) == 0
        assert json.loads((out / "report.json").read_text())["data"]["tokens"] == 2048
    # --tokens far above the data: says what was used; the output folder has the usual mode
    monkeypatch.setattr(os, "umask", os.umask)  # restored by monkeypatch
    old_mask = os.umask(0o022)
    try:
        capsys.readouterr()
        out = tmp_path / "all"
        assert run("align", a, b, "--data", text, "--tokens", 10 ** 7, "--out", out) == 0
    finally:
        os.umask(old_mask)
    err = capsys.readouterr().err
    assert "warning: --tokens 10000000 is more than the alignment data holds: using all of its" in err, err
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    # an error during a progress bar starts on its own line; control characters are shown escaped
    def failing(*args, progress=None, **kw):
        progress("statistics", 1, 10, tokens=64)
        raise StatisticsError("features went wrong in \x1b[31mred\x1b[0m")
    monkeypatch.setattr(P, "collect_stats", failing)
    assert main(["align", str(a), str(b), "--data", str(text), "--out", str(tmp_path / "e"), "--no-cache"]) == 2
    last = capsys.readouterr().err.rstrip("\n").split("\n")[-1]
    assert last == "error: features went wrong in \\x1b[31mred\\x1b[0m", repr(last)
    monkeypatch.undo()
    # a corrupt tokenizer.json is named as such, not as "no tokenizer files"
    broken = tmp_path / "broken"
    shutil.copytree(b, broken)
    (broken / "tokenizer.json").write_text("{ not json")
    one_line_error(capsys, ["align", a, broken, "--data", text, "--out", tmp_path / "o"], "tokenizer.json")
    # GLUE files: a byte-order mark, class ids written 0.0 / 1.0, an oversized field, extra columns
    task = tmp_path / "task"
    task.mkdir()
    (task / "dev.tsv").write_text("\ufeffsentence\tlabel\nthe king .\t0.0\na day .\t1.0\n", encoding="utf-8")
    t = D.read_task(task, "dev")
    D.check_task_labels(t, 2)
    assert not t.regression and t.labels == [0.0, 1.0]
    (task / "dev.tsv").write_text("sentence\tlabel\nthe king .\t0\n" + "w" * 200_000 + "\t1\n")
    with pytest.raises(DataError, match=r"dev.tsv, line 3: field larger than field limit"):
        D.read_task(task, "dev")
    (task / "dev.tsv").write_text("sentence\tlabel\nthe king .\t0\na\tday .\t1\n")
    with pytest.raises(DataError, match=r"dev.tsv, line 3: 3 tab-separated columns, expected 2"):
        D.read_task(task, "dev")
    # an unwritable export folder reads as a sentence
    from permerge import outputs

    def refuse(*args, **kw):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(outputs.tempfile, "mkstemp", refuse)
    with pytest.raises(OutputError) as ei:
        outputs.check_out(tmp_path / "x", what="the export folder")
    assert "writable the" not in str(ei.value) and "put the export folder in a folder you can write to" in str(ei.value)


def test_sharded_weights_stay_inside_the_checkpoint(tiny_mlm_pair, tmp_path, capsys):
    """A weights index naming a file outside the checkpoint folder is refused, not read."""
    a, b, text = tiny_mlm_pair
    evil = tmp_path / "sharded"
    shutil.copytree(b, evil)
    (evil / "model.safetensors").rename(tmp_path / "outside.safetensors")
    names = list(load_file(tmp_path / "outside.safetensors"))
    (evil / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {n: "../outside.safetensors" for n in names}}))
    one_line_error(capsys, ["align", a, evil, "--data", text, "--out", tmp_path / "o"],
                   "names a weights file outside the checkpoint folder")
