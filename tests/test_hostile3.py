"""The third fault probe: nothing hangs (FIFOs, devices, blocking checks on the page), nothing of
the user's is deleted (zoo adopt and pack), nothing inflates (cache values, archives), every text
encoding is detected, the server never looks outside, and one line for every bad input."""
import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from conftest import VOCAB, WORDS, write_text
from permerge.cli import main
from test_hostile import one_line_error, run  # noqa: F401  (the same one-line-error helpers)

ROOT = Path(__file__).resolve().parents[1]


def _release(fifo: Path) -> None:
    """Unblock anyone stuck opening ``fifo`` for reading (a failing test must not hang the suite)."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    except OSError:
        pass


def no_hang(fn, fifos, seconds=60):
    """``fn()`` on a thread; fails (after unblocking the FIFOs) if it is still running after ``seconds``."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e
    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    hung = t.is_alive()
    while t.is_alive():
        for f in fifos:
            _release(f)
        t.join(0.2)
    assert not hung, "blocked on a FIFO"
    if "error" in box:
        raise box["error"]
    return box.get("value")


# --- 1. a FIFO (or any non-regular file) never blocks: checkpoints, tokenizer, data, tasks ---------

@pytest.mark.parametrize("name", ["model.safetensors", "extra.safetensors", "vocab.txt", "tokenizer_config.json"])
def test_fifo_in_a_checkpoint_never_blocks(tiny_mlm_pair, tmp_path, capsys, name):
    a, b, text = tiny_mlm_pair
    bad = tmp_path / "b"
    shutil.copytree(b, bad)
    (bad / name).unlink(missing_ok=True)
    os.mkfifo(bad / name)
    # in a child process: a library that blocks in open() while holding the GIL would stall this one
    import subprocess
    import sys

    try:
        p = subprocess.run([sys.executable, "-m", "permerge", "align", str(a), str(bad), "--data", str(text),
                            "--tokens", "256", "--out", str(tmp_path / "out"), "--no-cache", "--quiet"],
                           capture_output=True, text=True, timeout=120, cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    except subprocess.TimeoutExpired:
        _release(bad / name)
        pytest.fail(f"align blocked on a FIFO named {name}")
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(err) == 1 and err[0].startswith("error: "), p.stderr[-2000:]
    assert "not a regular file" in err[0] and name in err[0], err[0]


def test_fifo_data_and_task_files_never_block(tiny_mlm_pair, tmp_path, capsys):
    from permerge import data, safeio
    from permerge.errors import DataError

    fifo = tmp_path / "x.txt"
    os.mkfifo(fifo)
    with pytest.raises(safeio.NotRegularFile):
        no_hang(lambda: safeio.open_regular(fifo), [fifo])
    task = tmp_path / "task"
    task.mkdir()
    os.mkfifo(task / "dev.tsv")
    with pytest.raises(DataError, match="not found|not a regular file|no dev.tsv"):
        no_hang(lambda: data.read_task(task, "dev"), [task / "dev.tsv"])
    folder = tmp_path / "texts"
    folder.mkdir()
    write_text(folder / "a.txt")
    os.mkfifo(folder / "b.txt")
    with pytest.raises(DataError, match="not a regular file"):
        no_hang(lambda: data.read_text(folder), [folder / "b.txt"])


def test_open_regular_is_race_free(tmp_path, monkeypatch):
    """A path swapped for a FIFO between the stat and the open: the non-blocking open and the
    fstat of the descriptor refuse it instead of blocking."""
    from permerge import safeio

    fifo = tmp_path / "swapped"
    os.mkfifo(fifo)
    monkeypatch.setattr(safeio, "check_regular", lambda path: None)  # the stat said "regular"
    with pytest.raises(safeio.NotRegularFile):
        no_hang(lambda: safeio.open_regular(fifo), [fifo], seconds=20)


def test_page_checks_of_a_typed_path_have_a_deadline(tiny_mlm_pair, tmp_path, monkeypatch):
    """Whatever blocks in a check of a typed checkpoint (a FIFO, a dead mount: here a check that
    never returns) stalls a helper thread for the deadline, not the page."""
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    import permerge.checkpoints as ck
    from dashboard import deadline

    a, b, text = tiny_mlm_pair
    gate = threading.Event()
    real = ck.config_summary

    def blocking(source):
        if "stuck" in str(source):
            gate.wait(120)
            raise RuntimeError("released")  # end at once: no thread left working when the tests end
        return real(source)
    monkeypatch.setattr(ck, "config_summary", blocking)
    monkeypatch.setattr(deadline, "VALIDATE_S", 1.0)
    stuck = tmp_path / "stuck"
    shutil.copytree(b, stuck)
    monkeypatch.setenv("PERMERGE_CACHE", str(tmp_path / "cache"))
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run().switch_page("pages/run.py").run()
        at.radio(key="src_B").set_value("local folder or hub id").run()
        at.text_input(key="path_B").set_value(str(stuck)).run(timeout=30)
        assert not at.exception, [e.value for e in at.exception]
        assert any("took more than 1 s without progress" in e.value for e in at.error), [e.value for e in at.error]
        assert [x for x in at.button if x.label == "Run alignment"][0].disabled
        # a FIFO where the weights are: refused by name, at once
        fifo_ck = tmp_path / "fifo-ck"
        shutil.copytree(b, fifo_ck)
        (fifo_ck / "model.safetensors").unlink()
        os.mkfifo(fifo_ck / "model.safetensors")
        at.text_input(key="path_B").set_value(str(fifo_ck)).run(timeout=30)
        assert any("not a regular file" in e.value for e in at.error), [e.value for e in at.error]
    finally:
        gate.set()
        os.chdir(cwd)


# --- 3. every text input's encoding is detected, the same for text files and task TSVs ------------

@pytest.mark.parametrize("codec", ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_text_encodings_are_detected(tiny_mlm_pair, tmp_path, codec):
    from transformers import AutoTokenizer

    from permerge import data

    a, b, text = tiny_mlm_pair
    tok = AutoTokenizer.from_pretrained(str(a))
    plain = text.read_text(encoding="utf-8")
    other = tmp_path / "other.txt"
    other.write_bytes(plain.encode(codec))
    want, want_held = data.text_data(tok, text, tokens=512, hold_out=2)
    got, got_held = data.text_data(tok, other, tokens=512, hold_out=2)
    assert got.equal(want) and got_held.equal(want_held)
    assert data.read_text(other) == data.read_text(text)
    task = tmp_path / "task"
    task.mkdir()
    rows = "sentence\tlabel\n" + "".join(f"{' '.join(WORDS[i:i + 5])}\t{i % 2}\n" for i in range(40))
    (task / "dev.tsv").write_bytes(rows.encode(codec))
    ref = tmp_path / "ref"
    ref.mkdir()
    (ref / "dev.tsv").write_text(rows, encoding="utf-8")
    t, r = data.read_task(task, "dev"), data.read_task(ref, "dev")
    assert (t.texts_a, t.labels) == (r.texts_a, r.labels)


def test_binary_text_is_refused_in_one_line(tiny_mlm_pair, tmp_path, capsys):
    a, b, text = tiny_mlm_pair
    junk = tmp_path / "junk.txt"
    junk.write_bytes(b"the a of\0\0\x01\0\x07\0\0\0and to\0\0" * 200)
    one_line_error(capsys, ["align", a, b, "--data", junk, "--tokens", "256", "--out", tmp_path / "o"], "is not text")
    task = tmp_path / "task"
    task.mkdir()
    (task / "dev.tsv").write_bytes(b"sentence\tlabel\n" + b"a\0\0b\0\x01\0\0\t1\n" * 50)
    from permerge import data
    from permerge.errors import DataError
    with pytest.raises(DataError, match="is not text"):
        data.read_task(task, "dev")


# --- 2. the Amount of data page after a run with fewer than 2,048 tokens ------------------------------

@pytest.mark.parametrize("tokens", [256, 1024, 20_000_000])
def test_data_amount_page_after_a_small_run(tiny_mlm_pair, tmp_path, monkeypatch, tokens):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    from dashboard.state import RUN_STATE, Run
    from permerge.align import AlignOptions
    from permerge.pipeline import Job

    a, b, text = tiny_mlm_pair
    monkeypatch.setenv("PERMERGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.session_state[RUN_STATE] = Run(Job(str(a), str(b), str(text), tokens=tokens), AlignOptions(), 5, "k")
    at.run()
    at.switch_page("pages/data_amount.py").run()
    assert not at.exception, [e.value for e in at.exception]
    box = [w for w in at.number_input if w.label.startswith("Alignment tokens")][0]
    assert box.value == min(max(tokens, 2048), 10_000_000)


# --- 4. adopt and pack change nothing they did not write, and check every archive first ----------

def _tokenizer(folder: Path) -> None:
    """The test vocabulary as a fast tokenizer (tokenizer.json, as the zoo's checkpoints hold)."""
    from transformers import AutoTokenizer

    from conftest import write_tokenizer

    write_tokenizer(folder)
    AutoTokenizer.from_pretrained(str(folder)).save_pretrained(str(folder))


def _checkpoint(folder: Path, seed: int, nan: bool = False) -> Path:
    import torch

    from conftest import make_model

    model = make_model(seed, vocab_size=len(VOCAB), hidden_size=24, num_attention_heads=3, intermediate_size=40,
                       num_hidden_layers=2)
    if nan:
        with torch.no_grad():
            model.bert.encoder.layer[0].output.dense.weight[0, 0] = float("nan")
    model.save_pretrained(str(folder))
    _tokenizer(folder)
    (folder / "permerge.json").write_text(json.dumps({"kind": "mlm", "steps": 3, "device": "cpu",
                                                      "metrics": {"eval_mlm_loss": 4.0}}))
    return folder


def _returned(root: Path, seeds=(1,), nan=False, edit=None) -> Path:
    """A GPU step's output folder of tiny checkpoints; ``edit(folder)`` changes a checkpoint before
    it is archived."""
    from permerge.zoo import pack as P

    ret = root / "returned"
    ret.mkdir(parents=True)
    recs = {}
    for s in seeds:
        ck = _checkpoint(root / "src" / f"mlm-seed{s}", s, nan=nan)
        if edit:
            edit(ck)
        recs[f"mlm-seed{s}.tar"] = P.archive_checkpoint(ck, ret / f"mlm-seed{s}.tar")
    (ret / "returned.json").write_text(json.dumps({"format": P.RETURNED_FORMAT, "archives": recs}))
    return ret


def _rehash(ret: Path) -> None:
    from permerge.zoo import pack as P

    rec = json.loads((ret / "returned.json").read_text())
    for name in rec["archives"]:
        rec["archives"][name] = {"bytes": (ret / name).stat().st_size, "sha256": P.sha256_file(ret / name)}
    (ret / "returned.json").write_text(json.dumps(rec))


def _adopt(ret, ck, logs=None):
    from permerge.zoo import adopt_check
    from permerge.zoo import pack as P

    return P.adopt(ret, ck, log=(logs.append if logs is not None else lambda m: None),
                   verify=adopt_check.verifier(None))


def test_adopt_keeps_the_users_files(tmp_path):
    from permerge.errors import PermergeError

    ret = _returned(tmp_path / "a", seeds=(1,))
    ck = tmp_path / "ck"
    assert _adopt(ret, ck) == ["mlm-seed1"]
    mask = os.umask(0o022)
    os.umask(mask)
    assert (ck / "mlm-seed1").stat().st_mode & 0o777 == 0o777 & ~mask  # not mkdtemp's 0700
    # the user's classifier (its permerge.json names the base), a folder beside it, a symlinked classifier
    mine = ck / "mine-cls"
    mine.mkdir()
    (mine / "permerge.json").write_text(json.dumps({"kind": "classifier", "base": "mlm-seed1"}))
    (ck / "my-eval").mkdir()
    (ck / "my-eval" / "notes.txt").write_text("keep")
    elsewhere = tmp_path / "elsewhere-cls"
    elsewhere.mkdir()
    (elsewhere / "permerge.json").write_text(json.dumps({"kind": "classifier", "base": "mlm-seed1"}))
    (ck / "linked-cls").symlink_to(elsewhere)
    logs = []
    assert _adopt(ret, ck, logs) == ["mlm-seed1"]  # exactly what the first adopt wrote: replaced
    assert (mine / "permerge.json").is_file() and (ck / "my-eval" / "notes.txt").read_text() == "keep"
    assert (ck / "linked-cls").is_symlink() and (elsewhere / "permerge.json").is_file()
    assert any("mine-cls" in m and "kept" in m for m in logs), logs
    assert any("linked-cls" in m for m in logs), logs
    assert not [p.name for p in ck.iterdir() if p.name.startswith(".")]  # no .mlm-seed1.old-* or .tmp-*
    # a file of the user's inside the checkpoint folder: nothing is replaced
    (ck / "mlm-seed1" / "notes.txt").write_text("keep")
    with pytest.raises(PermergeError, match="holds notes.txt, which adopt did not write"):
        _adopt(ret, ck)
    assert (ck / "mlm-seed1" / "notes.txt").read_text() == "keep"
    (ck / "mlm-seed1" / "notes.txt").unlink()
    # a checkpoint folder that is a link to an adopted folder: the link is replaced, no stray link left
    real = tmp_path / "real-seed1"
    (ck / "mlm-seed1").rename(real)
    (ck / "mlm-seed1").symlink_to(real)
    _adopt(ret, ck)
    assert (ck / "mlm-seed1").is_dir() and not (ck / "mlm-seed1").is_symlink() and real.is_dir()
    assert not [p.name for p in ck.iterdir() if p.name.startswith(".")]


def test_pack_keeps_the_users_files(tmp_path):
    import numpy as np

    from permerge.errors import PermergeError
    from permerge.zoo import pack as P

    tok = tmp_path / "tok"
    _tokenizer(tok)
    ev = write_text(tmp_path / "eval.txt", n_words=200)
    pk = tmp_path / "pack"
    P.write_pack(pk, tok, np.arange(3000, dtype=np.uint16) % 90, ev, log=lambda m: None)
    mask = os.umask(0o022)
    os.umask(mask)
    assert pk.stat().st_mode & 0o777 == 0o777 & ~mask
    P.write_pack(pk, tok, np.arange(3000, dtype=np.uint16) % 90, ev, log=lambda m: None)  # its own files: fine
    (pk / "mine.txt").write_text("keep")
    with pytest.raises(PermergeError, match="holds mine.txt, which the pack stage did not write"):
        P.write_pack(pk, tok, np.arange(3000, dtype=np.uint16) % 90, ev, log=lambda m: None)
    assert (pk / "mine.txt").read_text() == "keep"


def test_adopt_checks_every_archive_before_replacing(tmp_path):
    import subprocess
    import tarfile

    from permerge.errors import PermergeError
    from permerge.zoo import pack as P

    good = _returned(tmp_path / "good", seeds=(1,))
    ck = tmp_path / "ck"
    _adopt(good, ck)
    before = {p.name: p.read_bytes() for p in (ck / "mlm-seed1").iterdir()}

    def refused(ret, pattern):
        with pytest.raises(PermergeError, match=pattern):
            _adopt(ret, ck)
        assert {p.name: p.read_bytes() for p in (ck / "mlm-seed1").iterdir()} == before
        assert not [p.name for p in ck.iterdir() if p.name.startswith(".")]

    # garbage (non-finite) weights with a matching checksum; a config that does not match the weights
    refused(_returned(tmp_path / "nan", nan=True), "non-finite")

    def wrong_config(folder):
        c = json.loads((folder / "config.json").read_text())
        c["intermediate_size"] = 48
        (folder / "config.json").write_text(json.dumps(c))
    refused(_returned(tmp_path / "cfg", edit=wrong_config), "does not load")
    # too many members; a duplicate config.json
    many = _returned(tmp_path / "many")
    with tarfile.open(many / "mlm-seed1.tar", "a") as t:
        for i in range(2000):
            info = tarfile.TarInfo(f"mlm-seed1/x{i}.txt")
            t.addfile(info)
    _rehash(many)
    refused(many, "more than 16 members")
    dup = _returned(tmp_path / "dup")
    with tarfile.open(dup / "mlm-seed1.tar", "a") as t:
        t.add(str(tmp_path / "dup" / "src" / "mlm-seed1" / "config.json"), arcname="mlm-seed1/config.json")
    _rehash(dup)
    refused(dup, "appears twice")
    # a sparse member of 2 GiB in a small archive: refused from its header, nothing inflated
    sp = _returned(tmp_path / "sparse")
    src = tmp_path / "sparse" / "src"
    with open(src / "mlm-seed1" / "model.safetensors", "r+b") as f:
        f.truncate(2 << 30)
    (sp / "mlm-seed1.tar").unlink()
    subprocess.run(["tar", "--sparse", "--format=posix", "-cf", str(sp / "mlm-seed1.tar"), "-C", str(src),
                    *sorted(f"mlm-seed1/{p.name}" for p in (src / "mlm-seed1").iterdir())], check=True)
    assert (sp / "mlm-seed1.tar").stat().st_size < 64 << 20
    _rehash(sp)
    refused(sp, "over the|more than the archive")
    # returned.json that is not the GPU step's record
    for rec, pattern in (([1, 2], "expected a JSON object"),
                         ({"format": P.RETURNED_FORMAT, "archives": {"mlm-seed1.tar": "x"}}, "is not {bytes"),
                         ({"format": P.RETURNED_FORMAT, "archives": ["mlm-seed1.tar"]}, "archives is not an object"),
                         ("[" * 100_000, "not valid JSON")):
        (good / "returned.json").write_text(rec if isinstance(rec, str) else json.dumps(rec))
        refused(good, pattern)


# --- 5. cache values: bounded, checked before decompression, damaged ones moved aside -------------

def _npz(arrays: dict, compress=False) -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buf, **arrays)
    return buf.getvalue()


def test_cache_values_are_bounded_and_never_inflate(tmp_path, monkeypatch):
    import io
    import tracemalloc
    import zipfile

    import numpy as np

    from permerge import cache as C

    rc = C.ResultCache(tmp_path / "c")
    key = "point:" + "0" * 64
    deep = ("[" * 200_000 + "]" * 200_000).encode()
    bomb = _npz({"meta": np.frombuffer(b'{"__array__": "a0"}', np.uint8),
                 "a0": np.zeros(200 << 20, np.uint8)}, compress=True)  # 200 MiB of zeros in a few hundred kB
    assert len(bomb) < 2 << 20
    # a stored member whose header declares a far larger shape than its bytes
    liar = io.BytesIO()
    with zipfile.ZipFile(liar, "w") as zf:
        zf.writestr("meta.npy", _npy(np.frombuffer(b'{"__array__": "a0"}', np.uint8)))
        hdr = io.BytesIO()
        np.lib.format.write_array_header_1_0(hdr, {"descr": "<f8", "fortran_order": False, "shape": (1 << 29,)})
        zf.writestr("a0.npy", b"\x93NUMPY\x01\x00"[:0] + hdr.getvalue() + b"\0" * 64)
    for blob in (_npz({"meta": np.frombuffer(deep, np.uint8)}), bomb, liar.getvalue(),
                 _npz({"meta": np.frombuffer(b'{"__tuple__": ' * 80 + b"1" + b"}" * 80, np.uint8)})):
        rc._dc.set(key, blob)
        tracemalloc.start()
        with pytest.warns(UserWarning, match="damaged"):
            assert rc.get(key, "missing") == "missing"
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 64 << 20, peak  # nothing inflated
        assert key not in rc
    assert len(list((tmp_path / "c" / "damaged").iterdir())) == 4
    # a RecursionError from any stage of decoding is damage too, not a crash
    rc.set(key, ({"lambda": 0.0, "loss": 1.0}, None))
    monkeypatch.setattr(C, "check_value", lambda k, v: (_ for _ in ()).throw(RecursionError("deep")))
    with pytest.warns(UserWarning, match="damaged"):
        assert rc.get(key, "missing") == "missing"


def _npy(a) -> bytes:
    import io

    import numpy as np

    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()


def test_cache_folder_rules(tiny_mlm_pair, tmp_path, capsys):
    import warnings

    from permerge import cache as C
    from permerge.errors import CacheError

    a, b, text = tiny_mlm_pair
    etc = Path(f"/etc/permerge-test-cache-{os.getpid()}")
    try:
        for bad in (etc, "/proc/permerge"):
            with pytest.raises(CacheError, match="system folder"):
                C.ResultCache(bad)
            one_line_error(capsys, ["align", a, b, "--data", text, "--out", tmp_path / "o"], "system folder", cache=bad)
        assert not etc.exists()
    finally:
        if etc.exists():  # written there by a permerge without the rule (as root)
            shutil.rmtree(etc)
    # removed under a running server: recreated, not called damaged
    d = tmp_path / "c"
    rc = C.ResultCache(d)
    rc.set("point:" + "1" * 64, ({"lambda": 0.0, "loss": 1.0}, None))
    shutil.rmtree(d)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert rc.get("point:" + "1" * 64) is None
        assert rc.set("point:" + "2" * 64, ({"lambda": 0.5, "loss": 2.0}, None))
        assert rc.get("point:" + "2" * 64)[0]["loss"] == 2.0
    msgs = [str(w.message) for w in seen]
    assert any("removed while in use" in m for m in msgs), msgs
    assert not any("damaged" in m for m in msgs), msgs
    assert not [p.name for p in d.iterdir() if p.name.startswith("corrupt")]


# --- 6. weight matching on huge weights, --snapshots with weight matching, deep or damaged JSON ----

def test_weight_matching_and_json_edge_cases_give_one_line(tiny_mlm_pair, tmp_path, capsys, monkeypatch):
    from safetensors.torch import load_file, save_file

    from permerge import zoo

    a, b, text = tiny_mlm_pair
    big = {}
    for name, src in (("A", a), ("B", b)):
        d = tmp_path / f"big{name}"
        shutil.copytree(src, d)
        w = load_file(str(d / "model.safetensors"))
        save_file({k: (v * 1e20 if v.is_floating_point() else v) for k, v in w.items()}, str(d / "model.safetensors"))
        big[name] = d
    one_line_error(capsys, ["align", big["A"], big["B"], "--matcher", "weight", "--out", tmp_path / "o"],
                   "is not finite")
    one_line_error(capsys, ["align", a, b, "--matcher", "weight", "--snapshots", "0.5,1", "--out", tmp_path / "o"],
                   "--snapshots concerns the activation statistics")
    deep = tmp_path / "deep"
    shutil.copytree(b, deep)
    (deep / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    one_line_error(capsys, ["align", a, deep, "--data", text, "--out", tmp_path / "o"], "nested too deep")
    # zoo list over a family with a 100,000-deep config.json and damaged permerge.json files
    fam = tmp_path / "fam"
    for n in ("good", "deep", "list", "kind", "trunc"):
        shutil.copytree(a, fam / "checkpoints" / f"mlm-{n}")
        (fam / "checkpoints" / f"mlm-{n}" / "permerge.json").write_text(json.dumps(
            {"kind": "mlm", "seed": 1, "metrics": {"eval_mlm_loss": 4.0}}))
    (fam / "checkpoints" / "mlm-deep" / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    (fam / "checkpoints" / "mlm-list" / "permerge.json").write_text("[1, 2]")
    (fam / "checkpoints" / "mlm-kind" / "permerge.json").write_text(json.dumps({"kind": {"x": 1}, "seed": "one"}))
    (fam / "checkpoints" / "mlm-trunc" / "permerge.json").write_text('{"kind": "ml')
    for attr in ("ZOO_DIR", "CHECKPOINTS_DIR", "DATA_DIR", "TASKS_DIR", "_SOURCE"):
        monkeypatch.setattr(zoo, attr, getattr(zoo, attr))
    assert main(["zoo", "list", "--zoo", str(fam)]) == 0
    out, err = capsys.readouterr()
    assert "mlm-good" in out and not any(f"mlm-{n}" in out for n in ("deep", "list", "kind", "trunc"))
    lines = err.strip().splitlines()
    assert all(line.startswith("warning: skipped mlm-") for line in lines) and len(lines) >= 4, err


# --- 7. the server never looks outside; --host 0.0.0.0 says what to add; bidi controls escaped -----

_PROBE = """
import socket, sys
seen = []
real_connect = socket.socket.connect
def connect(self, address):
    seen.append(address)
    raise OSError("no network in this test")
socket.socket.connect = connect
socket.create_connection = lambda address, *a, **k: (seen.append(address), (_ for _ in ()).throw(OSError("no")))[1]
from streamlit.web.server import server_util
allowed = server_util.is_url_from_allowed_origins("http://evil.example:8501")
print("ALLOWED", allowed, "SEEN", len(seen), seen)
"""


def test_server_never_connects_outside(monkeypatch, capsys):
    import subprocess
    import sys

    pytest.importorskip("streamlit")
    from permerge import serve

    argv = serve.streamlit_argv(ROOT / "app.py", "0.0.0.0", 8600, ["box.lan"])
    assert argv[1:3] == ["-c", serve._LAUNCHER] and serve.OFFLINE_PATCH in argv[2]
    assert "http://box.lan:8600" in argv  # the WebSocket's origin check knows the allowed name
    # a WebSocket from a foreign origin: Streamlit alone asks the network; with the patch it does not
    plain = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    patched = subprocess.run([sys.executable, "-c", serve.OFFLINE_PATCH + _PROBE], capture_output=True, text=True,
                             timeout=120)
    assert "ALLOWED False" in plain.stdout and "SEEN 0" not in plain.stdout, plain.stdout + plain.stderr[-2000:]
    assert "ALLOWED False SEEN 0 []" in patched.stdout, patched.stdout + patched.stderr[-2000:]
    # app.py applies the same patch (for `streamlit run app.py`)
    from streamlit import net_util
    from streamlit.testing.v1 import AppTest

    monkeypatch.setattr(net_util, "get_external_ip", net_util.get_external_ip)
    monkeypatch.setattr(net_util, "get_internal_ip", net_util.get_internal_ip)
    monkeypatch.chdir(ROOT)
    AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert net_util.get_external_ip() is None and net_util.get_internal_ip() is None
    # --host 0.0.0.0 without --allowed-host: the exact line to add
    import socket

    monkeypatch.setattr(serve, "prepare", lambda host, port, allowed: (["x"], {}))
    monkeypatch.setattr(os, "execve", lambda *a: (_ for _ in ()).throw(SystemExit(0)))
    with pytest.raises(SystemExit):
        serve.run("0.0.0.0", 8600)
    err = capsys.readouterr().err
    assert f"permerge dashboard --host 0.0.0.0 --port 8600 --allowed-host {socket.gethostname()}" in err
    assert serve.lan_hint("127.0.0.1", 8600) is None and serve.lan_hint("0.0.0.0", 8600, ["box.lan"]) is None


def test_bidi_controls_are_shown_escaped():
    pytest.importorskip("streamlit")
    import pandas as pd

    from dashboard.text import md, plot_text
    from permerge.bidi import BIDI_CONTROLS
    from permerge.report import lecture_pack

    for c in BIDI_CONTROLS:
        name = f"/data/ck{c}gnp.evil"
        for shown in (md(name), plot_text(name)):
            assert c not in shown and f"u{ord(c):04x}" in shown
    from dashboard.state import name, name_md

    shown = "/data/ck\u202egnp.evil"
    assert "\u202e" not in name(shown) + name_md(shown) and "\\u202e" in name(shown)
    evil = "/data/mlm\u202eTXT.exe"
    page = lecture_pack(pair=(evil, "zoo:mlm-seed2"), about=f"pair {evil} | zoo:mlm-seed2", settings={"data": evil},
                        curves=None, check=None, function_preserving=True,
                        methods=None, amount=pd.DataFrame())
    body = page.split("</script></head>", 1)[1]
    assert not any(c in body for c in BIDI_CONTROLS)
    assert "mlm\\u202eTXT.exe" in body


# --- 8. teardown: no thread or process group left to the interpreter's exit -------------------------

def test_job_threads_and_process_groups_end_before_exit(tmp_path, monkeypatch):
    import time

    import torch.distributed as dist

    from permerge import cli, jobs
    from permerge.errors import Cancelled

    # a running dashboard job is cancelled and joined by the exit handler (a server stopped by SIGTERM)
    started = threading.Event()

    def work(progress):
        started.set()
        while True:
            progress("stats", 1, 10)
            time.sleep(0.01)
    h = jobs.JobManager().submit("k" * 30, work)
    assert started.wait(20)
    assert jobs.stop_all(wait_s=20) == 0
    assert h.state == "cancelled" and not jobs._LIVE
    # the CLI's process group is destroyed by the CLI, not left to gloo's threads at exit
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("MASTER_PORT", str(s.getsockname()[1]))
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    dist.init_process_group("gloo", rank=0, world_size=1)
    cli._OWN_GROUP.append("gloo")
    cli._end_distributed(ok=True)
    assert not dist.is_initialized() and not cli._OWN_GROUP
