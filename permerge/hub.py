"""Checkpoints from the Hugging Face Hub: ``NAME@REVISION``, the files a checkpoint needs, their size
and cached state, the download with progress, and a one-line error for every way it can fail.

A hub id is read from the local Hugging Face cache only, unless downloads are allowed
(``PERMERGE_ALLOW_DOWNLOADS=1``, ``--allow-downloads`` on the command line, or the dashboard's
switch).  With downloads allowed permerge asks the Hub for the repository's file list at the
revision (a branch, tag or commit; ``main`` by default), resolves it to a commit, and fetches only
what a checkpoint needs: ``config.json``, the tokenizer's files and one weights format
(safetensors when the repository has it, else ``pytorch_model.bin``, sharded or not), never
TensorFlow, Flax, ONNX or other files.  Everything is read from the snapshot folder of that commit
(``.../snapshots/<sha>/``), so what is cached and computed is keyed by the commit and the content,
never by a branch name.

The real ``huggingface_hub`` client reads the file list and each file's metadata (URL, ETag,
size, commit, with the token and headers it would send); permerge then fetches each file itself
with HTTP range requests into ``blobs/<etag>.permerge-partial`` of the repository's cache folder,
which Cancel, an error or a killed process leave in place and the next run continues from its
size; a complete file is checked and moved into the client's layout, where the client (and
``local_files_only=True``) finds it.  ``HF_ENDPOINT`` points at a mirror and ``HF_HOME`` /
``HF_HUB_CACHE`` at another cache, read at each call.
"""
from __future__ import annotations

import contextvars
import os
import re
import shutil
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from .errors import CheckpointError, PermergeError, warn
from .outputs import current_umask

ALLOW_DOWNLOADS = "PERMERGE_ALLOW_DOWNLOADS"
DEFAULT_ENDPOINT = "https://huggingface.co"
# Set for one command (--allow-downloads) or one dashboard job (its switch); the environment
# variable allows downloads for the whole process.
_allowed: contextvars.ContextVar[bool | None] = contextvars.ContextVar("permerge_allow_downloads", default=None)

CONFIG = "config.json"
# Every file a tokenizer may be read from (the vocabulary files and the files that configure it).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model")
_SHARD = {"safetensors": re.compile(r"model-\d+-of-\d+\.safetensors"),
          "bin": re.compile(r"pytorch_model-\d+-of-\d+\.bin")}
_SHA = re.compile(r"[0-9a-f]{40}")
DISK_MARGIN = 64 * 2**20  # free space kept beside a download


def downloads_allowed() -> bool:
    v = _allowed.get()
    if v is not None:
        return v
    return os.environ.get(ALLOW_DOWNLOADS, "").strip().lower() in ("1", "true", "yes")


def allow_downloads(on: bool = True):
    """Allow (or forbid) downloads in this context; returns the token for ``_allowed.reset``."""
    return _allowed.set(bool(on))


