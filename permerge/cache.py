"""Results cached with diskcache under ``cache/``, keyed by content hashes.

Keys hash everything the value depends on (both checkpoints' contents, the data's tokens, the
options, a format version), so a changed checkpoint file is a new key and a stale value is never
served.  ``get_or_compute`` holds a cross-process lock per key: two dashboard sessions asking for
the same job run it once, and a failed computation stores nothing.

The per-key locks are operating-system file locks (``flock`` on ``locks/<key>.lock``): the kernel
releases them when their holder exits, however it exits (SIGKILL, a crash, a full disk), so a
lock never outlives its holder.  A run that waits for another one says so (pid, host, start).

A damaged cache (``cache.db`` truncated or overwritten, a truncated value file) is detected,
moved aside under ``corrupt-<time>/`` (or the one bad entry dropped) with a one-line warning, and
the value is recomputed.  A value that cannot be stored (disk full) leaves no partial file; the
run goes on without caching it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import sqlite3
import sys
import threading
import time
from pathlib import Path

from .errors import CacheError, warn

_DISKCACHE_FILE = re.compile(r"cache\.db(-wal|-shm|-journal)?")
_DISKCACHE_DIR = re.compile(r"[0-9a-f]{2}")

FORMAT_VERSION = 1
_MISSING = object()
try:
    import fcntl
except ImportError:  # not on Windows: no cross-process lock there (one process per cache)
    fcntl = None


def default_dir() -> Path:
    """$PERMERGE_CACHE; else cache/ of a source checkout; else ~/.cache/permerge (an installed package)."""
    from .locations import default_cache_dir

    return default_cache_dir()


def make_key(kind: str, **parts) -> str:
    blob = json.dumps({"v": FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return f"{kind}:{hashlib.sha256(blob.encode()).hexdigest()}"


def _note_stderr(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


def _is_corruption(e: BaseException) -> bool:
    """sqlite errors that mean a damaged database (not 'locked' or 'disk full')."""
    if not isinstance(e, sqlite3.DatabaseError):
        return False
    if isinstance(e, sqlite3.OperationalError):
        msg = str(e).lower()
        return "malformed" in msg or "not a database" in msg or "no such table" in msg
    return True


def _disk_class():
    import diskcache

    class SafeDisk(diskcache.Disk):
        """Removes a value file whose writing failed (disk full), so no orphan is left."""

        def _write(self, full_path, iterator, mode, encoding=None):
            try:
                return super()._write(full_path, iterator, mode, encoding)
            except BaseException as e:
                if not isinstance(e, FileExistsError):
                    with contextlib.suppress(OSError):
                        os.remove(full_path)
                raise

    return SafeDisk


class KeyLock:
    """An exclusive ``flock`` on ``<cache>/locks/<hash of key>.lock``, polled so that a waiting
    thread stays responsive; the holder's pid, host and start time are written into the file."""

    def __init__(self, directory: Path, key: str):
        self.path = directory / "locks" / f"{hashlib.sha256(key.encode()).hexdigest()[:40]}.lock"
        self.key = key
        self.fd: int | None = None

    def holder(self) -> str:
        try:
            pid, host, start = self.path.read_text().split()[:3]
            return f"pid {pid} on {host}, since {time.strftime('%H:%M:%S', time.localtime(float(start)))}"
        except (OSError, ValueError):
            return "another process"

    def try_acquire(self) -> bool:
        if fcntl is None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held by another process or thread
            os.close(fd)
            return False
        except OSError as e:  # a file system without flock: go on unlocked rather than wait forever
            os.close(fd)
            warn(f"cannot lock {self.path} ({e.strerror or e}); two runs on this cache may compute the same result")
            return True
        try:  # the previous holder may have unlinked the file we opened: lock the current one
            same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()} {time.time():.0f}\n".encode())
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # while still held: a waiter that opened it re-opens the new one
        os.close(self.fd)  # closing drops the flock
        self.fd = None


