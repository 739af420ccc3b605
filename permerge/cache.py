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

A cache folder may be shared or writable by others, so nothing read from it can run code: values
are stored as bytes in a format that only holds data (``codec``: a NumPy ``.npz`` archive of plain
arrays, read with ``allow_pickle=False``, and its structure as JSON, naming only the result
classes listed in ``_CLASSES``), and the cache never unpickles (``SafeDisk.fetch``: a pickled
entry, such as one from an older permerge, is handed over as raw bytes and fails to decode).  A
value that does not decode, or does not fit its key's kind (``_SCHEMAS``), is damaged: its bytes
are moved into ``damaged/``, the entry dropped, and the value recomputed.
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

FORMAT_VERSION = 2  # 2: values in the codec below, never pickles
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


# --- values: data only, never code ------------------------------------------------------------

# Result classes a cached value may hold, rebuilt from their fields (dataclasses of permerge).
_CLASSES = {"AlignOptions": "permerge.align", "GroupResult": "permerge.align", "Alignment": "permerge.align",
            "CurveResult": "permerge.results", "WeightMatchTrace": "permerge.weight_match"}
_NPZ_MAGIC = b"PK\x03\x04"
MAX_DEPTH = 64  # nesting of a value's structure (the deepest real value nests 6 levels)
MAX_META_BYTES = 64 << 20  # its structure as JSON
MAX_ARRAYS = 100_000


class ValueFormatError(ValueError):
    """Bytes from the cache that are not a value of the expected form."""


# A value whose arrays hold more than this many bytes is written to the cache through a temporary
# file (streamed, 16 MiB at a time) instead of through bytes in memory: bert-base statistics are
# 1.08 GB, which an in-memory archive and its bytes would hold twice more while being stored.
STREAM_BYTES = 64 << 20


def encode(value) -> bytes:
    """A value (None, bool, int, float, str, bytes, lists, tuples, dicts, NumPy arrays, CPU
    tensors, the classes in ``_CLASSES``) as an ``.npz`` archive: arrays ``a0``, ``a1``, ... and
    the structure as JSON in ``meta``."""
    import io

    arrays = _encoded(value)
    buf = io.BytesIO()
    _savez(buf, arrays)
    return buf.getvalue()


def _savez(fh, arrays: dict) -> None:
    import numpy as np

    np.savez(fh, **arrays)


def _encoded(value) -> dict:
    """The arrays of ``encode``'s archive, ``meta`` included (views of the value's arrays where
    they are contiguous: nothing is copied)."""
    import dataclasses

    import numpy as np

    arrays: dict = {}

    def put(a, tag):
        name = f"a{len(arrays)}"
        if a.dtype.hasobject:
            raise TypeError("object arrays cannot be cached")
        arrays[name] = a
        return {tag: name}

    def enc(x):
        if x is None or isinstance(x, (bool, str)):
            return x
        if isinstance(x, (int, float)):
            return x if type(x) in (int, float) else (int(x) if isinstance(x, int) else float(x))
        if isinstance(x, np.generic):
            return enc(x.item())
        if isinstance(x, np.ndarray):
            return put(np.ascontiguousarray(x), "__array__")
        if type(x).__name__ == "Tensor" and type(x).__module__.startswith("torch"):
            return put(x.detach().cpu().contiguous().numpy(), "__tensor__")
        if isinstance(x, (bytes, bytearray)):
            return put(np.frombuffer(bytes(x), dtype=np.uint8), "__bytes__")
        if isinstance(x, tuple):
            return {"__tuple__": [enc(v) for v in x]}
        if isinstance(x, list):
            return [enc(v) for v in x]
        if isinstance(x, dict):
            return {"__dict__": [[enc(k), enc(v)] for k, v in x.items()]}
        name = type(x).__name__
        if dataclasses.is_dataclass(x) and _CLASSES.get(name) == type(x).__module__:
            return {"__class__": name, "fields": {f.name: enc(getattr(x, f.name)) for f in dataclasses.fields(x)}}
        raise TypeError(f"a {type(x).__name__} cannot be cached")

    meta = json.dumps(enc(value), allow_nan=True).encode()
    arrays["meta"] = np.frombuffer(meta, dtype=np.uint8)
    return arrays


