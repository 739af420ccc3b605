"""The zoo build split around a borrowed GPU machine: pack -> GPU step -> adopt -> CPU stages.

The chain runs with tiny sizes on the CPU, through the same entry points as the real run, with
diskcache, streamlit and plotly made unimportable for the GPU step (its machine lacks them).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from permerge.errors import PermergeError
from permerge.zoo import pack as P

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_zoo import TINY, _tiny_zoo  # noqa: E402

ABSENT = ("diskcache", "streamlit", "plotly")


def _blocking_path(tmp: Path) -> Path:
    """A folder of stand-ins that fail on import, for PYTHONPATH: the GPU machine's image."""
    d = tmp / "absent"
    for name in ABSENT:
        (d / name).mkdir(parents=True)
        (d / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed on the GPU machine')\n")
    return d


def _run(argv, env=None, timeout=600):
    return subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, env=env,
                          timeout=timeout)


def _cli(*argv):
    from permerge import cli

    return cli.main(list(argv))


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """pack (twice) -> GPU step on the CPU (2 seeds, as processes) -> adopt -> finetune, evaluate,
    acceptance, all into a temporary folder."""
    tmp = tmp_path_factory.mktemp("chain")
    build, out = _tiny_zoo(tmp)
    pack, pack2, ret = tmp / "pack", tmp / "pack2", tmp / "returned"
    for p in (pack, pack2):
        assert _cli("zoo", "build", "--stages", "pack", "--out", str(out), "--build-dir", str(build),
                    "--pack", str(p)) == 0
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(_blocking_path(tmp)), str(REPO)]), OMP_NUM_THREADS="1")
    gpu = _run(["-m", "permerge.zoo.gpu_step", "--pack", str(pack), "--out", str(ret), "--device", "cpu",
                "--seeds", "1,2", "--threads", "1", "--time-budget", "600", *TINY], env=env)
    rc = _cli("zoo", "build", "--device", "cpu", "--stages", "adopt,finetune,evaluate,acceptance", "--from", str(ret),
              "--pack", str(pack), "--finetune-seeds", "1,2", "--tasks", "style,supersense", "--threads", "1",
              "--out", str(out), "--build-dir", str(build), "--align-tokens", "1024", "--eval-blocks", "2",
              "--lambdas", "5")
    return {"pack": pack, "pack2": pack2, "gpu": gpu, "returned": ret, "rc": rc, "out": out, "build": build}


@pytest.mark.slow
def test_pack_is_deterministic_and_small(chain):
    pack, pack2 = chain["pack"], chain["pack2"]
    names = sorted(str(p.relative_to(pack)) for p in pack.rglob("*") if p.is_file())
    assert names == sorted(str(p.relative_to(pack2)) for p in pack2.rglob("*") if p.is_file())
    assert {"manifest.json", "train.u16.xz", "eval.txt", "tokenizer/tokenizer.json"} <= set(names)
    for n in names:
        assert (pack / n).read_bytes() == (pack2 / n).read_bytes(), n
    assert P.pack_bytes(pack) <= P.PACK_MAX_BYTES
    m = P.read_manifest(pack)
    stream = P.load_stream(pack, m)
    assert stream.dtype == np.uint16 and len(stream) == m["stream"]["tokens"] > 0
    assert (pack / "eval.txt").read_bytes() == (chain["out"] / "data" / "eval.txt").read_bytes()


@pytest.mark.slow
def test_gpu_step_writes_archives_within_the_return_limits(chain):
    gpu, ret = chain["gpu"], chain["returned"]
    assert gpu.returncode == 0, gpu.stdout[-3000:] + gpu.stderr[-3000:]
    files = sorted(p.name for p in ret.iterdir())
    assert files == ["gpu_step.log", "mlm-seed1.tar", "mlm-seed2.tar", "returned.json"]
    assert P.check_returned(ret) == []
    rec = json.loads((ret / "returned.json").read_text())
    assert rec["pack_sha256"] == P.read_manifest(chain["pack"])["sha256"] and not rec["failed"]
    for s in (1, 2):
        r = rec["archives"][f"mlm-seed{s}.tar"]
        assert r["sha256"] == P.sha256_file(ret / f"mlm-seed{s}.tar") and r["steps"] == 3
        assert f"eval MLM loss {r['eval_mlm_loss']:.4f}" in gpu.stdout  # printed per seed
    log = (ret / "gpu_step.log").read_text()
    assert "[seed 1]" in log and "[seed 2]" in log and "GPU STEP: OK" in log
    for name in ("diskcache", "streamlit", "plotly"):
        assert name not in gpu.stderr


