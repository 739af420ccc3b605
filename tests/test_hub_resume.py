"""Downloads that go on across runs: permerge fetches each file of a hub checkpoint into a partial
file of its own in the Hugging Face cache (``blobs/<etag>.permerge-partial``), keeps it when a run
fails, is cancelled or killed, asks the loopback Hub (tests/hubserver.py) for the rest with a
Range request on the next run, checks the result and moves it into the client's layout."""
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hubfixtures import MB, layouts, loopback  # noqa: F401  (fixtures)
from permerge import hub as H
from permerge.errors import CheckpointError

WEIGHTS = "pytorch_model.bin"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def downloads():
    H.allow_downloads(True)
    yield
    H._allowed.set(None)


def _gets(loopback, name=WEIGHTS):
    return [r for m, p, r in loopback.log if m == "GET" and p.endswith("/" + name)]


def _resolve_allowed(repo):
    """``hub.resolve`` with downloads allowed for this call only."""
    H.allow_downloads(True)
    try:
        return H.resolve(repo)
    finally:
        H._allowed.set(None)


def _etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_failed_run_keeps_the_partial_and_the_next_run_goes_on(loopback, layouts, downloads, monkeypatch):
    from huggingface_hub import hf_hub_download

    from permerge.checkpoints import load_checkpoint

    monkeypatch.setattr(H, "RETRY_PAUSE_S", 0.01)
    repo, source = MB.format(0), (layouts["mb0"] / WEIGHTS).read_bytes()
    # the first reply breaks off after 100,000 bytes and every retry of this run gets nothing
    loopback.drop_after[(repo, WEIGHTS)] = 100_000
    loopback.drop_every[(repo, WEIGHTS)] = 0
    with pytest.raises(CheckpointError) as e:
        H.resolve(repo)
    msg = str(e.value)
    assert "\n" not in msg and "the transfer of pytorch_model.bin" in msg and "run again to go on" in msg, msg
    assert _gets(loopback) == [None] + ["bytes=100000-"] * H.RETRIES, _gets(loopback)
    part = H.partial_path(repo, _etag(source))
    assert part.stat().st_size == 100_000 and H.partial_files(repo) == [part]
    assert "100.0 kB are kept in" in msg and str(part) in msg, msg

    # the next run (a new plan, as a new process makes) asks only for the rest
    del loopback.drop_every[(repo, WEIGHTS)]
    H._plans.clear()
    loopback.log.clear()
    bars = []

    class Bar:  # records where the command line's bar starts
        def __init__(self, total=None, initial=0, **kw):
            bars.append((kw.get("desc"), initial, total))

        def update(self, n):
            pass

        def close(self):
            pass

    seen = []
    folder = H.fetch(H.plan(repo), bar=Bar, progress=lambda done, total, name: seen.append((done, name)))
    assert _gets(loopback) == ["bytes=100000-"], _gets(loopback)
    assert [f for _, f in loopback.downloads()] == [WEIGHTS]  # the small files were complete before
    assert (WEIGHTS, 100_000, len(source)) in bars, bars
    assert seen[0] == (100_000, WEIGHTS) and seen[-1] == (len(source), WEIGHTS), (seen[:2], seen[-1])
    assert (folder / WEIGHTS).read_bytes() == source and not part.exists() and not H.partial_files(repo)
    # the client's own layout: a relative link to the blob named by the ETag, and the branch's ref
    link = folder / WEIGHTS
    assert link.is_symlink() and os.readlink(link) == f"../../blobs/{_etag(source)}", os.readlink(link)
    commit = loopback.shas[repo]
    assert (H.repo_folder(repo) / "refs" / "main").read_text() == commit
    for rev in (None, commit):  # the real client finds it offline, by branch and by commit
        got = hf_hub_download(repo, WEIGHTS, revision=rev, cache_dir=str(H.cache_dir()), local_files_only=True)
        assert Path(got).read_bytes() == source
    assert load_checkpoint(repo).commit == commit  # and it loads


def test_a_killed_download_goes_on_in_the_next_process(loopback, layouts, tmp_path):
    repo, source = MB.format(1), (layouts["mb1"] / WEIGHTS).read_bytes()
    part = H.partial_path(repo, _etag(source))
    loopback.throttle = 0.05  # about 5 s for the 6 MB weights
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PERMERGE_ALLOW_DOWNLOADS": "1", "HF_HUB_OFFLINE": "0"}
    code = "import sys; from permerge import hub; hub.resolve(sys.argv[1])"
    child = subprocess.Popen([sys.executable, "-c", code, repo], env=env, cwd=str(ROOT))
    try:
        deadline = time.monotonic() + 120
        while not (part.exists() and part.stat().st_size > 2**20):
            assert child.poll() is None and time.monotonic() < deadline, "the download did not start"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)  # no chance to tidy up
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    loopback.throttle = 0.0
    kept = part.stat().st_size
    assert 0 < kept < len(source)
    assert (part.read_bytes()) == source[:kept]  # what was written is the file's beginning
    loopback.log.clear()
    folder = _resolve_allowed(repo)
    assert _gets(loopback) == [f"bytes={kept}-"], (_gets(loopback), kept)
    assert (folder / WEIGHTS).read_bytes() == source and not part.exists()