def decode(blob) -> object:
    """The value ``encode`` stored, or ValueFormatError; never runs code from the bytes."""
    import importlib
    import io
    import zipfile

    from . import npyfile

    if not isinstance(blob, (bytes, bytearray, memoryview)) or bytes(blob[:4]) != _NPZ_MAGIC:
        raise ValueFormatError("not a permerge cache value")
    raw = bytes(blob)
    try:
        _check_members(raw)
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:  # npyfile: no ast.parse on a job's thread
            arrays = {}
            for info in zf.infolist():
                with zf.open(info) as fh:
                    arrays[info.filename.removesuffix(".npy")] = npyfile.read_array(fh)
        if "meta" not in arrays:
            raise ValueFormatError("no structure in the value")
        tree = json.loads(bytes(arrays.pop("meta")).decode())
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError, RecursionError) as e:
        if isinstance(e, ValueFormatError):
            raise
        raise ValueFormatError(f"unreadable value ({type(e).__name__})") from None

    def dec(x, depth=0):
        if depth > MAX_DEPTH:
            raise ValueFormatError(f"structure nested more than {MAX_DEPTH} deep")
        if isinstance(x, list):
            return [dec(v, depth + 1) for v in x]
        if not isinstance(x, dict):
            return x
        if len(x) == 1:
            (tag, v), = x.items()
            if tag in ("__array__", "__tensor__", "__bytes__"):
                if not isinstance(v, str) or v not in arrays:
                    raise ValueFormatError(f"missing array {v!r}")
                a = arrays[v]
                if tag == "__bytes__":
                    return a.tobytes()
                if tag == "__tensor__":
                    import torch
                    return torch.from_numpy(a.copy())
                return a
            if tag == "__tuple__" and isinstance(v, list):
                return tuple(dec(i, depth + 1) for i in v)
            if tag == "__dict__" and isinstance(v, list):
                if not all(isinstance(kv, list) and len(kv) == 2 for kv in v):
                    raise ValueFormatError("malformed mapping")
                out = {}
                for k, val in v:
                    k = dec(k, depth + 1)
                    if isinstance(k, (list, dict)):
                        raise ValueFormatError("malformed mapping key")
                    out[k] = dec(val, depth + 1)
                return out
        if set(x) == {"__class__", "fields"} and x["__class__"] in _CLASSES and isinstance(x["fields"], dict):
            cls = getattr(importlib.import_module(_CLASSES[x["__class__"]]), x["__class__"])
            try:
                return cls(**{str(k): dec(v, depth + 1) for k, v in x["fields"].items()})
            except (TypeError, ValueError) as e:
                raise ValueFormatError(f"malformed {x['__class__']}: {e}") from None
        raise ValueFormatError("unknown element in a cached value")

    return dec(tree)


def _check_members(raw: bytes) -> None:
    """Before anything is decompressed or allocated: every member of the archive is stored (not
    compressed: ``encode`` never compresses), a NumPy array of a plain numeric, boolean or byte dtype
    whose declared shape fits the bytes it has, at most ``MAX_ARRAYS`` of them and a structure of
    at most ``MAX_META_BYTES``.  A value that would inflate is refused from its headers."""
    import io
    import math
    import zipfile

    from . import npyfile

    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        infos = zf.infolist()
        if len(infos) > MAX_ARRAYS:
            raise ValueFormatError(f"more than {MAX_ARRAYS} arrays")
        names = set()
        for info in infos:
            if info.filename in names:
                raise ValueFormatError(f"member {info.filename!r} twice")
            names.add(info.filename)
            if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size \
                    or info.file_size > len(raw):
                raise ValueFormatError(f"member {info.filename!r} is compressed or larger than the value")
            if info.filename == "meta.npy" and info.file_size > MAX_META_BYTES:
                raise ValueFormatError(f"structure of {info.file_size} bytes, over {MAX_META_BYTES}")
            if not info.filename.endswith(".npy"):
                raise ValueFormatError(f"member {info.filename!r} is not a .npy array")
            with zf.open(info) as fh:
                try:
                    shape, _, dtype = npyfile.read_header(fh)
                except ValueError as e:
                    raise ValueFormatError(f"member {info.filename!r}: {e}") from None
                if dtype.hasobject or dtype.kind not in "biufcSU":
                    raise ValueFormatError(f"member {info.filename!r}: dtype {dtype} is not plain data")
                if any(n < 0 for n in shape) or math.prod(shape) * dtype.itemsize > info.file_size:
                    raise ValueFormatError(f"member {info.filename!r}: declared shape {shape} of {dtype} does not "
                                           f"fit its {info.file_size} bytes")


