"""Faults and bad inputs: nothing lost, nothing hung, nothing silently wrong.

Killed runs leave no lock, damaged caches are recovered, --out never destroys inputs, bad weights,
tokenizers, options, GLUE files, devices and paths are one-line errors before the expensive work,
and the dashboard refuses foreign Host headers."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import ROOT, VOCAB, free_port, make_model, save_checkpoint, upgrade_status, write_text, write_tokenizer
from permerge.cli import main

KW = dict(head="mlm", hidden_size=24, num_attention_heads=3, intermediate_size=40, num_hidden_layers=2,
          vocab_size=len(VOCAB))
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "OMP_NUM_THREADS": "1"}


def run(*argv, cache=None):
    extra = ["--cache-dir", str(cache)] if cache else ["--no-cache"]
    return main([*map(str, argv), *extra, "--quiet"])


def one_line_error(capsys, argv, pattern, out=None, cache=None):
    assert run(*argv, cache=cache) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert pattern in err[0], err[0]
    if out is not None:
        assert not Path(out).exists()
    return err[0]


@pytest.fixture
def no_compute(monkeypatch):
    """Fail the test if a model is loaded or statistics are collected."""
    import permerge.pipeline as P

    def boom(*a, **k):
        raise AssertionError("expensive work started before the input was rejected")
    monkeypatch.setattr(P, "collect_stats", boom)
    return boom


# --- 1. locks never outlive their holder --------------------------------------------------------------

# The statistics pass of this child announces itself and then takes long enough to be killed in.
SLOW_CHILD = """
import sys, time
import permerge.pipeline as P
real = P.collect_stats
def slow(*a, **k):
    print("STATISTICS", flush=True)
    time.sleep(60)
    return real(*a, **k)
