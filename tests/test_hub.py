"""Checkpoints from a Hugging Face Hub on the loopback (tests/hubserver.py), downloaded by the real
huggingface_hub client: the flag, the file list shown first, only the needed files, revisions
resolved to commits, resume after a broken transfer, Cancel, and one line for each failure."""
import json
import shutil

import pytest

from hubfixtures import GPT, MB, MB_NEEDED, layouts, loopback  # noqa: F401  (fixtures)
from permerge import hub as H
from permerge.cli import main

def _run(*argv, quiet=True):
    return main([*map(str, argv), "--no-cache", *(["--quiet"] if quiet else [])])


def _one_line(capsys, argv, pattern):
    code = _run(*argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (code, err)
    assert pattern in err[0], err[0]
    return err[0]


def test_align_multiberts_from_the_hub(loopback, layouts, tmp_path, capsys):
    text = layouts["text"]
    argv = ["align", MB.format(0), MB.format(1), "--data", text, "--tokens", 1024]
    # without the flag: the local cache only, and nothing is asked of the Hub
    msg = _one_line(capsys, [*argv, "--out", tmp_path / "o0"], "not in the local Hugging Face cache")
    assert "--allow-downloads" in msg and not loopback.log, loopback.log
    # with it: the file list first, then only the needed files, each once
    assert _run(*argv, "--out", tmp_path / "o1", "--allow-downloads", quiet=False) == 0
    err = capsys.readouterr().err
    sha0 = loopback.shas[MB.format(0)]
    # (the configs came first, to compare the pair before any weights are fetched)
    assert f"download: {MB.format(0)} (commit {sha0[:12]}): 5 files, 6.4 MB, 6.4 MB to download" in err, err
    assert "download:   config.json  618 B  cached" in err and "download:   pytorch_model.bin  6.2 MB  to download" in err
    assert "pytorch_model.bin: 100%" in err and "B/s" in err, err  # the bar: bytes, speed, time left
    got = loopback.downloads()
    assert sorted(got) == sorted((MB.format(s), f) for s in (0, 1) for f in MB_NEEDED), got
    report = json.loads((tmp_path / "o1" / "report.json").read_text())
    assert report["model_a"]["commit"] == sha0 and report["model_b"]["commit"] == loopback.shas[MB.format(1)]
    assert "BertForPreTraining" in report["model_a"]["published"]
    assert report["max_rel_logit_error"] < 1e-5, report["max_rel_logit_error"]
    # again: everything is cached, nothing is fetched; and without the flag it runs from the cache
    H._plans.clear()
    n = len(got)
    assert _run(*argv, "--out", tmp_path / "o2", "--allow-downloads", quiet=False) == 0
    assert "all cached" in capsys.readouterr().err and len(loopback.downloads()) == n
    loopback.log.clear()
    assert _run(*argv, "--out", tmp_path / "o3") == 0 and not loopback.log


def test_revision_names_a_branch_and_resolves_to_its_commit(loopback, tmp_path, monkeypatch):
    from permerge.checkpoints import load_checkpoint

    H.allow_downloads(True)
    try:
        early = load_checkpoint(f"{GPT}@checkpoint-100")
        late = load_checkpoint(GPT)
    finally:
        H._allowed.set(None)
    assert early.commit == loopback.shas["gpt@checkpoint-100"] and late.commit == loopback.shas["gpt@main"]
    assert early.content_hash != late.content_hash
    # only the config, tokenizer files and one weights format: no training or DeepSpeed states
    fetched = {f for r, f in loopback.downloads() if r == GPT}
    assert fetched == {"config.json", "pytorch_model.bin", "vocab.json", "merges.txt", "special_tokens_map.json",
                       "tokenizer_config.json"}, fetched
    # offline, the branch name is read from the cache's ref; a commit works as a revision too
    loopback.log.clear()
    assert load_checkpoint(f"{GPT}@checkpoint-100").content_hash == early.content_hash
    assert load_checkpoint(f"{GPT}@{loopback.shas['gpt@main']}").commit == late.commit
    assert not loopback.log
    # the branch moves on the Hub: within PLAN_TTL_S a process keeps the commit it resolved; after it
    # (a new run, or a dashboard later on) the name resolves to the new commit
    loopback.add(GPT, _copy(loopback, tmp_path), branch="checkpoint-100")
    H.allow_downloads(True)
    try:
        assert load_checkpoint(f"{GPT}@checkpoint-100").commit == early.commit
        monkeypatch.setattr(H, "PLAN_TTL_S", 0.0)
        moved = load_checkpoint(f"{GPT}@checkpoint-100")
    finally:
        H._allowed.set(None)
    assert moved.commit != early.commit and moved.commit == loopback.repos[GPT].refs["checkpoint-100"]


def _copy(loopback, tmp_path):
    """A new snapshot of the CRFM repo: main's files with another README."""
    repo = loopback.repos[GPT]
    folder = tmp_path / "moved"
    for name, data in repo.commits[repo.refs["main"]].items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    (folder / "README.md").write_text("moved\n")
    return folder


def test_one_line_for_each_hub_failure(loopback, layouts, tmp_path, capsys):
    base = ["--data", layouts["text"], "--out", tmp_path / "o", "--allow-downloads"]
    _one_line(capsys, ["align", "no-org/no-model", MB.format(1), *base], "no such repository on the Hub")
    _one_line(capsys, ["align", f"{MB.format(0)}@no-branch", MB.format(1), *base],
              "has no branch, tag or commit 'no-branch'")
    _one_line(capsys, ["align", "google/gated-model", MB.format(1), *base], "gated")
    _one_line(capsys, ["align", f"{MB.format(0)}@", MB.format(1), *base], "NAME@REVISION")
    tf_only = tmp_path / "tf-only"
    tf_only.mkdir()
    shutil.copy(layouts["mb0"] / "config.json", tf_only / "config.json")
    shutil.copy(layouts["mb0"] / "tf_model.h5", tf_only / "tf_model.h5")
    loopback.add("google/tf-only", tf_only)
    _one_line(capsys, ["align", "google/tf-only", MB.format(1), *base],
              "has no model.safetensors or pytorch_model.bin weights (only tf_model.h5, which permerge does not read)")
    assert not loopback.downloads()
    # a mistyped local path never reaches the Hub, whatever it looks like
    loopback.log.clear()
    for typo in ("./multiberts-seed_0", "/x/y/multiberts", "~/z/multiberts", "google/multiberts/seed_0"):
        _one_line(capsys, ["align", typo, MB.format(1), *base], "checkpoint folder not found")
    assert not any(p.startswith("/api/models/" + "google/multiberts/") for _, p, _ in loopback.log)
    assert all(MB.format(1) in p for _, p, _ in loopback.log), loopback.log
    # the Hub down: one line, after one quick connection attempt
    loopback.stop()
    _one_line(capsys, ["align", MB.format(0), MB.format(1), *base], "cannot be reached")


def test_full_disk_is_refused_before_any_transfer(loopback, layouts, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(H, "free_space", lambda path: 10 * 2**20)
    msg = _one_line(capsys, ["align", MB.format(0), MB.format(1), "--data", layouts["text"], "--out", tmp_path / "o",
                             "--allow-downloads"], "not enough free disk")
    assert "MB to download" in msg and "HF_HOME" in msg, msg
    assert not [f for _, f in loopback.downloads() if f != "config.json"], loopback.downloads()


def test_broken_transfer_resumes_with_a_range_request(loopback, layouts):
    repo = MB.format(0)
    loopback.drop_after[(repo, "pytorch_model.bin")] = 4 * 2**14
    H.allow_downloads(True)
    try:
        folder = H.resolve(repo)
    finally:
        H._allowed.set(None)
    ranges = [r for m, p, r in loopback.log if m == "GET" and p.endswith("/pytorch_model.bin")]
    assert ranges == [None, f"bytes={4 * 2**14}-"], ranges
    assert (folder / "pytorch_model.bin").read_bytes() == (layouts["mb0"] / "pytorch_model.bin").read_bytes()
    assert not (folder / "tf_model.h5").exists()


def test_cancel_leaves_the_cache_usable(loopback, layouts):
    from permerge.errors import Cancelled

    repo = MB.format(1)
    seen = []

    def progress(done, total, name):
        seen.append((done, total, name))
        if name == "pytorch_model.bin" and done > min(d for d, _, n in seen if n == name):  # some bytes came
            raise Cancelled("cancelled by the user")

    H.allow_downloads(True)
    try:
        p = H.plan(repo)
        with pytest.raises(Cancelled):
            H.fetch(p, progress=progress)
        blobs = H.repo_folder(repo) / "blobs"
        assert not list(blobs.glob("*.incomplete")), list(blobs.iterdir())
        done = {f.name for f in H._refresh_cached(p).files if f.cached}
        assert "config.json" in done and "pytorch_model.bin" not in done, done
        assert seen[-1][1] == p.missing_bytes + sum(f.size for f in p.files if f.name in done)
        loopback.log.clear()
        folder = H.fetch(p)  # goes on: only the file that was cut off is fetched again
    finally:
        H._allowed.set(None)
    assert [f for _, f in loopback.downloads()] == ["pytorch_model.bin"]
    kept = seen[-1][0] - min(d for d, _, n in seen if n == "pytorch_model.bin")
    assert loopback.log[-1][2] == f"bytes={kept}-", (loopback.log[-1], kept)  # what came before Cancel is kept
    assert (folder / "pytorch_model.bin").read_bytes() == (layouts["mb1"] / "pytorch_model.bin").read_bytes()


def test_hub_list_sizes_and_cached_state(loopback, capsys):
    assert main(["hub", "list", "multiberts"]) == 0
    out = capsys.readouterr().out
    assert "seeds 0-24" in out and "about 441 MB each (catalogue)" in out and "cached: none" in out, out
    assert "(29)" in out and not loopback.log
    assert main(["hub", "list", "multiberts", "--allow-downloads"]) == 0
    out = capsys.readouterr().out
    files = loopback.repos[MB.format(0)].commits[loopback.shas[MB.format(0)]]
    size = sum(len(files[f]) for f in MB_NEEDED)
    assert f"{H.fmt_bytes(size)} each (5 files of {MB.format(0)}, from the Hub's file list)" in out, out
    # a family the Hub does not have (here: the loopback): the listing goes on and says why
    assert main(["hub", "list", "polypythias", "--allow-downloads"]) == 0
    out = capsys.readouterr().out
    assert out.count("download size unknown (cannot download checkpoint 'EleutherAI/pythia-") == 7, out
    assert "@step143000': no such repository on the Hub" in out, out
    H.allow_downloads(True)
    try:
        H.resolve(MB.format(0))
    finally:
        H._allowed.set(None)
    assert main(["hub", "list", "multiberts"]) == 0
    assert "cached: 0\n" in capsys.readouterr().out


def test_hub_list_marks_families_without_a_table():
    from permerge.arch import SUPPORTED_MODEL_TYPES
    from permerge.catalogue import family

    fam = family("polypythias")
    assert fam.supported == ("gpt_neox" in SUPPORTED_MODEL_TYPES)
    assert ("needs the gpt_neox table" in fam.support_note()) == (not fam.supported)
    assert family("multiberts").hub_id("base", "3", "20k") == "google/multiberts-seed_3-step_20k"
    assert family("crfm-gpt2").hub_id("small", "49", "checkpoint-400") == \
        "stanford-crfm/battlestar-gpt2-small-x49@checkpoint-400"
    assert family("polypythias").hub_id("70m", "4", "step0") == "EleutherAI/pythia-70m-seed4@step0"
    with pytest.raises(Exception, match="no step"):
        family("multiberts").hub_id("base", "7", "20k")  # steps exist for seeds 0-4 only


def test_catalogue_names_as_published():
    """The names the publishers list: PolyPythias' 154 step branches (named ones, then every 1,000)
    and its data-seed / weight-seed runs; the ten CRFM runs, small and medium, with 609 branches each."""
    from permerge.catalogue import family

    pp = family("polypythias")
    steps = pp.steps("70m", "3")
    assert len(steps) == 154 and steps[:3] == ["step0", "step1", "step2"] and steps[10:12] == ["step512", "step1000"]
    assert steps[-1] == "step143000" and len(set(steps)) == 154
    assert pp.hub_id("160m-data-seed", "2", "step1000") == "EleutherAI/pythia-160m-data-seed2@step1000"
    assert pp.hub_id("160m-weight-seed", "3") == "EleutherAI/pythia-160m-weight-seed3"
    assert pp.seeds("160m-data-seed") == ["1", "2", "3"] and pp.seeds("410m") == [str(s) for s in range(1, 10)]
    crfm = family("crfm-gpt2")
    assert crfm.seeds("small") == crfm.seeds("medium") == ["21", "49", "81", "343", "777"]
    medium = crfm.steps("medium", "343")
    assert len(medium) == 609 and medium[0] == "checkpoint-0" and medium[-1] == "checkpoint-400000"
    assert "checkpoint-1950" in medium and "checkpoint-19900" in medium and "checkpoint-20500" not in medium
    assert crfm.hub_id("medium", "777", "checkpoint-300000") == "stanford-crfm/eowyn-gpt2-medium-x777@checkpoint-300000"



def test_cache_keys_follow_the_content_not_the_name(loopback, layouts):
    """A branch, another branch at a commit with the same files, and a local folder holding the same
    checkpoint give the same statistics key: keys hash the contents, never a name or branch."""
    from permerge.pipeline import Job, Pipeline

    loopback.add(MB.format(0), layouts["mb0"], branch="v1")  # same files, another commit
    text = str(layouts["text"])
    keys = {}
    H.allow_downloads(True)
    try:
        for name in (MB.format(0), f"{MB.format(0)}@v1", str(layouts["mb0"])):
            pipe = Pipeline(Job(name, MB.format(1), text, tokens=512, device="cpu"))
            keys[name] = (pipe.stats_key, pipe.pair[0].commit)
    finally:
        H._allowed.set(None)
    assert len({k for k, _ in keys.values()}) == 1, keys
    commits = [c for _, c in keys.values()]
    assert commits[0] != commits[1] and commits[2] is None, commits
