"""What keeps a bert-base pair under 4 GB on the CPU, checked on small models: no data-fraction
snapshots unless asked, the statistics' footprint is the formula's, the assignments do not hold
every correlation matrix at once, interpolation does not clone the states, the float64 check holds
one model copy at a time, large statistics are released once aligned and large cache values are
streamed.  The measured figures of a MultiBERTs-size pair are bench/bench_real.py's."""
import gc
import os
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_model, random_batches
from permerge.arch import spec_for
from permerge.stats import DATA_FRACTIONS, collect_stats, stats_bytes

ROOT = Path(__file__).resolve().parents[1]
KW = dict(hidden_size=24, num_attention_heads=3, intermediate_size=40, num_hidden_layers=2)


def pair():
    a, b = make_model(1, **KW), make_model(2, **KW)
    return a, b, spec_for(a)


def test_no_snapshots_unless_asked():
    from permerge.cli import build_parser
    from permerge.pipeline import Job
    from permerge.study import data_amount_job

    a, b, spec = pair()
    res = collect_stats(a, b, spec, random_batches(4))
    assert res.snapshots == {} and list(res.snapshot_tokens) == [1.0]
    assert Job("a", "b", "d").fractions == (1.0,)
    args = build_parser().parse_args(["align", "a", "b", "--data", "d", "--out", "o"])
    assert tuple(args.snapshots) == (1.0,)
    # the amount-of-data study asks for its snapshots
    assert data_amount_job(Job("a", "b", "d"), 8192).fractions == DATA_FRACTIONS
    asked = collect_stats(a, b, spec, random_batches(4), fractions=(0.5, 1.0))
    assert list(asked.snapshots) == [0.5]


def test_statistics_footprint_is_the_formula():
    """Per capture point of width d: the d x d float64 cross block and six float64 vectors (two shifts,
    two sums, two sums of squares), contiguous (stored and read without a copy); each snapshot the
    same again."""
    a, b, spec = pair()
    groups = {g: grp.size for g, grp in spec.groups.items() if not grp.per_sentence}
    per_pass = sum(8 * (d * d + 6 * d) for d in groups.values())
    res = collect_stats(a, b, spec, random_batches(4))
    assert stats_bytes(res) == per_pass
    for s in res.points.values():
        assert s.cross.is_contiguous() and s.cross.dtype == torch.float64
    two = collect_stats(a, b, spec, random_batches(4), fractions=(0.25, 0.5, 1.0))
    assert stats_bytes(two) == 3 * per_pass


def test_final_statistics_equal_fold_then_read():
    """The final read straight from the staging matrix gives bit for bit what folding first gives."""
    from permerge.stats import _Accumulator

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 7, generator=g), torch.randn(50, 5, generator=g)
    ref, fin = _Accumulator(7, 5, "cpu", staged=True), _Accumulator(7, 5, "cpu", staged=True)
    for acc in (ref, fin):
        acc.add(x[:20], y[:20])
        acc.fold()  # rows already in the float64 sums
        acc.add(x[20:], y[20:])
    r, f = ref.result(copy=True), fin.result(copy=False)
    for t_r, t_f in zip(r._tensors(), f._tensors()):
        assert torch.equal(t_r, t_f)
    assert fin.stage is None and fin.big is None  # released as read