P.collect_stats = slow
from permerge.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _start_slow(argv):
    return subprocess.Popen([sys.executable, "-c", SLOW_CHILD, *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)


def _wait_for_statistics(p):
    line = p.stdout.readline()
    assert line.strip() == "STATISTICS", (line, p.stderr.read() if p.poll() is not None else "")


def _within_seconds(seconds, fn):
    """fn() on this thread, interrupted by SIGALRM if it hangs."""
    def hung(*_):
        raise TimeoutError(f"still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        return fn()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.slow
def test_killed_runs_leave_no_lock(tiny_mlm_pair, tmp_path, capsys):
    """A run killed (SIGKILL) or terminated (SIGTERM) during its statistics pass leaves no lock:
    the same command afterwards finishes at once (before: it waited hours on the dead run's lock)."""
    a, b, text = tiny_mlm_pair
    argv = {sig: ["align", a, b, "--data", text, "--tokens", 512, "--cache-dir", tmp_path / f"cache{int(sig)}",
                  "--out", tmp_path / f"out{int(sig)}", "--quiet"] for sig in (signal.SIGKILL, signal.SIGTERM)}
    children = {sig: _start_slow(v) for sig, v in argv.items()}  # started together: one start-up time
    try:
        for sig, p in children.items():
            _wait_for_statistics(p)
            p.send_signal(sig)
            rc, err = p.wait(timeout=60), p.stderr.read()
            if sig == signal.SIGTERM:  # unwinds like Ctrl-C: one line, nothing written
                assert rc == 143, err
                assert err.strip().splitlines()[-1] == "error: terminated; nothing was written"
            else:
                assert rc == -signal.SIGKILL
    finally:
        for p in children.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    for sig, v in argv.items():
        out, cache = tmp_path / f"out{int(sig)}", tmp_path / f"cache{int(sig)}"
        assert not out.exists() and not [q for q in tmp_path.iterdir() if ".partial-" in q.name]
        capsys.readouterr()
        assert _within_seconds(60, lambda: main([str(x) for x in v])) == 0
        assert "waiting" not in capsys.readouterr().err
        assert (out / "report.json").is_file()
        assert not list((cache / "locks").glob("*.lock"))


def test_a_waiting_run_says_what_it_waits_for(tmp_path):
    from permerge.cache import ResultCache, make_key

    key = make_key("test", x=1)
    holder = ResultCache(tmp_path)
    started, release = threading.Event(), threading.Event()

    def compute():
        started.set()
        release.wait(10)
        return 5

    t = threading.Thread(target=holder.get_or_compute, args=(key, compute))
    t.start()
    assert started.wait(10)
    notes = []
    waiter = ResultCache(tmp_path, note=notes.append)
    threading.Timer(0.5, release.set).start()
    assert waiter.get_or_compute(key, lambda: pytest.fail("computed twice"), poll=0.05) == 5
    t.join(10)
    assert len(notes) == 1 and f"pid {os.getpid()} on {socket.gethostname()}" in notes[0]
    assert "test" in notes[0], notes


# --- 2. --out never destroys inputs; replaces only its own folders --------------------------------------

def test_out_refuses_inputs_and_system_folders(tiny_mlm_pair, tmp_path, capsys, no_compute):
    a, b, text = tiny_mlm_pair
    before = sorted(p.name for p in b.iterdir())
    for out, why in [(b, "it contains checkpoint B"), (b.parent, "contains"), (b / "sub", "lies inside checkpoint B"),
                     (text, "contains --data"), (".", "working folder"), ("~", "home"), ("/", "root")]:
        one_line_error(capsys, ["align", a, b, "--data", text, "--out", out, "--overwrite"], why)
    cache = tmp_path / "cache"
    cache.mkdir()
    one_line_error(capsys, ["align", a, b, "--data", text, "--out", cache / "x"], "cache folder", cache=cache)
    one_line_error(capsys, ["align", a, b, "--data", text, "--out", tmp_path], "cache folder", cache=cache)
    assert sorted(p.name for p in b.iterdir()) == before and text.is_file()


def test_staged_output_is_atomic(tmp_path):
    from permerge.outputs import MARKER, check_out, staged

    final = tmp_path / "deep" / "new" / "out"
    with pytest.raises(RuntimeError):
        with staged(final) as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("disk gone")
    assert not (tmp_path / "deep").exists()  # neither the partial folder nor the parents it made
    with staged(final) as tmp:
        (tmp / "v1").write_text("1")
    assert (final / MARKER).is_file() and (final / "v1").is_file()
    check_out(final, overwrite=True)  # permerge's own folder may be replaced
    with pytest.raises(RuntimeError):
        with staged(final) as tmp:
            (tmp / "v2").write_text("2")
            raise RuntimeError("interrupted")
    assert (final / "v1").is_file() and not (final / "v2").exists()  # the old output survives a failure
    with staged(final, overwrite=True) as tmp:
        (tmp / "v2").write_text("2")
    assert sorted(p.name for p in final.iterdir()) == [MARKER, "v2"]
    assert [p.name for p in final.parent.iterdir()] == ["out"]  # no .old- or .partial- leftovers


@pytest.mark.parametrize("overwrite", [False, True])
def test_staged_keeps_a_folder_that_appears_during_the_run(tmp_path, overwrite):
    """check_out passed before the compute; a user folder created meanwhile is never replaced."""
    from permerge.errors import OutputError
    from permerge.outputs import MARKER, staged

    final = tmp_path / "out"
    with pytest.raises(OutputError) as ei:
        with staged(final, overwrite=overwrite) as tmp:
            (tmp / "result").write_text("r")
            final.mkdir()  # the user's folder appears while the run computes
            (final / "notes.txt").write_text("mine")
    msg = str(ei.value)
    assert "\n" not in msg and str(final) in msg and str(tmp) in msg
    assert sorted(p.name for p in final.iterdir()) == ["notes.txt"]  # the user's file is intact
    assert (final / "notes.txt").read_text() == "mine"
    assert (tmp / "result").is_file() and (tmp / MARKER).is_file()  # the results are kept where it says
    assert not list(tmp_path.glob(".out.old-*"))


def test_staged_replaces_an_empty_folder_that_appears(tmp_path):
    from permerge.outputs import MARKER, staged

    final = tmp_path / "out"
    with staged(final) as tmp:
        (tmp / "result").write_text("r")
        final.mkdir()
    assert sorted(p.name for p in final.iterdir()) == [MARKER, "result"]


# --- 3. damaged caches ---------------------------------------------------------------------------------

def _cached_run(a, b, text, tmp_path, cache, name):
    return run("align", a, b, "--data", text, "--tokens", 512, "--out", tmp_path / name, cache=cache)


@pytest.mark.parametrize("damage", ["truncated-db", "garbage-db", "truncated-value"])
def test_damaged_cache_is_moved_aside_and_recomputed(tiny_mlm_pair, tmp_path, capsys, damage):
    a, b, text = tiny_mlm_pair
    cache = tmp_path / "cache"
    assert _cached_run(a, b, text, tmp_path, cache, "o1") == 0
    db = cache / "cache.db"
    if damage == "truncated-db":
        raw = db.read_bytes()
        db.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage-db":
        db.write_bytes(os.urandom(5000))
    else:
        vals = sorted(cache.rglob("*.val"))
        assert vals, "the statistics should be stored in a value file"
        for v in vals:
            v.write_bytes(v.read_bytes()[:100])
    capsys.readouterr()
    assert _cached_run(a, b, text, tmp_path, cache, "o2") == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) >= 1 and ("damaged" in warnings[0] or "unreadable" in warnings[0]), err
    assert "Traceback" not in err
    r1 = json.loads((tmp_path / "o1" / "report.json").read_text())["groups"]
    r2 = json.loads((tmp_path / "o2" / "report.json").read_text())["groups"]
    assert r1 == r2
    if damage != "truncated-value":
        assert list(cache.glob("corrupt-*/cache.db"))
    # and the recovered cache works: a third run is served from it
    capsys.readouterr()
    assert _cached_run(a, b, text, tmp_path, cache, "o3") == 0
    assert "warning" not in capsys.readouterr().err


def test_damaged_cache_leaves_the_users_files_in_place(tmp_path):
    """--cache-dir may name a folder with the user's own files: only diskcache's move aside."""
    from permerge.cache import ResultCache

    cache = tmp_path / "mine"
    c = ResultCache(cache)
    c.set("k", b"x" * 100_000)  # large enough for a value file in a hex folder
    c.close()
    hexdirs = sorted(p.name for p in cache.iterdir() if p.is_dir() and p.name not in ("locks",))
    assert hexdirs, "diskcache should have written a value folder"
    (cache / "en").mkdir()
    (cache / "en" / "vocab.txt").write_text("user")
    (cache / "ab.txt").write_text("user")  # two-character-ish names that are not diskcache's
    (cache / "cache.db.bak").write_text("user")
    (cache / "cache.db").write_bytes(os.urandom(5000))
    with pytest.warns(Warning, match="damaged"):
        c = ResultCache(cache)
    c.close()
    assert (cache / "en" / "vocab.txt").read_text() == "user"
    assert (cache / "ab.txt").read_text() == "user" and (cache / "cache.db.bak").read_text() == "user"
    aside = list(cache.glob("corrupt-*"))
    assert len(aside) == 1 and (aside[0] / "cache.db").is_file()
    assert sorted(p.name for p in aside[0].iterdir() if p.is_dir()) == hexdirs


def test_cache_dir_that_is_a_file(tiny_mlm_pair, tmp_path, capsys):
    a, b, text = tiny_mlm_pair
    f = tmp_path / "file"
    f.write_text("x")
    one_line_error(capsys, ["align", a, b, "--data", text, "--out", tmp_path / "o"], "is a file, not a folder", cache=f)


def test_full_disk_while_caching_leaves_no_orphan(tiny_mlm_pair, tmp_path, capsys, monkeypatch):
    """Every value file write fails half-way with ENOSPC: the run goes on uncached, no partial
    value file and no lock remain."""
    import errno

    import diskcache.core

    class FullDisk:
        def __init__(self, path, mode, encoding=None):
            self.fh = open(path, mode, encoding=encoding)

        def write(self, chunk):
            self.fh.write(chunk[:10])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    monkeypatch.setattr(diskcache.core, "open", FullDisk, raising=False)
    a, b, text = tiny_mlm_pair
    cache = tmp_path / "cache"
    assert _cached_run(a, b, text, tmp_path, cache, "o") == 0
    err = capsys.readouterr().err
    assert "warning: could not store a result in the cache" in err and "No space left" in err
    assert not list(cache.rglob("*.val"))
    assert not list((cache / "locks").glob("*.lock"))


# --- 4, 5. missing, unexpected and non-finite weights --------------------------------------------------

def _edited_b(b, tmp_path, edit):
    bad = tmp_path / "bad"
    shutil.copytree(b, bad)
    sd = load_file(str(bad / "model.safetensors"))
    edit(sd)
    save_file(sd, str(bad / "model.safetensors"), metadata={"format": "pt"})
    return bad


def test_missing_or_unexpected_tensor_is_named(tiny_mlm_pair, tmp_path, capsys, no_compute):
    a, b, text = tiny_mlm_pair
    name = "bert.encoder.layer.1.attention.self.query.weight"
    bad = _edited_b(b, tmp_path, lambda sd: sd.pop(name))
    one_line_error(capsys, ["align", a, bad, "--data", text, "--out", tmp_path / "o"], f"lacks the tensor {name}")
    shutil.rmtree(bad)
    bad = _edited_b(b, tmp_path, lambda sd: sd.update({"bert.encoder.layer.7.output.dense.weight": torch.zeros(2, 2)}))
    one_line_error(capsys, ["align", a, bad, "--data", text, "--out", tmp_path / "o"],
                   "unexpected tensor bert.encoder.layer.7.output.dense.weight")


def test_pretraining_heads_are_not_unexpected(tiny_mlm_pair, tmp_path):
    """BERT's hub checkpoints carry the next-sentence head and the pooler: loading them as an MLM
    is fine (those tensors belong to heads the MLM does not have)."""
    from permerge.checkpoints import load_checkpoint

    _, b, _ = tiny_mlm_pair
    bad = _edited_b(b, tmp_path, lambda sd: sd.update({"cls.seq_relationship.weight": torch.zeros(2, 24),
                                                       "bert.pooler.dense.weight": torch.zeros(24, 24)}))
    assert load_checkpoint(str(bad)).architecture == "BertForMaskedLM"


def test_non_finite_weights_in_the_head(tiny_mlm_pair, tmp_path, capsys, no_compute):
    a, b, text = tiny_mlm_pair

    def nan_head(sd):
        sd["cls.predictions.bias"][3] = float("nan")
        sd["cls.predictions.transform.dense.weight"][0, 0] = float("inf")
    bad = _edited_b(b, tmp_path, nan_head)
    cache = tmp_path / "cache"
    one_line_error(capsys, ["interpolate", a, bad, "--data", text, "--out", tmp_path / "o"],
                   "non-finite weights in cls.predictions.bias (1 NaN, 0 inf)", cache=cache)


def test_non_finite_loss_in_a_sweep_is_an_error_and_not_cached(tiny_mlm_pair, tmp_path, capsys, monkeypatch):
    import diskcache

    import permerge.pipeline as P

    real, calls = P.evaluate, []

    def overflowing(*a, **k):  # the vanilla curve's third point (lambda 0.5 of 5) overflows
        r = real(*a, **k)
        calls.append(1)
        return {**r, "loss": float("inf")} if len(calls) == 3 else r
    monkeypatch.setattr(P, "evaluate", overflowing)
    a, b, text = tiny_mlm_pair
    cache = tmp_path / "cache"
    out = tmp_path / "o"
    msg = one_line_error(capsys, ["interpolate", a, b, "--data", text, "--tokens", 512, "--lambdas", 5,
                                  "--eval-blocks", 2, "--out", out], "is not finite", out, cache=cache)
    assert "lambda 0.50" in msg
    keys = [str(k) for k in diskcache.Cache(str(cache))]
    assert keys and not [k for k in keys if k.startswith("curve:")]  # statistics cached, no curve


# --- 6. tokenizers and [UNK] ---------------------------------------------------------------------------

def test_tokenizer_presence(tmp_path, capsys):
    m1, m2 = make_model(1, **KW), make_model(2, **KW)
    a_bare, b_bare = tmp_path / "a0", tmp_path / "b0"
    m1.save_pretrained(str(a_bare))
    m2.save_pretrained(str(b_bare))
    a = save_checkpoint(make_model(1, **KW), tmp_path / "a")
    text = write_text(tmp_path / "t.txt", n_words=3000)
    one_line_error(capsys, ["align", a_bare, b_bare, "--data", text, "--out", tmp_path / "o"],
                   "neither checkpoint has a tokenizer")
    out = tmp_path / "o2"
    assert run("align", a, b_bare, "--data", text, "--tokens", 512, "--out", out) == 0
    err = capsys.readouterr().err
    assert "warning: checkpoint B has no tokenizer files; using checkpoint A's tokenizer" in err
    assert "different vocabularies" not in err
    assert (out / "model" / "tokenizer.json").is_file()  # B' is usable on its own


def test_mostly_unknown_data_is_warned_about(tiny_mlm_pair, tmp_path, capsys):
    a, b, text = tiny_mlm_pair
    lines = text.read_text().splitlines()
    noisy = tmp_path / "noisy.txt"
    noisy.write_text("\n".join(line + " \u00a7\u00b6 \u2603" for line in lines) + "\n")
    assert run("align", a, b, "--data", noisy, "--tokens", 512, "--out", tmp_path / "o") == 0
    err = capsys.readouterr().err
    warn = [x for x in err.splitlines() if x.startswith("warning: ") and "[UNK]" in x]
    assert warn and "% of the data's tokens are [UNK]" in warn[0], err
    assert run("align", a, b, "--data", text, "--tokens", 512, "--out", tmp_path / "o2") == 0
    assert "[UNK]" not in capsys.readouterr().err  # clean data: no warning


# --- 7. numeric options ---------------------------------------------------------------------------------

@pytest.mark.parametrize("option,value,pattern", [
    ("--eval-blocks", "-4", "argument --eval-blocks: must be at least 1, got -4"),
    ("--eval-blocks", "0", "argument --eval-blocks: must be at least 1, got 0"),
    ("--batch-size", "0", "argument --batch-size: must be at least 1, got 0"),
    ("--batch-size", "-2", "argument --batch-size: must be at least 1, got -2"),
    ("--tokens", "0", "argument --tokens: must be at least 1, got 0"),
    ("--tokens", "ten", "argument --tokens: must be an integer, got 'ten'"),
    ("--lambdas", "1", "argument --lambdas: must be at least 2, got 1"),
    ("--snapshots", "0,2", "fractions must lie in (0, 1]"),
])
def test_numeric_options_are_validated_at_parse_time(tiny_mlm_pair, tmp_path, capsys, no_compute, option, value,
                                                     pattern):
    a, b, text = tiny_mlm_pair
    t0 = time.time()
    one_line_error(capsys, ["interpolate", a, b, "--data", text, option, value, "--out", tmp_path / "o"], pattern)
    assert time.time() - t0 < 5


# --- 8. GLUE folders ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cls_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    kw = {**KW, "head": "cls", "num_labels": 2}
    return save_checkpoint(make_model(1, **kw), root / "a"), save_checkpoint(make_model(2, **kw), root / "b")


def _task(folder: Path, dev_rows, header="sentence\tlabel") -> Path:
    folder.mkdir()
    good = [f"the king was good .\t{i % 2}" for i in range(20)]
    (folder / "train.tsv").write_text("\n".join([header] + good) + "\n")
    (folder / "dev.tsv").write_text("\n".join([header] + good[:4] + dev_rows) + "\n")
    return folder


@pytest.mark.parametrize("rows,pattern", [
    (["a man .\t-1"], "dev.tsv, line 6: label -1 is negative"),
    (["a man ."], "dev.tsv, line 6: 1 tab-separated column(s), expected 2"),
    (["a man .\tentailment"], "dev.tsv, line 6: label 'entailment' mixes with numeric labels"),
    (["a man .\tnan"], "dev.tsv, line 6: label 'nan' is not a finite number"),
    (["a man .\t0.5"], "dev.tsv, line 6: label 0.5 is not a class id; the checkpoints are 2-way classifiers"),
    (["a man .\t7"], "dev.tsv, line 6: label 7 is out of range for the checkpoints' 2 classes"),
    (["a man .\t"], "dev.tsv, line 6: empty label"),
])
def test_bad_glue_rows_name_file_and_line(cls_pair, tmp_path, capsys, no_compute, rows, pattern):
    a, b = cls_pair
    task = _task(tmp_path / "task", rows)
    msg = one_line_error(capsys, ["align", a, b, "--data", task, "--out", tmp_path / "o"], pattern)
    assert str(task / "dev.tsv") in msg


def test_cola_short_row(cls_pair, tmp_path, capsys, no_compute):
    a, b = cls_pair
    task = tmp_path / "cola"
    task.mkdir()
    rows = [f"src\t{i % 2}\t\tthe king was good ." for i in range(12)]
    (task / "train.tsv").write_text("\n".join(rows) + "\n")
    (task / "dev.tsv").write_text("\n".join(rows[:3] + ["src\t1\t"] + rows[3:]) + "\n")
    one_line_error(capsys, ["align", a, b, "--data", task, "--out", tmp_path / "o"],
                   "dev.tsv, line 4: 3 tab-separated column(s), expected 4")


# --- 9. device, unwritable --out, non-regular --data ------------------------------------------------------

@pytest.fixture
def no_load(monkeypatch):
    import permerge.pipeline as P

    def boom(*a, **k):
        raise AssertionError("the checkpoints were loaded before the device was checked")
    monkeypatch.setattr(P, "load_pair", boom)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error for a machine without a GPU")
def test_cuda_without_gpu_fails_before_loading(tiny_mlm_pair, tmp_path, capsys, no_load):
    a, b, text = tiny_mlm_pair
    one_line_error(capsys, ["align", a, b, "--data", text, "--device", "cuda", "--out", tmp_path / "o"],
                   "--device cuda was asked for, but no CUDA GPU is available")


def test_unknown_device_fails_before_loading(tiny_mlm_pair, tmp_path, capsys, no_load):
    a, b, text = tiny_mlm_pair
    one_line_error(capsys, ["align", a, b, "--data", text, "--device", "tpu", "--out", tmp_path / "o"],
                   "unknown device 'tpu'")


def test_unwritable_out_fails_before_compute(tiny_mlm_pair, tmp_path, capsys, monkeypatch, no_load):
    a, b, text = tiny_mlm_pair
    # /proc accepts no new files, for root too: like a read-only mount
    one_line_error(capsys, ["align", a, b, "--data", text, "--out", "/proc/permerge-out"], "cannot write to /proc")
    import permerge.outputs as O

    monkeypatch.setattr(O.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 0))
    one_line_error(capsys, ["align", a, b, "--data", text, "--out", tmp_path / "o"], "not enough free space", tmp_path / "o")
    # a full disk while writing the results: one line, nothing half-written
    monkeypatch.undo()
    import permerge.checkpoints as C

    def enospc(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(C, "save_model", enospc)
    out = tmp_path / "o2"
    one_line_error(capsys, ["align", a, b, "--data", text, "--tokens", 512, "--out", out],
                   "cannot write the output at", out)
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_non_regular_and_system_data_paths_are_refused(tiny_mlm_pair, tmp_path, capsys, no_load):
    a, b, _ = tiny_mlm_pair
    fifo = tmp_path / "fifo.txt"
    os.mkfifo(fifo)
    one_line_error(capsys, ["align", a, b, "--data", fifo, "--out", tmp_path / "o"], "not a regular file or folder")
    folder = tmp_path / "texts"
    folder.mkdir()
    write_text(folder / "a.txt")
    os.mkfifo(folder / "b.txt")
    one_line_error(capsys, ["align", a, b, "--data", folder, "--out", tmp_path / "o"], "not a regular file or folder")
    for p in ("/etc/shadow", "/proc/self/environ", "/dev/zero"):
        if os.path.exists(p):
            one_line_error(capsys, ["align", a, b, "--data", p, "--out", tmp_path / "o"], "system folder")
    os.symlink("/proc/self/environ", tmp_path / "innocent.txt")
    one_line_error(capsys, ["align", a, b, "--data", tmp_path / "innocent.txt", "--out", tmp_path / "o"], "system folder")
    one_line_error(capsys, ["align", a, b, "--data", folder / "a.txt", "--eval-data", fifo, "--out", tmp_path / "o"],
                   "--eval-data")


def test_dashboard_jobs_refuse_system_paths_as_data(tiny_mlm_pair):
    """The dashboard's runs go through the same pipeline: /etc/shadow or /proc/self/environ typed as
    the text file is refused, not read."""
    from permerge.errors import DataError
    from permerge.pipeline import Job, Pipeline

    a, b, _ = tiny_mlm_pair
    for p in ("/etc/shadow", "/proc/self/environ"):
        if os.path.exists(p):
            with pytest.raises(DataError, match="system folder"):
                Pipeline(Job(str(a), str(b), p, device="cpu")).prepared


def test_dashboard_path_input_refuses_system_files(tmp_path, monkeypatch):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("PERMERGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(ROOT)
    real_main = sys.modules["__main__"]
    fifo = tmp_path / "fifo.txt"
    os.mkfifo(fifo)
    try:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=90).run().switch_page("pages/run.py").run()
        assert at.title[0].value == "Pick and run"
        at.radio[2].set_value("text file").run()
        for p, why in (("/proc/self/environ", "system folder"), ("/etc/shadow", "system folder"),
                       (str(fifo), "not a regular file or folder")):
            if not os.path.exists(p):
                continue
            at.text_input[0].set_value(p).run()
            assert not at.exception, [e.value for e in at.exception]
            assert any(why in e.value for e in at.error), (p, [e.value for e in at.error])
            assert [b for b in at.button if b.label == "Run alignment"][0].disabled
    finally:
        sys.modules["__main__"] = real_main


# --- 10. the dashboard refuses foreign Host headers ---------------------------------------------------------


def test_dashboard_refuses_a_foreign_host_header(tmp_path):
    pytest.importorskip("streamlit")
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)],
                         cwd=ROOT, env={**ENV, "PERMERGE_CACHE": str(tmp_path / "cache")},
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.time()
        while True:
            try:
                status = upgrade_status(port, f"127.0.0.1:{port}")
                break
            except OSError:
                assert time.time() - t0 < 60 and p.poll() is None, "the dashboard did not start"
                time.sleep(0.3)
        assert " 101 " in status, status  # its own address opens the WebSocket
        assert " 101 " in upgrade_status(port, f"localhost:{port}")
        for foreign in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}"):
            status = upgrade_status(port, foreign)
            assert " 101 " not in status, (foreign, status)
    finally:
        p.terminate()
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# --- 11. the Export page: exports folder, --out rules, a job -------------------------------------------------