def split_ref(source: str) -> tuple[str, str | None]:
    """``org/name@rev`` -> ("org/name", "rev"); without ``@`` the revision is None (``main``)."""
    repo, sep, rev = source.rpartition("@")
    if not sep:
        return source, None
    if not repo or not rev:
        raise CheckpointError(f"cannot read checkpoint name {source!r}: write NAME@REVISION (a branch, tag or "
                              "commit after the @)")
    return repo, rev


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def cache_dir() -> Path:
    """The Hugging Face hub cache, from the environment at this moment."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def repo_folder(repo_id: str, root: Path | None = None) -> Path:
    return (root or cache_dir()) / ("models--" + repo_id.replace("/", "--"))


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "size unknown"
    for unit, k in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{n} B"


# --- which files a checkpoint needs ---------------------------------------------------------------

def needed_files(names) -> list[str]:
    """The files of a repository that a checkpoint needs: its config, its tokenizer files and one
    weights format (safetensors if present, else pytorch_model.bin; sharded ones with their index).
    Raises CheckpointError when there is no config or no weights permerge can read."""
    names = set(names)
    if CONFIG not in names:
        raise CheckpointError("it has no config.json")
    want = [CONFIG] + [f for f in TOKENIZER_FILES if f in names]
    for fmt, single, index in (("safetensors", "model.safetensors", "model.safetensors.index.json"),
                               ("bin", "pytorch_model.bin", "pytorch_model.bin.index.json")):
        if single in names:
            return want + [single]
        if index in names:
            shards = sorted(n for n in names if _SHARD[fmt].fullmatch(n))
            if shards:
                return want + [index] + shards
    other = sorted(n for n in names if n.endswith((".h5", ".msgpack", ".onnx", ".ckpt", ".pt", ".pth", ".gguf")))
    raise CheckpointError("it has no model.safetensors or pytorch_model.bin weights"
                          + (f" (only {', '.join(other[:3])}, which permerge does not read)" if other else ""))


@dataclass
class HubFile:
    name: str
    size: int | None
    cached: bool


@dataclass
class HubPlan:
    """What a download of one checkpoint means: the commit, and each needed file's size and state."""
    source: str
    repo_id: str
    revision: str | None
    commit: str
    files: list[HubFile] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(f.size or 0 for f in self.files)

    @property
    def missing(self) -> list[HubFile]:
        return [f for f in self.files if not f.cached]

    @property
    def missing_bytes(self) -> int:
        return sum(f.size or 0 for f in self.missing)

    def headline(self) -> str:
        n = len(self.files)
        state = ("all cached" if not self.missing else
                 f"{fmt_bytes(self.missing_bytes)} to download" if len(self.missing) < n else "none cached yet")
        return (f"{self.source} (commit {self.commit[:12]}): {n} files, {fmt_bytes(self.total_bytes)}, {state}")

    def lines(self) -> list[str]:
        return [self.headline()] + [f"  {f.name}  {fmt_bytes(f.size)}  {'cached' if f.cached else 'to download'}"
                                    for f in self.files]


# --- talking to the Hub --------------------------------------------------------------------------

def _probe(source: str) -> None:
    """One quick connection to the Hub's host (left out behind a proxy, where it would not tell)."""
    if any(k.lower().endswith("_proxy") and v for k, v in os.environ.items()):
        return
    url = urlparse(endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=5).close()
    except OSError as e:
        raise CheckpointError(f"cannot download checkpoint {source!r}: {url.hostname} cannot be reached "
                              f"({e.strerror or e}); work offline with a local folder") from None


def _hub_error(source: str, e: BaseException) -> CheckpointError:
    """One line for an error of the Hub client."""
    from huggingface_hub import errors as E

    rev = split_ref(source)[1]
    if isinstance(e, E.GatedRepoError):
        return CheckpointError(f"cannot download checkpoint {source!r}: the repository is gated; accept its terms "
                               "on the Hub and log in (huggingface-cli login, or HF_TOKEN)")
    if isinstance(e, E.RepositoryNotFoundError):
        return CheckpointError(f"cannot download checkpoint {source!r}: no such repository on the Hub "
                               f"({endpoint()}), or it is private")
    if isinstance(e, E.RevisionNotFoundError):
        return CheckpointError(f"cannot download checkpoint {source!r}: the repository has no branch, tag or "
                               f"commit {rev or 'main'!r}")
    if isinstance(e, E.OfflineModeIsEnabled):
        return CheckpointError(f"cannot download checkpoint {source!r}: HF_HUB_OFFLINE is set; unset it to "
                               "allow downloads")
    status = getattr(getattr(e, "response", None), "status_code", None)
    if isinstance(e, E.HfHubHTTPError) and status is not None:
        return CheckpointError(f"cannot download checkpoint {source!r}: the Hub answered HTTP {status}")
    if isinstance(e, (ConnectionError, TimeoutError, OSError)) or "connect" in type(e).__name__.lower():
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return CheckpointError(f"cannot download checkpoint {source!r}: the transfer from {endpoint()} failed "
                               f"({msg}); what was complete stays in the cache, run again to go on")
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return CheckpointError(f"cannot download checkpoint {source!r}: {msg}")