def test_assignments_do_not_hold_every_correlation_matrix(monkeypatch):
    import permerge.align as A
    from permerge.align import AlignOptions, compute_alignment

    a, b, spec = pair()
    points = collect_stats(a, b, spec, random_batches(3)).points
    ref = compute_alignment(spec, points, AlignOptions(residual="all"), workers=1)
    alive, most = set(), [0]
    real = A.correlation

    def tracked(*x, **k):
        C = real(*x, **k)
        alive.add(id(C))
        weakref.finalize(C, alive.discard, id(C))
        most[0] = max(most[0], len(alive))
        return C

    monkeypatch.setattr(A, "correlation", tracked)
    for options in (AlignOptions(), AlignOptions(residual="all")):
        alive.clear()
        most[0] = 0
        al = compute_alignment(spec, points, options, workers=1)
        gc.collect()
        residual = len(spec.residual_points)
        # every residual point's matrix may be kept for its summary; FF and attention ones are let go
        assert most[0] <= residual + 2, (most[0], len(spec.groups))
    for g, r in ref.groups.items():  # the same result as before
        assert np.array_equal(r.perm, al.groups[g].perm)
        assert r.corr_before == al.groups[g].corr_before and r.corr_after == al.groups[g].corr_after


def test_interpolation_writes_into_one_model_without_cloned_states():
    from permerge.pipeline import work_model

    a, b, _ = pair()
    work, state_a, state_b = work_model(a, b, "cpu")
    for k, t in a.state_dict().items():
        assert state_a[k].data_ptr() == t.data_ptr()
    for k, t in b.state_dict().items():
        assert state_b[k].data_ptr() == t.data_ptr()
    assert all(p.data_ptr() != a.state_dict()[k].data_ptr() for k, p in work.state_dict().items())


def test_float64_check_holds_one_copy_at_a_time(monkeypatch):
    import permerge.permute as PM

    a, b, spec = pair()
    alive, most = set(), [0]
    real = PM._cpu_float64_copy

    def tracked(model):
        m = real(model)
        alive.add(id(m))
        weakref.finalize(m, alive.discard, id(m))
        most[0] = max(most[0], len(alive))
        return m

    monkeypatch.setattr(PM, "_cpu_float64_copy", tracked)
    batch = {k: v[:2] for k, v in spec.model_inputs(random_batches(1)[0]).items()}
    out = PM.equivalence(b, b, batch, spec)
    assert out["equivalent"] and most[0] == 1


def test_large_statistics_are_released_once_aligned(tiny_mlm_pair, tmp_path, monkeypatch):
    import permerge.pipeline as P
    from permerge.align import AlignOptions
    from permerge.cache import ResultCache

    a, b, text = tiny_mlm_pair
    calls = []
    real = P.collect_stats
    monkeypatch.setattr(P, "collect_stats", lambda *x, **k: calls.append(1) or real(*x, **k))
    pipe = P.Pipeline(P.Job(str(a), str(b), str(text), tokens=2048, eval_blocks=2, device="cpu"),
                      cache=ResultCache(tmp_path / "cache"))
    first = pipe.stats()
    pipe.alignment(AlignOptions())
    assert not pipe.release_stats()  # small statistics stay in memory
    assert pipe._stats is first
    assert pipe.release_stats(keep_bytes=0)
    assert pipe._stats is None
    info = pipe.stats_info()  # told without the matrices
    assert pipe._stats is None and info["tokens"] == first.tokens
    pipe.curve(AlignOptions(), 3)  # the curve needs the permutations only
    assert pipe._stats is None
    again = pipe.stats()  # read back from the cache, not computed again
    assert len(calls) == 1
    for g, s in first.points.items():
        assert torch.equal(again.points[g].cross, s.cross)


def test_released_statistics_are_collected_then_given_back(tiny_mlm_pair, tmp_path, monkeypatch):
    """On a MultiBERTs-size pair 0.8 GB of what the statistics pass left stayed resident after
    release_stats until a garbage collection (reference cycles; the dashboard runs no collection
    after its script runs): release_stats collects, then gives the memory back to the system."""
    import permerge.pipeline as P
    from permerge.align import AlignOptions
    from permerge.cache import ResultCache

    a, b, text = tiny_mlm_pair
    pipe = P.Pipeline(P.Job(str(a), str(b), str(text), tokens=2048, eval_blocks=2, device="cpu"),
                      cache=ResultCache(tmp_path / "cache"))
    pipe.alignment(AlignOptions())
    held = [weakref.ref(s.cross) for s in pipe.stats().points.values()]
    calls = []
    monkeypatch.setattr(P.gc, "collect", lambda *x: calls.append("collect") or 0)
    monkeypatch.setattr(P, "give_back", lambda: calls.append("give back"))
    assert pipe.release_stats(keep_bytes=0)
    assert calls == ["collect", "give back"]
    assert all(w() is None for w in held)