def _is(x, *types) -> None:
    if not isinstance(x, types):
        raise ValueFormatError(f"expected {' or '.join(t.__name__ for t in types)}, found {type(x).__name__}")


def _number_array(a) -> None:
    import numpy as np

    _is(a, np.ndarray)
    if a.dtype.kind not in "fiu":
        raise ValueFormatError(f"expected a numeric array, found {a.dtype}")


def _check_pair_stats(d) -> None:
    _is(d, dict)
    _is(d.get("n"), int, float)
    for k in ("shift_a", "shift_b", "sum_a", "sum_b", "sumsq_a", "sumsq_b"):
        _number_array(d.get(k))
        if d[k].ndim != 1:
            raise ValueFormatError(f"{k} is not a vector")
    _number_array(d.get("cross"))
    if d["cross"].shape != (len(d["sum_a"]), len(d["sum_b"])):
        raise ValueFormatError("cross block does not match the sums")


def _check_stats(v) -> None:
    _is(v, dict)
    _is(v.get("points"), dict)
    for p in v["points"].values():
        _check_pair_stats(p)
    _is(v.get("snapshots"), dict)
    for snap in v["snapshots"].values():
        _is(snap, dict)
        for p in snap.values():
            _check_pair_stats(p)
    _is(v.get("snapshot_tokens"), dict)
    _is(v.get("tokens"), int)
    _is(v.get("sentences"), int)


def _check_alignment(v) -> None:
    from .align import Alignment, AlignOptions, GroupResult

    _is(v, Alignment)
    _is(v.options, AlignOptions)
    _is(v.groups, dict)
    for g in v.groups.values():
        _is(g, GroupResult)
        _number_array(g.perm)
        if g.perm.ndim != 1 or sorted(g.perm.tolist()) != list(range(len(g.perm))):
            raise ValueFormatError(f"group {g.name}: not a permutation")
    if v.trace is not None:
        from .weight_match import WeightMatchTrace

        _is(v.trace, WeightMatchTrace)


def _check_row(r) -> None:
    _is(r, dict)
    _is(r.get("lambda"), int, float)
    _is(r.get("loss"), int, float)


def _check_curve(v) -> None:
    from .results import CurveResult

    _is(v, CurveResult)
    _is(v.rows, list)
    for r in v.rows:
        _check_row(r)
    for x in (v.barrier, v.barrier_lambda, v.loss_a, v.loss_b):
        _is(x, int, float)


def _check_point(v) -> None:
    import numpy as np

    _is(v, tuple, list)
    if len(v) != 2:
        raise ValueFormatError("a curve point is (row, losses)")
    _check_row(v[0])
    if v[1] is not None:
        _is(v[1], np.ndarray)


# What a value of each kind of key (the part before ':') must look like.
_SCHEMAS = {"stats": _check_stats, "alignment": _check_alignment, "curve": _check_curve, "point": _check_point}


def check_value(key: str, value) -> None:
    """ValueFormatError unless ``value`` has the form the kind of ``key`` stores."""
    check = _SCHEMAS.get(key.split(":", 1)[0])
    if check is not None:
        check(value)


