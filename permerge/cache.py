"""Results cached with diskcache under ``cache/``, keyed by content hashes.

Keys hash everything the value depends on (both checkpoints' contents, the data's tokens, the
options, a format version), so a changed checkpoint file is a new key and a stale value is never
served.  ``get_or_compute`` holds a cross-process lock per key: two dashboard sessions asking for
the same job run it once, and a failed computation stores nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

FORMAT_VERSION = 1
_MISSING = object()


def default_dir() -> Path:
    env = os.environ.get("PERMERGE_CACHE")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "cache"


def make_key(kind: str, **parts) -> str:
    blob = json.dumps({"v": FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return f"{kind}:{hashlib.sha256(blob.encode()).hexdigest()}"


class ResultCache:
    def __init__(self, directory: str | Path | None = None, size_limit_gb: float = 8.0):
        import diskcache

        self.directory = Path(directory) if directory else default_dir()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._dc = diskcache.Cache(str(self.directory), size_limit=int(size_limit_gb * 2**30))

    def get(self, key: str, default=None):
        return self._dc.get(key, default=default)

    def __contains__(self, key: str) -> bool:
        return key in self._dc

    def set(self, key: str, value) -> None:
        self._dc.set(key, value)

    def get_or_compute(self, key: str, compute, poll: float = 0.2, lock_expire: float = 6 * 3600):
        """Return the cached value, or compute it once across processes and store it."""
        value = self._dc.get(key, default=_MISSING)
        if value is not _MISSING:
            return value
        lock_key = f"lock:{key}"
        while not self._dc.add(lock_key, os.getpid(), expire=lock_expire):
            value = self._dc.get(key, default=_MISSING)  # someone else is computing it
            if value is not _MISSING:
                return value
            time.sleep(poll)
        try:
            value = self._dc.get(key, default=_MISSING)
            if value is _MISSING:
                value = compute()
                self._dc.set(key, value)
            return value
        finally:
            self._dc.delete(lock_key)

    def close(self) -> None:
        self._dc.close()


class NoCache:
    """Same interface, stores nothing (used under torch.distributed and with --no-cache)."""

    def get(self, key, default=None):
        return default

    def __contains__(self, key):
        return False

    def set(self, key, value):
        pass

    def get_or_compute(self, key, compute, **_):
        return compute()

    def close(self):
        pass