# (endpoint, source) -> (when, plan): a name is resolved once for a while, so that a run's config
# and weights come from one commit; a long-lived dashboard sees a branch that moved after PLAN_TTL_S.
_plans: dict[tuple[str, str], tuple[float, HubPlan]] = {}
_plans_lock = threading.Lock()
PLAN_TTL_S = 600.0


def plan(source: str, refresh: bool = False) -> HubPlan:
    """Ask the Hub for the file list of ``source`` at its revision: the commit and each needed
    file's size, and whether it is in the local cache already (remembered for PLAN_TTL_S)."""
    import time

    key = (endpoint(), source)
    with _plans_lock:
        hit = _plans.get(key)
        if not refresh and hit is not None and time.monotonic() - hit[0] < PLAN_TTL_S:
            return _refresh_cached(hit[1])
    from huggingface_hub import HfApi

    repo_id, rev = split_ref(source)
    _probe(source)
    try:
        info = HfApi(endpoint=endpoint()).model_info(repo_id, revision=rev, files_metadata=True)
    except Exception as e:
        raise _hub_error(source, e) from None
    if not _SHA.fullmatch(info.sha or ""):  # it names a cache folder: never a path of the server's choosing
        raise CheckpointError(f"cannot use checkpoint {source!r} from the Hub: {endpoint()} gave no valid commit id")
    sizes = {s.rfilename: s.size for s in (info.siblings or [])}
    try:
        names = needed_files(sizes)
    except CheckpointError as e:
        raise CheckpointError(f"cannot use checkpoint {source!r} from the Hub: {e}") from None
    p = _refresh_cached(HubPlan(source, repo_id, rev, info.sha, [HubFile(n, sizes.get(n), False) for n in names]))
    with _plans_lock:
        _plans[key] = (time.monotonic(), p)
    return p


def _refresh_cached(p: HubPlan) -> HubPlan:
    snap = repo_folder(p.repo_id) / "snapshots" / p.commit
    for f in p.files:
        f.cached = (snap / f.name).is_file()
    return p


def check_disk(p: HubPlan, free_bytes=None) -> None:
    """Enough free space in the cache for what is still to come (before anything is fetched)."""
    root = repo_folder(p.repo_id)
    probe_at = root
    while not probe_at.exists() and probe_at != probe_at.parent:
        probe_at = probe_at.parent
    free = (free_bytes or free_space)(probe_at)
    need = p.missing_bytes + DISK_MARGIN
    if p.missing and free < need:
        raise CheckpointError(f"not enough free disk for checkpoint {p.source!r}: {fmt_bytes(p.missing_bytes)} to "
                              f"download (and {fmt_bytes(DISK_MARGIN)} to spare), {fmt_bytes(free)} free in "
                              f"{probe_at}; free some space or set HF_HOME to another disk")


def free_space(path: Path) -> int:
    return shutil.disk_usage(path).free


def _write_ref(p: HubPlan) -> None:
    """Remember which commit the branch or tag named, so that the same name works offline later."""
    if p.revision is None or _SHA.fullmatch(p.revision):
        rev = "main" if p.revision is None else None
    else:
        rev = p.revision
    if rev is None:
        return
    ref = repo_folder(p.repo_id) / "refs" / rev
    try:
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(p.commit)
    except OSError:
        pass  # the snapshot is usable by its commit all the same


