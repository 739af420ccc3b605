"""Cache values are read without building a Python AST.

CPython 3.11.7's AST constructor keeps its recursion counter in state shared by all threads
(CPython gh-106905): two threads building ASTs at once can fail with ``SystemError: AST constructor
recursion depth mismatch``.  Streamlit parses every page script with ``ast.parse``; the dashboard's
jobs read cached values on worker threads at the same time, and ``numpy.load`` parses each array
header with ``ast.literal_eval``.  So the cache reads headers itself (``permerge.npyfile``)."""
import ast
import builtins
import io

import numpy as np
import pytest

from permerge import cache, npyfile


def asts_built(fn) -> list[str]:
    """What ``fn()`` asked ``compile`` to turn into an AST (``ast.parse``, ``ast.literal_eval``)."""
    real, seen = builtins.compile, []

    def compile_(source, filename, mode, flags=0, *args, **kwargs):
        if flags & ast.PyCF_ONLY_AST:
            seen.append(str(source)[:60])
        return real(source, filename, mode, flags, *args, **kwargs)

    builtins.compile = compile_
    try:
        fn()
    finally:
        builtins.compile = real
    return seen


ARRAYS = [np.arange(12, dtype=np.float32).reshape(3, 4), np.asfortranarray(np.arange(6.0).reshape(2, 3)),
          np.array(7, dtype=np.int64), np.zeros((0, 5), dtype=np.float64), np.array([True, False]),
          np.frombuffer(b"abc", dtype=np.uint8), np.array([b"xy", b"z"]), np.array(["λ", "ab"]),
          np.arange(3, dtype=">i4"), np.ones((2, 2, 2), dtype=np.complex64), np.arange(4, dtype=np.float16)]


def test_a_cache_value_is_decoded_without_building_an_ast():
    import torch

    value = {"arrays": ARRAYS, "tensor": torch.arange(5.0), "tuple": (1, "two", None), "bytes": b"\x00\x01"}
    blob, out = cache.encode(value), {}
    assert asts_built(lambda: out.setdefault("back", cache.decode(blob))) == []
    back = out["back"]
    for a, b in zip(map(np.ascontiguousarray, ARRAYS), back["arrays"]):  # as encode stores them
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
        assert b.flags.writeable  # as numpy.load gives them
    assert torch.equal(back["tensor"], value["tensor"]) and back["tuple"] == (1, "two", None)
    assert back["bytes"] == b"\x00\x01"


@pytest.mark.parametrize("a", ARRAYS, ids=lambda a: f"{a.dtype.str}{a.shape}")
def test_headers_as_numpy_writes_them(a):
    buf = io.BytesIO()
    np.save(buf, a)
    buf.seek(0)
    got = npyfile.read_array(buf)
    assert got.dtype == a.dtype and got.shape == a.shape and np.array_equal(got, a)
    assert buf.read() == b""


def _npy(header: str, version=(1, 0), data=b"") -> io.BytesIO:
    body = header.encode("latin-1")
    size = (len(body)).to_bytes(2 if version == (1, 0) else 4, "little")
    return io.BytesIO(npyfile.MAGIC + bytes(version) + size + body + data)


@pytest.mark.parametrize("header, version, why", [
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n", (3, 0), "unknown .npy version"),
    ("{'descr': '|O', 'fortran_order': False, 'shape': (2,), }\n", (1, 0), "object array"),
    ("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }\n", (1, 0), "numpy.save"),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }\n", (1, 0), "numpy.save"),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (2 ,3), }\n", (1, 0), "malformed .npy shape"),
    ("{'descr': '<f4', 'fortran_order': 0, 'shape': (2,), }\n", (1, 0), "numpy.save"),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': __import__('os'), }\n", (2, 0), "numpy.save"),
    ("{'descr': '<q9', 'fortran_order': False, 'shape': (2,), }\n", (1, 0), "unknown .npy dtype"),
])
def test_other_headers_are_refused(header, version, why):
    with pytest.raises(ValueError, match=why):
        npyfile.read_array(_npy(header, version))


def test_short_data_is_refused():
    with pytest.raises(ValueError, match="truncated"):
        npyfile.read_array(_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }\n", data=b"\0" * 8))


def test_pages_parse_while_jobs_read_the_cache():
    """The failure itself: a page script parsed on one thread (as Streamlit does) while another reads
    cached values, with Python code running inside garbage collections (as finalizers do).  Before
    the cache read its own headers this raised the SystemError some ten times a second here."""
    import gc
    import threading
    import time
    from pathlib import Path

    blob = cache.encode({"a": [np.ones((4, 4), np.float32) for _ in range(20)]})
    page = (Path(__file__).resolve().parents[1] / "pages" / "run.py").read_text()
    errors, stop = [], time.time() + 2.0

    def collecting(phase, info):
        sum(range(500))

    def parse():
        while time.time() < stop:
            try:
                ast.parse(page)
            except SystemError as e:
                errors.append(str(e))

    def read():
        while time.time() < stop:
            cache.decode(blob)

    gc.callbacks.append(collecting)
    try:
        threads = [threading.Thread(target=parse), threading.Thread(target=read)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        gc.callbacks.remove(collecting)
    assert not errors, errors[:3]


def test_a_failed_jobs_trace_is_printed_without_building_an_ast(capsys):
    """Python 3.11's traceback module parses each frame's line to underline it; a job's failure is
    printed without that."""
    import time

    from permerge.jobs import JobManager

    def fail(progress):
        try:
            {}["missing"]
        except KeyError as e:
            raise RuntimeError("boom") from e

    out = {}

    def run():
        out["h"] = h = JobManager().submit("fails", fail)
        t0 = time.time()
        while h.active and time.time() - t0 < 30:
            time.sleep(0.02)

    assert asts_built(run) == []
    assert out["h"].state == "error" and out["h"].error == "RuntimeError: boom"
    err = capsys.readouterr().err
    assert 'raise RuntimeError("boom") from e' in err and "KeyError: 'missing'" in err and "^^^" not in err