@pytest.mark.parametrize("stream", [False, True])
def test_large_cache_values_are_streamed_and_read_back(tmp_path, monkeypatch, stream):
    import permerge.cache as C

    if stream:
        monkeypatch.setattr(C, "STREAM_BYTES", 0)
    called = []
    real = C._savez
    monkeypatch.setattr(C, "_savez", lambda fh, arrays: called.append(type(fh).__name__) or real(fh, arrays))
    cache = C.ResultCache(tmp_path / "cache")
    a, b, spec = pair()
    value = collect_stats(a, b, spec, random_batches(2)).to_numpy()
    key = C.make_key("stats", x=1)
    assert cache.set(key, value)
    assert (called[0] != "BytesIO") == stream  # an unnamed file beside the cache, not bytes in memory
    back = cache.get(key)
    for g, s in value["points"].items():
        for k, v in s.items():
            assert np.array_equal(np.asarray(back["points"][g][k]), np.asarray(v))


# A child process that frees 8 MiB blocks after a freed 16 MiB one (which moves glibc's adaptive mmap
# threshold up to 16 MiB, so they come from the heap) while the last block stays alive, then calls
# give_back, and prints how much of its resident memory it then still holds.
_FREED_BLOCKS = r"""
from permerge.memory import give_back
import torch

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

big = torch.ones(4 << 20)  # 16 MiB
del big
base = rss()
blocks = [torch.ones(2 << 20) for _ in range(40)]  # 40 x 8 MiB = 320 MiB
held = rss() - base
last = blocks[-1]
del blocks
print("freed", (rss() - base) / held)
print("gave", give_back())
print("kept", (rss() - base) / held)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc: Linux only")
@pytest.mark.parametrize("setting", ["default", "off"])
def test_freed_large_tensors_go_back_to_the_system(setting):
    """glibc keeps freed 8 MiB tensors in its heap (the reason for permerge/memory.py); give_back
    returns them to the system, unless PERMERGE_TRIM=0."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PERMERGE_TRIM", None)
    if setting == "off":
        env["PERMERGE_TRIM"] = "0"
    out = subprocess.run([sys.executable, "-c", _FREED_BLOCKS], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = dict(line.split() for line in out.stdout.splitlines())
    assert float(got["freed"]) > 0.5, got  # freed, but still held by the heap
    if setting == "default":
        assert got["gave"] == "True" and float(got["kept"]) < 0.1, got  # 39 of the 40 blocks went back
    else:
        assert got["gave"] == "False" and float(got["kept"]) > 0.5, got


def test_the_pipeline_gives_memory_back_after_its_stages(monkeypatch, tiny_mlm_pair):
    """After the statistics pass, when the statistics are released, after each curve and after
    the B' check."""
    from permerge import pipeline
    from permerge.align import AlignOptions

    calls = []
    monkeypatch.setattr(pipeline, "give_back", lambda: calls.append(1))
    a, b, text = tiny_mlm_pair
    pipe = pipeline.Pipeline(pipeline.Job(str(a), str(b), data=str(text), eval_data=str(text), tokens=512,
                                          eval_blocks=2))
    pipe.stats()
    assert len(calls) == 1
    pipe.alignment(AlignOptions())
    assert pipe.release_stats(keep_bytes=0) and len(calls) == 2
    pipe.curve(AlignOptions(), 3)
    assert len(calls) == 3
    pipe.function_check(AlignOptions())
    assert len(calls) == 4