def fetch(p: HubPlan, names=None, progress=None, bar=None, say=None, received=None) -> Path:
    """Download the plan's files that are not cached (only ``names`` when given) and return the
    snapshot folder.  ``progress(done_bytes, total_bytes, file)`` is called as bytes arrive (it may
    raise to cancel: the file being fetched stays as a partial download that the next fetch goes
    on from, those complete are in the cache); ``bar`` is a tqdm class for a progress bar (the
    command line); ``say`` takes a line of news (else it is a warning); ``received``, a one-item
    list, counts the bytes that came over the network in this call (for a speed)."""
    from huggingface_hub.utils import build_hf_headers

    _refresh_cached(p)
    todo = [f for f in p.missing if names is None or f.name in names]
    total = sum(f.size or 0 for f in todo)
    check_disk(p)  # room for the whole checkpoint, before even its config is fetched
    headers = build_hf_headers()  # the token, user agent and headers the client itself would send
    done = 0
    for f in todo:
        report = _Report(progress, done, total, f.name, f.size, bar, received)
        try:
            _transfer(p, f.name, headers, report, say)
        except PermergeError:  # ours: a one-line error, or Cancel from the progress callback
            raise
        except Exception as e:
            raise _hub_error(p.source, e) from None
        finally:
            report.close()
        done += f.size or 0
        f.cached = True
    _write_ref(p)
    return repo_folder(p.repo_id) / "snapshots" / p.commit


class _Report:
    """Bytes of one file as they arrive: to ``progress`` (at most every PROGRESS_EVERY_S, and at
    the first bytes and the last) and to a tqdm bar (bytes, speed, time left) that starts at the
    bytes a partial download already holds."""

    def __init__(self, progress, base: int, total: int, name: str, size: int | None, bar, received):
        self.progress, self.base, self.total, self.name, self.size = progress, base, total, name, size
        self.bar_cls, self.bar, self.received = bar, None, received
        self.have, self.last = 0, None

    def __call__(self, have: int, new_file: bool = False) -> None:
        import time

        if self.received is not None and not new_file and have > self.have:
            self.received[0] += have - self.have
        if self.bar_cls is not None:
            if new_file or self.bar is None:
                self.close()
                self.bar = self.bar_cls(total=self.size, initial=have, desc=self.name, unit="B", unit_scale=True)
            else:
                self.bar.update(have - self.have)
        self.have = have
        now = time.monotonic()
        if self.progress is not None and (new_file or self.last is None or have == self.size
                                          or now - self.last >= PROGRESS_EVERY_S):
            self.last = None if new_file else now
            self.progress(self.base + have, self.total, self.name)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# --- resumable transfers ----------------------------------------------------------------------
# permerge fetches each file itself, so that a transfer broken off by Cancel, Ctrl-C, a killed
# process or a dropped line goes on from where it stopped, in this run or the next: the bytes go
# to ``blobs/<etag>.permerge-partial`` in the repository's folder of the Hugging Face cache, which
# is kept on any failure; a later run asks for the rest with ``Range: bytes=<size>-``.  A complete
# file is checked (size; sha256 where the ETag is one, as for LFS weights) and moved into the
# client's own layout: ``blobs/<etag>``, ``snapshots/<commit>/<file> -> ../../blobs/<etag>``, and
# ``refs/<branch>``, so that ``hf_hub_download(..., local_files_only=True)`` finds it.
PARTIAL_SUFFIX = ".permerge-partial"
RETRIES = 5  # broken connections retried within one run, counted from the last time the file got further
RETRY_PAUSE_S = 0.5
PROGRESS_EVERY_S = 0.05
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ETAG = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,127}")


def partial_path(repo_id: str, etag: str) -> Path:
    return repo_folder(repo_id) / "blobs" / (etag + PARTIAL_SUFFIX)


def partial_files(repo_id: str | None = None) -> list[Path]:
    """The partial downloads permerge keeps in the cache (of one repository, or of all)."""
    pattern = ("models--" + repo_id.replace("/", "--")) if repo_id else "models--*"
    return sorted(cache_dir().glob(f"{pattern}/blobs/*{PARTIAL_SUFFIX}"))


