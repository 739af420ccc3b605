"""The CLI contract end to end on checkpoints the tests create; bad inputs give documented errors."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, make_model, save_checkpoint, VOCAB, write_text
from permerge.cli import main


def run(*argv, cache=None):
    extra = ["--cache-dir", str(cache)] if cache else ["--no-cache"]
    return main([*map(str, argv), *extra, "--quiet"])


def test_align_writes_model_permutations_report(tiny_mlm_pair, tmp_path):
    from transformers import BertForMaskedLM

    a, b, text = tiny_mlm_pair
    out = tmp_path / "out"
    assert run("align", a, b, "--data", text, "--residual", "all", "--out", out) == 0
    assert sorted(p.name for p in out.iterdir()) == [".permerge-output", "model", "permutations.safetensors",
                                                     "report.json"]
    report = json.loads((out / "report.json").read_text())
    assert report["function_preserving"] is True
    assert report["max_rel_logit_error"] < 1e-5
    assert {"statistics_s", "assignment_s", "load_s"} <= set(report["timings"])
    for g, r in report["groups"].items():
        assert r["mean_corr_after"] >= r["mean_corr_before"] - 1e-9, g
    perms = load_file(str(out / "permutations.safetensors"))
    assert perms["ff.0"].dtype == torch.int64 and sorted(perms["ff.0"].tolist()) == list(range(40))
    assert torch.equal(perms["res.emb"], perms["res.1.ff"])  # one residual permutation
    # B' loads with plain transformers and computes B
    mb = BertForMaskedLM.from_pretrained(str(b)).eval()
    mp = BertForMaskedLM.from_pretrained(str(out / "model")).eval()
    ids = torch.randint(5, len(VOCAB), (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lb, lp = mb(input_ids=ids).logits, mp(input_ids=ids).logits
    assert ((lb - lp).abs().max() / lb.abs().max()).item() < 1e-5
    assert not torch.equal(mb.bert.encoder.layer[0].intermediate.dense.weight,
                           mp.bert.encoder.layer[0].intermediate.dense.weight)
    assert (out / "model" / "tokenizer_config.json").exists()


def test_interpolate_curve_and_barrier(tiny_mlm_pair, tmp_path):
    a, b, text = tiny_mlm_pair
    out = tmp_path / "curve"
    assert run("interpolate", a, b, "--data", text, "--lambdas", 11, "--out", out) == 0
    df = pd.read_csv(out / "curve.csv")
    assert list(df.columns) == ["lambda", "method", "loss", "pseudo_perplexity"]
    assert set(df["method"]) == {"vanilla", "FF + attn:head-perm"}
    assert len(df) == 22
    np.testing.assert_allclose(df["pseudo_perplexity"], np.exp(df["loss"]), rtol=1e-9)
    bar = json.loads((out / "barrier.json").read_text())
    v = bar["vanilla"]
    van = df[df.method == "vanilla"]
    assert v["barrier"] == pytest.approx(van["loss"].max() - 0.5 * (v["loss_a"] + v["loss_b"]))
    # the aligned curve's endpoints are A and B' = B (function-preserving)
    al = df[df.method != "vanilla"]
    assert al["loss"].iloc[0] == pytest.approx(van["loss"].iloc[0], rel=1e-5)
    assert al["loss"].iloc[-1] == pytest.approx(van["loss"].iloc[-1], rel=1e-9)


def test_barrier_of_a_model_with_itself_is_zero(tiny_mlm_pair, tmp_path):
    a, _, text = tiny_mlm_pair
    out = tmp_path / "self"
    assert run("interpolate", a, a, "--data", text, "--lambdas", 5, "--residual", "all", "--out", out) == 0
    bar = json.loads((out / "barrier.json").read_text())
    for method, r in bar.items():
        assert abs(r["barrier"]) < 1e-5, (method, r)
    # aligning a model with itself finds the identity
    out2 = tmp_path / "self-align"
    assert run("align", a, a, "--data", text, "--residual", "all", "--out", out2) == 0
    perms = load_file(str(out2 / "permutations.safetensors"))
    for g, p in perms.items():
        assert torch.equal(p, torch.arange(len(p))), g


def test_non_preserving_variant_is_reported(tiny_mlm_pair, tmp_path, capsys):
    a, b, text = tiny_mlm_pair
    out = tmp_path / "sep"
    assert run("align", a, b, "--data", text, "--attention", "ignore-heads", "--out", out) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["function_preserving"] is False
    assert report["max_abs_logit_error"] > 1e-3
    assert "NOT function-preserving" in capsys.readouterr().err


def _expect_error(capsys, argv, pattern, out):
    assert run(*argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert pattern in err[0], err[0]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.partial")]


def test_bad_inputs(tiny_mlm_pair, tmp_path, capsys):
    a, b, text = tiny_mlm_pair
    out = tmp_path / "never"
    _expect_error(capsys, ["align", tmp_path / "missing", b, "--data", text, "--out", out], "not found", out)
    _expect_error(capsys, ["align", a, b, "--data", tmp_path / "nope.txt", "--out", out], "data path not found", out)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    _expect_error(capsys, ["align", a, b, "--data", empty, "--out", out], "empty", out)
    # mismatched pair: the first differing field is named
    other = save_checkpoint(make_model(3, head="mlm", hidden_size=24, num_attention_heads=4, intermediate_size=40,
                                       num_hidden_layers=2, vocab_size=len(VOCAB)), tmp_path / "other")
    _expect_error(capsys, ["align", a, other, "--data", text, "--out", out], "num_attention_heads: 3 (A) vs 4 (B)", out)
    cls = save_checkpoint(make_model(3, head="cls", hidden_size=24, num_attention_heads=3, intermediate_size=40,
                                     num_hidden_layers=2, vocab_size=len(VOCAB), num_labels=2), tmp_path / "cls")
    _expect_error(capsys, ["align", a, cls, "--data", text, "--out", out], "architecture", out)
    # corrupt safetensors
    bad = tmp_path / "corrupt"
    shutil.copytree(b, bad)
    raw = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    _expect_error(capsys, ["align", a, bad, "--data", text, "--out", out], "corrupt weights file", out)
    (bad / "model.safetensors").write_bytes(b"\x00garbage")
    _expect_error(capsys, ["align", a, bad, "--data", text, "--out", out], "corrupt weights file", out)
    # not a checkpoint folder
    _expect_error(capsys, ["align", a, tmp_path, "--data", text, "--out", out], "no config.json", out)
    # bad option values
    _expect_error(capsys, ["align", a, b, "--data", text, "--tokens", "0", "--out", out], "--tokens", out)
    # an existing output folder is not overwritten; --overwrite replaces only what permerge wrote
    out.mkdir()
    (out / "keep").write_text("x")
    assert run("align", a, b, "--data", text, "--out", out) == 2
    assert "exists" in capsys.readouterr().err
    assert (out / "keep").exists()
    assert run("align", a, b, "--data", text, "--out", out, "--overwrite") == 2
    assert "permerge did not write it" in capsys.readouterr().err
    assert (out / "keep").exists()
    shutil.rmtree(out)
    assert run("align", a, b, "--data", text, "--out", out) == 0
    assert run("align", a, b, "--data", text, "--out", out, "--overwrite") == 0
    (out / "extra").write_text("x")  # a file the user added: refused, named, kept
    assert run("align", a, b, "--data", text, "--out", out, "--overwrite") == 2
    assert "(extra)" in capsys.readouterr().err
    assert (out / "extra").exists() and (out / "report.json").exists()
    assert not [p for p in out.parent.iterdir() if ".old-" in p.name or ".partial-" in p.name]


def test_failure_midway_leaves_nothing(tiny_mlm_pair, tmp_path, monkeypatch, capsys):
    """NaN features stop the run with a one-line reason; no output and no cache entry remain."""
    a, b, text = tiny_mlm_pair
    nan_b = tmp_path / "nan"
    m = make_model(12, head="mlm", hidden_size=24, num_attention_heads=3, intermediate_size=40,
                   num_hidden_layers=2, vocab_size=len(VOCAB))
    with torch.no_grad():
        m.bert.encoder.layer[1].output.dense.bias[:] = float("nan")
    save_checkpoint(m, nan_b)
    cache = tmp_path / "cache"
    out = tmp_path / "o"
    assert run("align", a, nan_b, "--data", text, "--out", out, cache=cache) == 2
    assert "non-finite" in capsys.readouterr().err
    assert not out.exists()
    import diskcache
    assert [k for k in diskcache.Cache(str(cache)) if not str(k).startswith("lock:")] == []
    assert [k for k in diskcache.Cache(str(cache))] == []  # no stale lock either


def test_cache_hits_and_content_keys(tiny_mlm_pair, tmp_path, monkeypatch):
    import permerge.pipeline as P

    a, b, text = tiny_mlm_pair
    cache = tmp_path / "cache"
    calls = []
    real = P.collect_stats
    monkeypatch.setattr(P, "collect_stats", lambda *x, **k: calls.append(1) or real(*x, **k))
    assert run("align", a, b, "--data", text, "--out", tmp_path / "1", cache=cache) == 0
    assert run("align", a, b, "--data", text, "--attention", "monotonic", "--out", tmp_path / "2", cache=cache) == 0
    assert len(calls) == 1  # a variant switch reuses the statistics
    # a changed checkpoint file is a new key
    b2 = tmp_path / "b2"
    shutil.copytree(b, b2)
    m = make_model(12, head="mlm", hidden_size=24, num_attention_heads=3, intermediate_size=40,
                   num_hidden_layers=2, vocab_size=len(VOCAB))
    with torch.no_grad():
        m.bert.encoder.layer[0].output.dense.weight[0, 0] += 1.0
    m.save_pretrained(str(b2))
    assert run("align", a, b2, "--data", text, "--out", tmp_path / "3", cache=cache) == 0
    assert len(calls) == 2
    # the same inputs give the same result
    r1 = json.loads((tmp_path / "1" / "report.json").read_text())["groups"]
    assert main(["align", str(a), str(b), "--data", str(text), "--out", str(tmp_path / "4"), "--no-cache", "--quiet"]) == 0
    r4 = json.loads((tmp_path / "4" / "report.json").read_text())["groups"]
    assert r1 == r4


def test_tokens_bound_and_fp16_weights(tmp_path):
    a16 = save_checkpoint(make_model(5, head="mlm", hidden_size=24, num_attention_heads=3, intermediate_size=40,
                                     num_hidden_layers=2, vocab_size=len(VOCAB)), tmp_path / "a16", fp16=True)
    b16 = save_checkpoint(make_model(6, head="mlm", hidden_size=24, num_attention_heads=3, intermediate_size=40,
                                     num_hidden_layers=2, vocab_size=len(VOCAB)), tmp_path / "b16", fp16=True)
    text = write_text(tmp_path / "t.txt")
    out = tmp_path / "o"
    assert run("align", a16, b16, "--data", text, "--tokens", 300, "--out", out) == 0
    report = json.loads((out / "report.json").read_text())
    assert 300 <= report["data"]["tokens"] < 300 + 64
    assert report["max_rel_logit_error"] < 1e-5
    from safetensors import safe_open
    with safe_open(str(out / "model" / "model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float32


@pytest.mark.slow
def test_python_dash_m_entry_point(tmp_path):
    r = subprocess.run([sys.executable, "-m", "permerge", "align", str(tmp_path / "x"), str(tmp_path / "y"),
                        "--data", "z", "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: checkpoint folder not found: {tmp_path / 'x'}"


def test_legacy_bin_checkpoint_and_unknown_hub_id(tiny_mlm_pair, tmp_path, capsys):
    """A pytorch_model.bin folder loads (transformers uses torch.load(weights_only=True)); a hub id
    that is neither cached nor reachable gives a one-line error."""
    from transformers import BertForMaskedLM

    a, b, text = tiny_mlm_pair
    legacy = tmp_path / "legacy"
    shutil.copytree(b, legacy)
    (legacy / "model.safetensors").unlink()
    m = BertForMaskedLM.from_pretrained(str(b))
    torch.save(m.state_dict(), legacy / "pytorch_model.bin")
    out = tmp_path / "o"
    assert run("align", a, legacy, "--data", text, "--out", out) == 0
    assert json.loads((out / "report.json").read_text())["max_rel_logit_error"] < 1e-5
    out2 = tmp_path / "o2"
    capsys.readouterr()
    assert run("align", a, "no-such-org/no-such-model", "--data", text, "--out", out2) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot load checkpoint 'no-such-org/no-such-model'" in err[0]
    assert not out2.exists()