class ResultCache:
    def __init__(self, directory: str | Path | None = None, size_limit_gb: float = 8.0, note=_note_stderr):
        self.directory = Path(directory).expanduser() if directory else default_dir()
        self.size_limit = int(size_limit_gb * 2**30)
        self.note = note  # called with a one-line message while waiting for another process
        if self.directory.exists() and not self.directory.is_dir():
            raise CacheError(f"the cache folder {self.directory} is a file, not a folder")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            # per process and thread: several sessions of one dashboard open the cache at once
            probe = self.directory / f".probe-{os.getpid()}-{threading.get_ident()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise CacheError(f"cannot use the cache folder {self.directory}: {e.strerror or e}") from None
        self._dc = None
        self._open()

    # --- the underlying diskcache, re-created when found damaged ------------------------------
    def _open(self) -> None:
        import diskcache

        try:
            self._dc = diskcache.Cache(str(self.directory), size_limit=self.size_limit, disk=_disk_class())
        except sqlite3.DatabaseError as e:
            if not _is_corruption(e):
                raise CacheError(f"cannot open the cache in {self.directory}: {e}") from None
            self._move_aside(e)
            self._dc = diskcache.Cache(str(self.directory), size_limit=self.size_limit, disk=_disk_class())

    def _move_aside(self, err) -> None:
        """Move the database and the value files into corrupt-<time>/ and start afresh."""
        if self._dc is not None:
            with contextlib.suppress(Exception):
                self._dc.close()
            self._dc = None
        aside = self.directory / time.strftime("corrupt-%Y%m%d-%H%M%S")
        n = 1
        while aside.exists():
            aside = aside.with_name(aside.name.split(".")[0] + f".{n}")
            n += 1
        aside.mkdir()
        for p in self.directory.iterdir():
            # only what diskcache owns: its database files and its two-hex-digit value folders
            # (--cache-dir may name a folder that also holds the user's own files)
            if _DISKCACHE_FILE.fullmatch(p.name) and p.is_file() or _DISKCACHE_DIR.fullmatch(p.name) and p.is_dir():
                shutil.move(str(p), str(aside / p.name))
        warn(f"the cache in {self.directory} is damaged ({str(err).splitlines()[0]}); moved it to {aside} "
             "and starting an empty cache (results are recomputed)")

    def _guard(self, op, key=None):
        """Run ``op(dc)``; a damaged database is moved aside (then ``_MISSING``), a damaged
        entry dropped (then ``_MISSING``)."""
        try:
            return op(self._dc)
        except (KeyboardInterrupt, SystemExit, MemoryError):
            raise
        except Exception as e:
            if _is_corruption(e):
                self._move_aside(e)
                self._open()
                return _MISSING
            if key is None or isinstance(e, (OSError, sqlite3.Error)):
                raise
            # the value file is truncated or unreadable: drop that entry
            with contextlib.suppress(Exception):
                self._dc.delete(key)
            warn(f"cache entry {key[:20]}… in {self.directory} is unreadable ({type(e).__name__}); "
                 "dropped it, recomputing")
            return _MISSING

    def get(self, key: str, default=None):
        value = self._guard(lambda dc: dc.get(key, default=_MISSING), key)
        return default if value is _MISSING else value

    def __contains__(self, key: str) -> bool:
        return self._guard(lambda dc: key in dc) is True

    def set(self, key: str, value) -> bool:
        """Store; on a write failure (disk full) warn, remove what was half written, return False."""
        try:
            r = self._guard(lambda dc: dc.set(key, value))
            return r is True
        except (OSError, sqlite3.Error) as e:
            with contextlib.suppress(Exception):
                self._dc.delete(key)
            warn(f"could not store a result in the cache {self.directory} ({getattr(e, 'strerror', None) or e}); "
                 "continuing without caching it")
            return False

    def get_or_compute(self, key: str, compute, poll: float = 0.2):
        """Return the cached value, or compute it once across processes and store it."""
        value = self.get(key, _MISSING)
        if value is not _MISSING:
            return value
        lock = KeyLock(self.directory, key)
        noted = False
        while not lock.try_acquire():
            if not noted:
                self.note(f"waiting for {lock.holder()}, which computes the same {key.split(':')[0]} "
                          f"(cache {self.directory})")
                noted = True
            time.sleep(poll)
        try:
            value = self.get(key, _MISSING)
            if value is _MISSING:
                value = compute()
                self.set(key, value)
            return value
        finally:
            lock.release()

    def close(self) -> None:
        if self._dc is not None:
            self._dc.close()


class NoCache:
    """Same interface, stores nothing (used under torch.distributed and with --no-cache)."""

    def get(self, key, default=None):
        return default

    def __contains__(self, key):
        return False

    def set(self, key, value):
        pass

    def get_or_compute(self, key, compute, poll: float = 0.2):
        return compute()

    def close(self):
        pass