def _disk_class():
    import diskcache

    class SafeDisk(diskcache.Disk):
        """Never unpickles (a pickled entry is returned as its raw bytes, which then fail to
        decode); removes a value file whose writing failed (disk full), so no orphan is left."""

        def get(self, key, raw):
            if not raw:
                raise ValueFormatError("a pickled key in the cache")
            return super().get(key, raw)

        def fetch(self, mode, filename, value, read):
            if mode == diskcache.core.MODE_PICKLE:
                if value is not None:
                    return bytes(value)
                with open(os.path.join(self._directory, filename), "rb") as fh:
                    return fh.read()
            return super().fetch(mode, filename, value, read)

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
        from .data import SYSTEM_ROOTS, in_system_folder

        if in_system_folder(self.directory):
            raise CacheError(f"the cache folder {self.directory} is in a system folder ({', '.join(SYSTEM_ROOTS)}); "
                             "give another --cache-dir")
        try:
            if self.directory.exists() and not self.directory.is_dir():
                raise CacheError(f"the cache folder {self.directory} is a file, not a folder")
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
        self._recreated()
        try:
            return op(self._dc)
        except (KeyboardInterrupt, SystemExit, MemoryError):
            raise
        except Exception as e:
            if self._recreated():  # the folder was removed under us: a new empty cache, not a damaged one
                return op(self._dc)
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

    def _recreated(self) -> bool:
        """If the cache folder or its database was removed while open (a user cleaning up under a
        running dashboard), open a fresh cache there and say so; False when it is still there."""
        if (self.directory / "cache.db").exists():
            return False
        with contextlib.suppress(Exception):
            self._dc.close()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CacheError(f"cannot use the cache folder {self.directory}: {e.strerror or e}") from None
        self._dc = None
        self._open()
        warn(f"the cache in {self.directory} was removed while in use; started an empty one there")
        return True

    def get(self, key: str, default=None):
        blob = self._guard(lambda dc: dc.get(key, default=_MISSING), key)
        if blob is _MISSING:
            return default
        try:
            value = decode(blob)
            check_value(key, value)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # any kind of decode error (RecursionError, MemoryError, ...): damaged
            self._set_aside(key, blob, e if isinstance(e, ValueFormatError) else f"{type(e).__name__}")
            return default
        return value

    def _set_aside(self, key: str, blob, err) -> None:
        """Move a value that does not decode or fit its key into damaged/ and drop the entry."""
        where = "dropped it"
        with contextlib.suppress(Exception):
            self._dc.delete(key)
        try:
            aside = self.directory / "damaged"
            aside.mkdir(exist_ok=True)
            f = aside / (f"{hashlib.sha256(key.encode()).hexdigest()[:40]}-{time.strftime('%Y%m%d-%H%M%S')}-"
                         f"{time.time_ns() % 10**9:09d}.val")  # one file per damaged value, even within a second
            f.write_bytes(bytes(blob) if isinstance(blob, (bytes, bytearray, memoryview)) else repr(blob).encode())
            where = f"moved it to {f}"
        except OSError:
            pass
        warn(f"cache entry {key[:20]}… in {self.directory} is damaged ({err}); {where}, recomputing")

    def __contains__(self, key: str) -> bool:
        return self._guard(lambda dc: key in dc) is True

    def set(self, key: str, value) -> bool:
        """Store; on a write failure (disk full) warn, remove what was half written, return False."""
        import io
        import tempfile

        arrays = _encoded(value)  # a TypeError for a value the cache cannot hold: a programming error
        try:
            if sum(a.nbytes for a in arrays.values()) <= STREAM_BYTES:
                buf = io.BytesIO()
                _savez(buf, arrays)
                blob = buf.getvalue()
                del buf, arrays
                r = self._guard(lambda dc: dc.set(key, blob))
            else:  # a large value: archive into an unnamed file beside the cache, then streamed in
                with tempfile.TemporaryFile(dir=self.directory) as fh:
                    _savez(fh, arrays)
                    del arrays
                    fh.seek(0)
                    r = self._guard(lambda dc: dc.set(key, fh, read=True))
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