def _file_meta(p: HubPlan, name: str, headers: dict):
    """(Hub URL, URL to fetch (a CDN's, after the Hub's redirect), ETag, size) of one file at the
    plan's commit, as the client reads them (one HEAD request; errors are the client's)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(p.repo_id, name, revision=p.commit, endpoint=endpoint())
    meta = get_hf_file_metadata(url, headers=headers, endpoint=endpoint())
    if not meta.etag or not _ETAG.fullmatch(meta.etag):  # it names the blob file: no path of the server's choosing
        raise CheckpointError(f"cannot download checkpoint {p.source!r}: the Hub gave no valid ETag for {name}")
    location = meta.location or url
    return url, location, meta.etag, meta.size


def _request_headers(url: str, location: str, base: dict) -> dict:
    h = dict(base)
    h["Accept-Encoding"] = "identity"  # byte ranges of the file itself, never of a compressed stream
    if urlparse(location).netloc != urlparse(url).netloc:
        h.pop("authorization", None)  # as the client does: the token stays with the Hub, not the CDN
        h.pop("Authorization", None)
    return h


def _link_into_snapshot(p: HubPlan, name: str, blob: Path) -> None:
    """``snapshots/<commit>/<name>`` -> ``../../blobs/<etag>`` (relative), as the client writes it;
    a file already there is kept, a dangling link is replaced (a copy where links are not possible)."""
    pointer = repo_folder(p.repo_id) / "snapshots" / p.commit / name
    pointer.parent.mkdir(parents=True, exist_ok=True)
    if pointer.is_symlink() and not pointer.exists():
        pointer.unlink()
    if os.path.lexists(pointer):
        return
    try:
        os.symlink(os.path.relpath(blob, pointer.parent), pointer)
    except OSError:
        shutil.copyfile(blob, pointer)


def _disk_full(p: HubPlan, name: str, part: Path) -> CheckpointError:
    return CheckpointError(f"not enough free disk for checkpoint {p.source!r}: the disk filled up while {name} was "
                           f"downloading; free some space (or set HF_HOME to another disk) and run again, it goes on "
                           f"from the {fmt_bytes(part.stat().st_size if part.exists() else 0)} in {part}")


@dataclass
class _Partial:
    """A file's partial download (``blobs/<etag>.permerge-partial``): how many bytes it holds and,
    for a file whose ETag is its sha256 (LFS), the running hash of those bytes."""
    path: Path
    check: bool
    have: int = 0
    sha: object = None

    @classmethod
    def open(cls, path: Path, size: int | None, check: bool) -> "_Partial":
        """What an earlier run left (more bytes than the file has: dropped); ``hash_kept`` hashes it."""
        import hashlib

        have = path.stat().st_size if path.exists() else 0
        if size is not None and have > size:
            path.unlink()
            have = 0
        return cls(path, check, have, hashlib.sha256() if check else None)

    def hash_kept(self) -> None:
        """The running sha256 over the bytes an earlier run kept (a resumed LFS file)."""
        if self.sha is not None and self.have:
            with open(self.path, "rb") as fh:
                for block in iter(lambda: fh.read(2**20), b""):
                    self.sha.update(block)

    def restart(self) -> None:
        import hashlib

        self.have = 0
        self.sha = hashlib.sha256() if self.check else None

    def add(self, chunk: bytes) -> None:
        self.have += len(chunk)
        if self.sha is not None:
            self.sha.update(chunk)

    def matches(self, etag: str) -> bool:
        return self.sha is None or self.sha.hexdigest() == etag


def _stream_once(location: str, headers: dict, part: _Partial, size: int | None, report) -> None:
    """One GET of what ``part`` lacks, appended to it as the bytes come (all that arrived is kept).
    A reply that is not the asked range restarts the partial from the file's first byte."""
    import httpx2
    from huggingface_hub.utils import get_session, hf_raise_for_status

    if part.have:
        headers = {**headers, "Range": f"bytes={part.have}-"}
    with get_session().stream("GET", location, headers=headers, follow_redirects=True,
                              timeout=httpx2.Timeout(30.0, connect=10.0)) as r:
        if part.have and r.status_code == 416 and size is not None and part.have == size:
            return  # it was complete already
        hf_raise_for_status(r)
        partial_reply = r.status_code == 206 and r.headers.get("Content-Range", "").startswith(
            f"bytes {part.have}-") and r.headers.get("Content-Encoding", "identity") == "identity"
        if part.have and not partial_reply:  # the server sent the whole file (or another range)
            part.restart()
            report(0, new_file=False)
        with open(part.path, "r+b" if part.have else "wb") as out:
            out.seek(part.have)
            out.truncate()
            for chunk in r.iter_bytes():
                out.write(chunk)
                part.add(chunk)
                report(part.have)


