"""The loopback Hub fixtures shared by the Hub tests: tiny checkpoints in the published layouts,
served by tests/hubserver.py with HF_ENDPOINT and HF_HOME pointed at it and at an empty folder."""
import pytest

from conftest import free_port, write_text
from hubserver import LoopbackHub
from permerge import hub as H
from published import write_crfm_gpt2, write_multiberts

MB = "google/multiberts-seed_{}"
GPT = "stanford-crfm/alias-gpt2-small-x21"
MB_NEEDED = {"config.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "pytorch_model.bin"}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("published")
    return {"mb0": write_multiberts(root / "mb0", 0), "mb1": write_multiberts(root / "mb1", 1),
            "gpt-early": write_crfm_gpt2(root / "gpt-early", 5), "gpt-late": write_crfm_gpt2(root / "gpt-late", 6),
            "text": write_text(root / "text.txt", n_words=3000)}


@pytest.fixture
def loopback(layouts, tmp_path, monkeypatch):
    """A loopback Hub serving MultiBERTs seeds 0 and 1, a CRFM GPT-2 with a checkpoint branch and a
    gated repo; HF_ENDPOINT and HF_HOME point at it and at an empty folder."""
    import huggingface_hub.constants

    server = LoopbackHub(free_port())
    server.shas = {MB.format(0): server.add(MB.format(0), layouts["mb0"]),
                   MB.format(1): server.add(MB.format(1), layouts["mb1"]),
                   "gpt@checkpoint-100": server.add(GPT, layouts["gpt-early"], branch="checkpoint-100"),
                   "gpt@main": server.add(GPT, layouts["gpt-late"])}
    server.add("google/gated-model", layouts["mb0"], gated=True)
    server.start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("PERMERGE_ALLOW_DOWNLOADS", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    H._plans.clear()
    yield server
    server.stop()
    H._plans.clear()
