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

ROOT = Path(__file__).resolve().parents[1]


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
        assert any("took more than 1 s" in e.value for e in at.error), [e.value for e in at.error]
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
