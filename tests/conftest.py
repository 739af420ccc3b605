import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(1)  # tiny models: one thread is fastest and immune to a busy neighbour


def _have_default_pair() -> bool:
    from permerge import zoo

    names = {e["name"] for e in zoo.list_checkpoints()}
    return all(n in names for n in zoo.DEFAULT_PAIR)


HAVE_PAIR = _have_default_pair()  # the bundled default pair (mlm-seed1, mlm-seed2) is built


def page_charts(at) -> list:
    """The Plotly charts of an AppTest page, without the hidden empty one every page carries so that
    the browser loads Plotly early (``dashboard.figures.preload_plotly``)."""
    from dashboard.figures import PLOTLY_PRELOAD

    return [c for c in at.get("plotly_chart") if not c.proto.id.endswith(f"{PLOTLY_PRELOAD}_chart")]


@pytest.fixture(scope="module")
def app_env(tmp_path_factory):
    """A fresh result cache for the requesting module, and the app's working directory.  Module
    scope: each dashboard test module gets its own cache (``pytestmark = usefixtures("app_env")``)."""
    old = os.environ.get("PERMERGE_CACHE")
    os.environ["PERMERGE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    cwd = os.getcwd()
    os.chdir(ROOT)
    from dashboard import state

    state.registry.clear()  # the per-process registry must use this module's cache
    yield
    state.registry.clear()
    os.chdir(cwd)
    if old is None:
        os.environ.pop("PERMERGE_CACHE", None)
    else:
        os.environ["PERMERGE_CACHE"] = old

# Random configurations: odd head counts, head widths that are not powers of two, tied and untied
# decoders, classifiers (3-way and regression) and a bare encoder.
CONFIGS = {
    "mlm-tied-h5-dk6": dict(head="mlm", hidden_size=30, num_attention_heads=5, intermediate_size=37, num_hidden_layers=2),
    "mlm-untied-h3-dk12": dict(head="mlm", hidden_size=36, num_attention_heads=3, intermediate_size=50,
                               num_hidden_layers=3, tie_word_embeddings=False),
    "cls3-h7-dk4": dict(head="cls", hidden_size=28, num_attention_heads=7, intermediate_size=40, num_hidden_layers=2, num_labels=3),
    "reg-h2-dk10": dict(head="cls", hidden_size=20, num_attention_heads=2, intermediate_size=24, num_hidden_layers=1, num_labels=1),
    "base-h4-dk9": dict(head="base", hidden_size=36, num_attention_heads=4, intermediate_size=29, num_hidden_layers=2),
}


def random_valid_perms(spec, seed):
    """Random permutations that keep the function: whole heads and a permutation within each head
    for attention groups, one permutation shared by every residual group."""
    rng = np.random.default_rng(seed)
    perms = {}
    res = rng.permutation(spec.hidden)
    for name, g in spec.groups.items():
        if g.kind == "qk":
            continue  # drawn with its attention group
        if g.kind == "att" and (g.kv_heads or g.qk):
            perms.update(grouped_valid_perms(spec, name, rng))
        elif g.kind == "att":
            dk = g.size // g.heads
            outer = rng.permutation(g.heads)
            perms[name] = np.concatenate([outer[h] * dk + rng.permutation(dk) for h in range(g.heads)])
        elif g.kind == "res":
            perms[name] = res
        else:
            perms[name] = rng.permutation(g.size)
    return perms


def grouped_valid_perms(spec, att: str, rng, free_qk: bool = True) -> dict:
    """Random function-preserving permutations of an attention group with grouped key/value heads
    and/or a linked query/key group (RoPE): key/value blocks move as wholes, query heads within their
    block; one value permutation and one query/key permutation per block, the query/key one keeping
    the group's first ``fixed`` dims of every head in place (and all of them unless ``free_qk``)."""
    g = spec.groups[att]
    dk, kv = g.size // g.heads, g.kv_heads or g.heads
    r = g.heads // kv
    qk = spec.groups[g.qk] if g.qk else None
    fixed = qk.fixed if qk is not None else dk
    blocks = rng.permutation(kv)
    hmap = np.concatenate([blocks[s] * r + rng.permutation(r) for s in range(kv)])
    p_att, p_qk = np.empty(g.size, dtype=np.int64), np.empty(g.size, dtype=np.int64)
    for s in range(kv):
        v_inner = rng.permutation(dk)
        free = rng.permutation(dk - fixed) + fixed if free_qk else np.arange(fixed, dk)
        q_inner = np.concatenate([np.arange(fixed), free])
        for j in range(s * r, (s + 1) * r):
            p_att[j * dk:(j + 1) * dk] = hmap[j] * dk + v_inner
            p_qk[j * dk:(j + 1) * dk] = hmap[j] * dk + q_inner
    return {att: p_att, **({g.qk: p_qk} if qk is not None else {})}


def make_model(seed: int, head="mlm", vocab_size=97, **kw):
    from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab_size, max_position_embeddings=64, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, **kw)
    cls = {"mlm": BertForMaskedLM, "cls": BertForSequenceClassification, "base": BertModel}[head]
    if head == "cls":
        cfg.problem_type = "regression" if cfg.num_labels == 1 else "single_label_classification"
    model = cls(cfg).eval()
    with torch.no_grad():  # spread the weights so that a wrong permutation shows in the logits
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def random_batches(n_batches=3, batch=4, seq=16, vocab=97, seed=0, pad=True):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(5, vocab, (batch, seq), generator=g)
        mask = torch.ones_like(ids)
        if pad:
            lengths = torch.randint(seq // 2, seq + 1, (batch,), generator=g)
            for i, L in enumerate(lengths):
                mask[i, L:] = 0
                ids[i, L:] = 0
        tt = torch.zeros_like(ids)
        tt[:, seq // 2:] = 1
        tt = tt * mask
        out.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": tt,
                    "special_tokens_mask": torch.zeros_like(ids)})
    return out