def _fill(p: HubPlan, name: str, headers: dict, meta: tuple, part: _Partial, report) -> tuple:
    """Requests the rest of the file until ``part`` holds all of it; a broken connection is retried
    (RETRIES times since the partial last grew past its largest size so far, each time at a fresh
    address); a file that changed on the Hub meanwhile, a full disk or too many failures stop with the
    partial kept.  Returns the file's latest (url, location, etag, size)."""
    import errno
    import time

    import httpx2

    url, location, etag, size = meta
    tries = RETRIES
    best = part.have  # a server that ignores ranges restarts the file: only going further counts
    while size is None or part.have < size:
        try:
            _stream_once(location, _request_headers(url, location, headers), part, size, report)
            if size is None or part.have >= size:  # more than the Hub lists: the caller refuses it
                return url, location, etag, size
            raise httpx2.RemoteProtocolError("the server ended the file early")
        except (httpx2.TransportError, httpx2.StreamError) as e:
            if part.have > best:  # the file got further: the count of retries starts again
                best = part.have
                tries = RETRIES
            if tries <= 0:
                raise CheckpointError(
                    f"cannot download checkpoint {p.source!r}: the transfer of {name} from {endpoint()} "
                    f"failed ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                    f"{fmt_bytes(part.have)} are kept in {part.path}, run again to go on") from None
            tries -= 1
            time.sleep(RETRY_PAUSE_S)
            try:  # a fresh location: a CDN's signed address may have expired meanwhile
                url, location, etag2, size2 = _file_meta(p, name, headers)
            except Exception:
                continue  # the next request tells
            if (etag2, size2) != (etag, size):
                raise CheckpointError(f"cannot download checkpoint {p.source!r}: {name} changed on the Hub "
                                      "during the download; run again") from None
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise _disk_full(p, name, part.path) from None
            raise
    return url, location, etag, size


def _transfer(p: HubPlan, name: str, headers: dict, report, say=None) -> None:
    """Fetch one file into its partial (resuming it), check it, and move it into the cache."""
    from huggingface_hub.utils import WeakFileLock

    meta = _file_meta(p, name, headers)
    etag, size = meta[2], meta[3]
    root = repo_folder(p.repo_id)
    blob = root / "blobs" / etag
    blob.parent.mkdir(parents=True, exist_ok=True)
    lock = cache_dir() / ".locks" / root.name / f"{etag}.lock"  # the client's own lock for this blob
    lock.parent.mkdir(parents=True, exist_ok=True)
    with WeakFileLock(lock):
        if blob.exists():  # already there (another repository, the client, another run): kept as it is
            _link_into_snapshot(p, name, blob)
            return
        path = blob.with_name(etag + PARTIAL_SUFFIX)
        for _ in range(2):  # a resumed partial that fails its sha256 is downloaded once afresh
            part = _Partial.open(path, size, check=_SHA256.fullmatch(etag) is not None)
            resumed = part.have > 0
            report(part.have, new_file=True)
            part.hash_kept()
            meta = _fill(p, name, headers, meta, part, report)  # a second attempt starts at the latest address
            if size is not None and part.have != size:
                path.unlink(missing_ok=True)
                raise CheckpointError(f"cannot download checkpoint {p.source!r}: {name} came with {part.have} bytes, "
                                      f"the Hub lists {size}; run again")
            if part.matches(etag):
                break
            path.unlink()
            if not resumed:
                raise CheckpointError(f"cannot download checkpoint {p.source!r}: {name} does not match its sha256 "
                                      f"{etag[:12]}... after a fresh download; run again")
            msg = (f"the partial download of {name} ({p.source}) does not match its sha256 {etag[:12]}...: "
                   "discarded it, downloading it afresh")
            say(msg) if say is not None else warn(msg)
        try:
            os.chmod(path, 0o644 & ~current_umask())
        except OSError:
            pass
        os.replace(path, blob)
        _link_into_snapshot(p, name, blob)


# --- what checkpoints.py calls --------------------------------------------------------------------

def local_snapshot(source: str) -> Path | None:
    """The cached snapshot folder of ``source`` (by commit, or by the branch or tag the cache
    remembers), with its config; None when it is not in the local cache."""
    repo_id, rev = split_ref(source)
    root = repo_folder(repo_id)
    rev = rev or "main"
    commit = rev if _SHA.fullmatch(rev) else None
    if commit is None:
        try:
            commit = (root / "refs" / rev).read_text().strip()
        except OSError:
            return None
    snap = root / "snapshots" / commit
    return snap if (snap / CONFIG).is_file() else None


def has_weights(folder: Path) -> bool:
    return any((folder / n).is_file() for n in ("model.safetensors", "model.safetensors.index.json",
                                                "pytorch_model.bin", "pytorch_model.bin.index.json"))


def resolve(source: str, need: str = "all", progress=None, bar=None) -> Path:
    """The local folder holding ``source`` (a hub id, ``NAME@REVISION``): ``need`` "config" for its
    config alone, "all" for everything a checkpoint needs.  From the cache only unless downloads
    are allowed; then the Hub's file list decides, and what is missing is fetched."""
    if not downloads_allowed():
        snap = local_snapshot(source)
        if snap is None or (need == "all" and not has_weights(snap)):
            what = "not in the local Hugging Face cache" if snap is None else \
                "only partly in the local Hugging Face cache (no weights)"
            raise CheckpointError(f"cannot load checkpoint {source!r}: no such local folder, and {what} (download "
                                  f"it first, pass --allow-downloads, or set {ALLOW_DOWNLOADS}=1 to let permerge "
                                  "fetch it)")
        return snap
    p = plan(source)
    return fetch(p, names=[CONFIG] if need == "config" else None, progress=progress, bar=bar)


def weights_bytes(source: str) -> int:
    """The bytes of a hub checkpoint's weights: from the Hub's file list when downloads are
    allowed, else from the cached snapshot (0 when neither knows)."""
    if downloads_allowed():
        return sum(f.size or 0 for f in plan(source).files if f.name.endswith((".bin", ".safetensors")))
    snap = local_snapshot(source)
    if snap is None:
        return 0
    return sum(f.stat().st_size for f in snap.iterdir() if f.is_file() and f.suffix in (".bin", ".safetensors"))


def prefetch(source: str, say=None, bar=None) -> Path | None:
    """Before a run: say which files of a hub checkpoint will come, their size and whether they
    are cached, check the free disk, then fetch what is missing with a progress bar.  None (and
    nothing said) when downloads are not allowed: the cache alone serves, or the load says why not."""
    if not downloads_allowed():
        return None
    p = plan(source)
    if say is not None:
        for line in p.lines():
            say(line)
    check_disk(p)
    return fetch(p, bar=bar, say=say)


def fetch_for_run(sources, progress=None) -> None:
    """Before a job loads its checkpoints: fetch the hub ones that are missing (downloads allowed),
    reporting ``progress("downloading NAME", done_bytes, total_bytes, file=..., speed=bytes/s)``;
    a progress callback that raises (Cancel) stops the transfer and leaves the cache usable."""
    import time

    if not downloads_allowed():
        return
    from .checkpoints import _is_local

    for source in dict.fromkeys(s for s in sources if s and not _is_local(s)):
        p = plan(source)
        if not p.missing:
            continue
        t0, received = time.monotonic(), [0]

        def cb(done, total, name, source=source, t0=t0, received=received):
            if progress is not None:
                progress(f"downloading {source}", done, total, file=name,
                         speed=received[0] / max(time.monotonic() - t0, 1e-3))
        cb(0, p.missing_bytes, p.missing[0].name)
        fetch(p, progress=cb, received=received)