def test_export_page_writes_safely_through_a_job(tiny_mlm_pair, tmp_path, monkeypatch):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    from dashboard import state as ui_state
    from dashboard.text import md
    from permerge.align import AlignOptions
    from permerge.outputs import MARKER
    from permerge.pipeline import Job

    a, b, text = tiny_mlm_pair
    monkeypatch.setenv("PERMERGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(ROOT)
    ui_state.registry.clear()
    ui_state.jobs.clear()
    job = Job(str(a), str(b), str(text), tokens=512, eval_blocks=2, device="cpu")
    run_ = ui_state.Run(job, AlignOptions(), 3, "test-export")
    default = Path(ui_state.default_export_dir(run_, 0.5))
    shutil.rmtree(default, ignore_errors=True)

    real_main = sys.modules["__main__"]  # Streamlit installs the page as __main__; spawned processes re-run it
    at = AppTest.from_file(str(ROOT / "pages" / "export.py"), default_timeout=120)
    at.session_state["run"] = run_
    at.run()
    assert not at.exception, [e.value for e in at.exception]

    def save(path=None, replace=False):
        if path is not None:
            at.text_input[0].set_value(str(path))
        [c for c in at.checkbox if c.label.startswith("Replace an earlier export")][0].set_value(replace)
        at.run()
        [x for x in at.button if x.label == "Save merged model"][0].click().run()
        assert not at.exception, [e.value for e in at.exception]
        if any("Cannot export there" in e.value for e in at.error):
            return None  # refused before any work
        key = at.session_state["export_key"]
        t0 = time.time()
        while ui_state.jobs().get(key).active and time.time() - t0 < 60:
            time.sleep(0.2)
        at.run()
        return key

    try:
        # the default: the project's exports folder, written by a job, with the marker
        key = save()
        assert ui_state.jobs().get(key).state == "done" and ui_state.jobs().get(key).label == "export"
        assert any(f"Saved to {md(default)}" in s.value for s in at.success), [s.value for s in at.success]
        assert (default / MARKER).is_file() and (default / "model.safetensors").is_file()
        assert not [p for p in default.parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]
        # the same folder again: refused without "Replace", replaced with it
        (default / "stale").write_text("x")
        save(default)
        assert any("exists and is not empty" in e.value for e in at.error)
        save(default, replace=True)  # a file permerge did not write: named, kept, nothing replaced
        assert any("did not write (stale)" in e.value for e in at.error), [e.value for e in at.error]
        assert (default / "stale").exists()
        (default / "stale").unlink()
        save(default, replace=True)
        assert (default / "model.safetensors").is_file()
        # outside the exports folder (a file, an input, the home folder, a user's folder): refused in
        # one line; inside it, a file or a folder permerge did not write: clean one-line errors too
        outside_file = tmp_path / "a-file"
        outside_file.write_text("x")
        outside = tmp_path / "mine"
        outside.mkdir()
        (outside / "keep").write_text("x")
        f = default.parent / "a-file"
        f.write_text("x")
        other = default.parent / "mine"
        other.mkdir(exist_ok=True)
        (other / "keep").write_text("x")
        for path in (outside_file, b, "~", outside, "../escape"):
            save(path, replace=True)
            assert any("Cannot export there" in e.value for e in at.error), (path, [e.value for e in at.error])
        for path, why in [(f, "exists and is not a folder"), (other, "permerge did not write it")]:
            save(path, replace=True)
            assert any(why in e.value for e in at.error), (path, [e.value for e in at.error])
        assert outside_file.read_text() == "x" and (outside / "keep").is_file() and (b / "config.json").is_file()
        assert f.read_text() == "x" and (other / "keep").is_file() and not (default.parent.parent / "escape").exists()
        # a relative name lands in the exports folder
        save("relative-name")
        assert (default.parent / "relative-name" / MARKER).is_file()
    finally:
        shutil.rmtree(default, ignore_errors=True)
        shutil.rmtree(default.parent / "relative-name", ignore_errors=True)
        shutil.rmtree(default.parent / "mine", ignore_errors=True)
        (default.parent / "a-file").unlink(missing_ok=True)
        ui_state.registry.clear()
        sys.modules["__main__"] = real_main