@pytest.fixture(params=sorted(CONFIGS))
def config_name(request):
    return request.param


WORDS = ("the a of and to in is was he she it that his her with for as on by at from they we you not "
         "but or an be this which are had have were one all there so no when who will more said what up "
         "out them into time has two then only like very its now made over than first could man may "
         "light day night word earth water heaven king people land house city way hand god life good").split()


VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(dict.fromkeys(WORDS + list("bcdefghijklmnopqrstuvwxyz.,")))


def write_tokenizer(folder: Path) -> None:
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    BertTokenizer(vocab=str(folder / "vocab.txt")).save_pretrained(str(folder))


def write_text(path: Path, n_words=6000, seed=0) -> Path:
    import random

    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 20))) + " ." for _ in range(n_words // 12)]
    path.write_text("\n".join(lines) + "\n")
    return path


def save_checkpoint(model, folder: Path, fp16=False) -> Path:
    (model.half() if fp16 else model).save_pretrained(str(folder))
    write_tokenizer(folder)
    model.float()
    return folder


@pytest.fixture(scope="session")
def tiny_mlm_pair(tmp_path_factory):
    """Two MLM checkpoints on disk (different seeds), with tokenizer, plus a text file."""
    root = tmp_path_factory.mktemp("pair")
    n_vocab = len(VOCAB)
    kw = dict(head="mlm", hidden_size=24, num_attention_heads=3, intermediate_size=40, num_hidden_layers=2,
              vocab_size=n_vocab)
    a = save_checkpoint(make_model(11, **kw), root / "a")
    b = save_checkpoint(make_model(12, **kw), root / "b")
    text = write_text(root / "text.txt")
    return a, b, text


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def upgrade_status(port: int, host: str) -> str:
    """The status line a server on 127.0.0.1:port answers to a WebSocket upgrade sent with this Host."""
    import socket

    req = (f"GET /_stcore/stream HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
           f"Origin: http://{host}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(req.encode())
        return s.recv(4096).decode("latin-1").split("\r\n")[0]


_REAL_MAIN = sys.modules.get("__main__")  # pytest's own, before any test or fixture ran


@pytest.fixture(autouse=True)
def _keep_main_module():
    """Streamlit's AppTest installs the script it runs as ``__main__`` (also from fixtures), and
    processes spawned later (torch.multiprocessing) re-run ``__main__``: every test starts and ends
    with pytest's own."""
    if _REAL_MAIN is not None:
        sys.modules["__main__"] = _REAL_MAIN
    yield
    if _REAL_MAIN is not None:
        sys.modules["__main__"] = _REAL_MAIN