@pytest.mark.slow
def test_adopted_chain_records_recipe_and_fails_acceptance(chain):
    out = chain["out"]
    assert chain["rc"] == 1  # the acceptance stage ran and (rightly) failed these 3-step models
    want = {"layers": 1, "hidden": 16, "heads": 2, "ffn": 24, "dropout": 0.05, "steps": 3, "batch": 4,
            "lr": 5e-4, "warmup": 1, "sampling": "blocks"}
    for s in (1, 2):
        meta = json.loads((out / "checkpoints" / f"mlm-seed{s}" / "permerge.json").read_text())
        assert meta["recipe"] == want and meta["built_by"] == "permerge.zoo.gpu_step"
        assert meta["pack_sha256"] == P.read_manifest(chain["pack"])["sha256"]
        assert "saved fp16" in meta["eval"]  # re-measured by the evaluate stage
        for task in ("style", "supersense"):
            c = json.loads((out / "checkpoints" / f"{task}-seed{s}" / "permerge.json").read_text())
            assert c["base"] == f"mlm-seed{s}" and c["base_recipe"] == want
    import torch
    from safetensors.torch import load_file

    a, b = (load_file(str(out / "checkpoints" / f"mlm-seed{s}" / "model.safetensors")) for s in (1, 2))
    assert not torch.equal(a["bert.embeddings.word_embeddings.weight"], b["bert.embeddings.word_embeddings.weight"])
    rep = json.loads((out / "acceptance.json").read_text())
    assert rep["passed"] is False and all(r["pairs"] == 1 for r in rep["barriers"])
    crit = {c["criterion"].split(" (")[0]: c for c in rep["criteria"]}
    assert not crit["every MLM's eval loss <= 3.5"]["passed"]
    assert "FAIL" in (out / "acceptance.md").read_text()


@pytest.mark.slow
def test_adopt_refuses_damaged_or_foreign_archives(chain, tmp_path):
    src = chain["returned"]
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    with open(bad / "mlm-seed2.tar", "r+b") as f:
        f.seek(2000)
        f.write(b"x")
    ck = tmp_path / "ck"
    with pytest.raises(PermergeError, match="mlm-seed2.tar does not match its checksum"):
        P.adopt(bad, ck)
    assert not ck.exists()  # nothing written, not even seed 1's
    with pytest.raises(PermergeError, match="trained from pack"):
        P.adopt(src, ck, pack_sha256="0" * 64)
    # an archive whose member escapes its folder, with a matching checksum
    evil = tmp_path / "evil"
    shutil.copytree(src, evil)
    with tarfile.open(evil / "mlm-seed1.tar", "w") as t:
        t.add(str(src / "returned.json"), arcname="../x.json")
    rec = json.loads((evil / "returned.json").read_text())
    rec["archives"]["mlm-seed1.tar"].update(bytes=(evil / "mlm-seed1.tar").stat().st_size,
                                            sha256=P.sha256_file(evil / "mlm-seed1.tar"))
    (evil / "returned.json").write_text(json.dumps(rec))
    with pytest.raises(PermergeError, match="unexpected member"):
        P.adopt(evil, ck)
    # an archive named so that its checkpoint folder would be the checkpoints folder itself
    dots = tmp_path / "dots"
    shutil.copytree(src, dots)
    (dots / "mlm-seed1.tar").rename(dots / "..tar")
    rec = json.loads((dots / "returned.json").read_text())
    rec["archives"]["..tar"] = rec["archives"].pop("mlm-seed1.tar")
    (dots / "returned.json").write_text(json.dumps(rec))
    ck.mkdir()
    (ck / "mine.txt").write_text("keep")
    with pytest.raises(PermergeError, match="bad archive name"):
        P.adopt(dots, ck)
    # a folder of the user's where a checkpoint would go is not replaced
    (ck / "mlm-seed1").mkdir()
    (ck / "mlm-seed1" / "notes.txt").write_text("keep")
    with pytest.raises(PermergeError, match="is not a checkpoint of the zoo"):
        P.adopt(src, ck)
    assert (ck / "mine.txt").read_text() == "keep" and (ck / "mlm-seed1" / "notes.txt").read_text() == "keep"
    assert sorted(p.name for p in ck.iterdir()) == ["mine.txt", "mlm-seed1"]
    assert _cli("zoo", "build", "--stages", "adopt", "--out", str(tmp_path / "z")) == 2  # no --from