def test_a_partial_that_does_not_match_is_discarded(loopback, layouts, downloads):
    repo, source = MB.format(0), (layouts["mb0"] / WEIGHTS).read_bytes()
    part = H.partial_path(repo, _etag(source))
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\x00" * 1000)  # not the file's first bytes
    said = []
    folder = H.fetch(H.plan(repo), say=said.append)
    assert _gets(loopback) == ["bytes=1000-", None], _gets(loopback)
    assert any("partial download of pytorch_model.bin" in s and "does not match its sha256" in s
               and "discarded it, downloading it afresh" in s for s in said), said
    assert (folder / WEIGHTS).read_bytes() == source and not part.exists()


def test_a_blob_already_in_the_cache_is_kept(loopback, layouts, downloads):
    repo, source = MB.format(0), (layouts["mb0"] / WEIGHTS).read_bytes()
    blob = H.repo_folder(repo) / "blobs" / _etag(source)
    blob.parent.mkdir(parents=True)
    blob.write_bytes(source)
    before = blob.stat()
    folder = H.fetch(H.plan(repo))
    assert WEIGHTS not in [f for _, f in loopback.downloads()]
    after = blob.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert (folder / WEIGHTS).resolve() == blob.resolve()


def test_a_server_that_ignores_the_range_gets_a_clean_restart(loopback, layouts, downloads):
    repo, source = MB.format(0), (layouts["mb0"] / WEIGHTS).read_bytes()
    part = H.partial_path(repo, _etag(source))
    part.parent.mkdir(parents=True)
    part.write_bytes(source[:5000])  # a good beginning, but the server sends the whole file again
    loopback.ignore_ranges = True
    folder = H.fetch(H.plan(repo))
    assert _gets(loopback) == ["bytes=5000-"], _gets(loopback)
    assert (folder / WEIGHTS).read_bytes() == source  # not the first 5,000 bytes twice


def test_a_server_that_ignores_ranges_and_breaks_off_is_not_retried_for_ever(loopback, layouts, downloads,
                                                                             monkeypatch):
    """Every reply is the whole file (200) and breaks off after the same 50,000 bytes: each retry
    restarts the partial and never gets further, so the retries run out instead of going on for ever."""
    monkeypatch.setattr(H, "RETRY_PAUSE_S", 0.01)
    repo = MB.format(0)
    loopback.ignore_ranges = True
    loopback.drop_every[(repo, WEIGHTS)] = 50_000
    with pytest.raises(CheckpointError, match="run again to go on"):
        H.fetch(H.plan(repo))
    assert _gets(loopback) == [None] + ["bytes=50000-"] * H.RETRIES, _gets(loopback)


def test_a_disk_that_fills_up_mid_file_gives_one_line_and_keeps_the_partial(loopback, layouts, tmp_path, capsys,
                                                                            monkeypatch):
    import builtins
    import errno

    from permerge.cli import main

    repo, source = MB.format(0), (layouts["mb0"] / WEIGHTS).read_bytes()
    part = H.partial_path(repo, _etag(source))

    class Full:  # a file on a disk with room for 300,000 bytes of the partial
        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            room = 300_000 - self.fh.tell()
            if len(data) > room:
                self.fh.write(data[:max(room, 0)])
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.fh.write(data)

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    def full_open(path, mode="r", *a, **kw):
        fh = builtins.open(path, mode, *a, **kw)
        return Full(fh) if str(path).endswith(H.PARTIAL_SUFFIX) and "b" in mode and mode != "rb" else fh

    monkeypatch.setattr(H, "open", full_open, raising=False)
    argv = ["align", repo, MB.format(1), "--data", layouts["text"], "--out", tmp_path / "o", "--allow-downloads",
            "--no-cache", "--quiet"]
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: not enough free disk"), err
    assert "filled up while pytorch_model.bin was downloading" in err[0] and str(part) in err[0], err[0]
    assert part.stat().st_size == 300_000 and part.read_bytes() == source[:300_000]
    monkeypatch.delattr(H, "open")  # room again: the next run goes on from there
    H._plans.clear()
    loopback.log.clear()
    folder = _resolve_allowed(repo)
    assert _gets(loopback) == ["bytes=300000-"], _gets(loopback)
    assert (folder / WEIGHTS).read_bytes() == source


@pytest.mark.parametrize("etag", ["../../../outside", "a/b", "", "x" * 300])
def test_an_etag_that_is_no_plain_name_is_refused(monkeypatch, tmp_path, etag):
    """The ETag names the blob file in the cache: a server that sends a path gets one line, and no
    file is written anywhere."""
    import huggingface_hub
    from types import SimpleNamespace

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata",
                        lambda url, **kw: SimpleNamespace(etag=etag, size=10, location=url, commit_hash="0" * 40))
    p = H.HubPlan("org/model", "org/model", None, "0" * 40, [H.HubFile(WEIGHTS, 10, False)])
    with pytest.raises(CheckpointError, match="no valid ETag"):
        H._file_meta(p, WEIGHTS, {})
    assert not [f for f in tmp_path.rglob("*") if f.is_file()]


def test_a_commit_id_that_is_no_sha_is_refused(monkeypatch, tmp_path):
    """The commit names the snapshot folder: anything but 40 hex digits is refused before any file."""
    import huggingface_hub
    from types import SimpleNamespace

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(H, "_probe", lambda source: None)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, repo_id, **kw: SimpleNamespace(
        sha="../../elsewhere", siblings=[SimpleNamespace(rfilename=n, size=1) for n in ("config.json", WEIGHTS)]))
    with pytest.raises(CheckpointError, match="no valid commit id"):
        H.plan("org/evil-commit", refresh=True)