def test_check_returned_limits(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    (d / "a.tar").write_bytes(b"x")
    (d / "gpu_step.log").write_text("ok\n")
    assert P.check_returned(d) == []
    with open(d / "big.tar", "wb") as f:  # sparse: 16 MiB + 1 byte
        f.truncate(P.RETURN_MAX_FILE_BYTES + 1)
    (d / "bad name!.txt").write_text("x")
    deep = d / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "f").write_text("x")
    for i in range(5):
        (d / f"f{i}").write_text("x")
    problems = " | ".join(P.check_returned(d))
    assert "big.tar: 16.00 MiB, over 16 MiB" in problems
    assert "bad name!.txt: name has characters" in problems
    assert "a/b/c/f: more than 2 folders down" in problems
    assert "10 files, over 8" in problems
    for i in range(4):
        with open(d / f"h{i}", "wb") as f:
            f.truncate(P.RETURN_MAX_FILE_BYTES)
    assert "MiB in all, over 64 MiB" in " | ".join(P.check_returned(d))


def test_pack_over_the_limit_is_refused(tmp_path, monkeypatch):
    from permerge import zoo

    tok = tmp_path / "tok"
    tok.mkdir()
    shutil.copy(Path(zoo.default_pair()[0]) / "tokenizer.json", tok / "tokenizer.json")
    ev = tmp_path / "eval.txt"
    ev.write_text("a b c\n")
    rng = np.random.default_rng(0)
    stream = rng.integers(5, 8192, 200_000).astype(np.uint16)  # random ids hardly compress
    monkeypatch.setattr(P, "PACK_MAX_BYTES", 300_000)
    with pytest.raises(PermergeError, match="over the 0 MiB limit"):
        P.write_pack(tmp_path / "pack", tok, stream, ev, log=lambda m: None)
    assert not (tmp_path / "pack").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["eval.txt", "tok"]
    monkeypatch.setattr(P, "PACK_MAX_BYTES", 16 * P.MiB)
    m = P.write_pack(tmp_path / "pack", tok, stream, ev, log=lambda m: None)
    assert m["total_bytes"] == P.pack_bytes(tmp_path / "pack") <= 16 * P.MiB
    np.testing.assert_array_equal(P.load_stream(tmp_path / "pack", P.read_manifest(tmp_path / "pack")), stream)
    (tmp_path / "pack" / "eval.txt").write_text("changed\n")
    with pytest.raises(PermergeError, match="eval.txt does not match its checksum"):
        P.read_manifest(tmp_path / "pack")
    # packing again replaces the pack, and only it; a folder that is not a pack is never replaced
    P.write_pack(tmp_path / "pack", tok, stream, ev, log=lambda m: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.txt", "pack", "tok"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(PermergeError, match="is not a zoo pack"):
        P.write_pack(tmp_path / "mine", tok, stream, ev, log=lambda m: None)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


@pytest.mark.parametrize("flags,msg", [
    (["--hidden", "1024", "--ffn", "4096"], "over the 16 MiB limit per returned file"),
    (["--seeds", "1,2,3,4,5,6,7"], "would return 9 files"),
    (["--time-budget", "0"], "--time-budget must be positive"),
    (["--heads", "3"], "not a multiple of --heads"),
    (["--pack", "."], "is not a zoo pack"),
])
def test_gpu_step_bad_input_is_one_line_before_training(tmp_path, flags, msg):
    from permerge import zoo
    from permerge.zoo import gpu_step

    tok = tmp_path / "tok"
    tok.mkdir()
    shutil.copy(Path(zoo.default_pair()[0]) / "tokenizer.json", tok / "tokenizer.json")
    ev = tmp_path / "eval.txt"
    ev.write_text("a b c\n")
    P.write_pack(tmp_path / "pack", tok, np.arange(5, 500, dtype=np.uint16), ev, log=lambda m: None)
    with pytest.raises(PermergeError, match=msg) as e:
        gpu_step.main(["--pack", str(tmp_path / "pack"), "--out", str(tmp_path / "o"), "--device", "cpu", *flags])
    assert "\n" not in str(e.value)
    assert not (tmp_path / "o").exists()
