"""Load a checkpoint pair (hub id or local folder), validate it before any compute, hash it, save B'.

Weights load through ``from_pretrained`` with safetensors preferred, never remote code; legacy
``pytorch_model.bin`` files go through ``torch.load(weights_only=True)`` (transformers' default).
Everything is computed in float32 on the CPU or GPU, whatever the stored dtype.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from . import safeio
from .arch import SUPPORTED_MODEL_TYPES
from .errors import CheckpointError, IncompatibleModels

# Supported classes, sizes and the config fields a pair must share come from the family tables
# (permerge/arch/): ``SUPPORTED_MODEL_TYPES[model_type]``.


@dataclass
class Checkpoint:
    source: str  # what the user gave: a folder or a hub id
    model: torch.nn.Module
    tokenizer: object | None
    architecture: str
    content_hash: str
    commit: str | None = None  # a hub checkpoint's resolved commit
    published: str | None = None  # "published as BertForPreTraining, loaded as BertForMaskedLM: ..."
    ignored: tuple[str, ...] = ()  # modules of the weights file that the loaded class does not have

    @property
    def config(self):
        return self.model.config

    def summary(self) -> dict:
        c = self.config
        fam = SUPPORTED_MODEL_TYPES[c.model_type]
        s, head = fam.sizes(c), fam.head_of(self.architecture)
        return {"source": self.source, "architecture": self.architecture, "family": fam.name, "head": head,
                "layers": s["layers"], "heads": s["heads"], "hidden": s["hidden"], "intermediate": s["intermediate"],
                "vocab": c.vocab_size, "parameters": sum(p.numel() for p in self.model.parameters()),
                "labels": c.num_labels if head == "classifier" else None,
                "tied_decoder": bool(getattr(c, "tie_word_embeddings", True)), "hash": self.content_hash[:12],
                "commit": self.commit, "published": self.published, "ignored": list(self.ignored)}


# Hub ids are looked up in the local Hugging Face cache only, unless downloads are allowed (hub.py).
from .hub import ALLOW_DOWNLOADS, downloads_allowed  # noqa: E402,F401  (kept importable from here)


def _is_local(source: str) -> bool:
    """A path: it exists, starts with '.', '/' or '~', has more than two components, or its first
    component exists here (``fx/ckAA`` with a folder ``fx``); otherwise a hub id ('name' or
    'org/name', with ``@REVISION`` for a branch, tag or commit)."""
    first = source.split("/", 1)[0]
    return (os.path.exists(os.path.expanduser(source)) or source.startswith((".", "/", "~"))
            or source.count("/") > 1 or os.sep != "/" and os.sep in source
            or bool(first) and os.path.exists(first))


def _folder(source: str, need: str = "all", progress=None) -> tuple[Path, bool]:
    """The folder a checkpoint is read from and whether the user named it as a path: a local
    folder as given, a hub id as its cached snapshot (fetched first when downloads are allowed)."""
    if _is_local(source):
        return Path(os.path.expanduser(source)), True
    from . import hub

    return hub.resolve(source, need, progress=progress), False


def read_config(source: str):
    """The config of a checkpoint, with a one-line error when it cannot be had."""
    from transformers import AutoConfig

    local = _is_local(source)
    path = Path(os.path.expanduser(source)) if local else _folder(source, "config")[0]
    if local:
        try:
            path.stat()
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint folder not found: {source}") from None
        except OSError as e:  # a name too long for the file system, a loop of links, ...
            raise CheckpointError(f"cannot use checkpoint {source}: {e.strerror or e}") from None
        if path.is_dir():
            check_regular_files(source, path)
        if not path.is_dir() or not (path / "config.json").is_file():
            raise CheckpointError(f"not a checkpoint folder (no config.json): {source}")
        try:
            json.loads(safeio.read_bytes(path / "config.json"))
        except RecursionError:
            raise CheckpointError(f"unreadable config.json in {source}: JSON nested too deep") from None
        except (OSError, ValueError) as e:
            raise CheckpointError(f"unreadable config.json in {source}: {getattr(e, 'strerror', None) or e}") from None
    try:
        cfg = AutoConfig.from_pretrained(str(path), trust_remote_code=False, local_files_only=True)
    except Exception as e:  # malformed config, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot load checkpoint {source!r}: {first}") from None
    check_config_sizes(source, cfg, path)
    return cfg


# Files of a checkpoint folder that loading opens (weights, config, tokenizer): regular files only.
_LOADED_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model", ".pt", ".pth", ".msgpack", ".h5")


def check_regular_files(source: str, folder: Path) -> None:
    """A FIFO, socket or device named like a file that loading opens would block ``open()`` for
    ever (or read without end): refused by name before anything is opened."""
    bad = safeio.non_regular_entries(folder, _LOADED_SUFFIXES)
    if bad:
        raise CheckpointError(f"cannot use checkpoint {source}: {bad[0].name} is {safeio.NOT_REGULAR}")


def _weights_header(folder: Path) -> dict[str, tuple] | None:
    """Every tensor's name and shape from the safetensors headers (no data is read); None when
    the folder has no safetensors file (legacy .bin weights)."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    shapes = {}
    for f in files:
        try:
            with safeio.pinned(f) as pf, safe_open(pf, framework="np") as h:
                for k in h.keys():
                    shapes[k] = tuple(h.get_slice(k).get_shape())
        except Exception as e:
            raise CheckpointError(f"corrupt weights file {f}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return shapes


def check_config_sizes(source: str, cfg, folder: Path) -> None:
    """The sizes in config.json are whole numbers that the weights file can hold: no more layers
    than it has tensors for, no width beyond its largest tensor dimension.  Checked on the
    safetensors header before anything is instantiated, since a config with 200,000 layers takes
    minutes and all the memory to build even on the meta device."""
    import re

    if getattr(cfg, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return  # refused later with its own message
    fam = SUPPORTED_MODEL_TYPES[cfg.model_type]
    try:
        sizes = dict(fam.sizes(cfg))
        sizes["vocab_size"] = cfg.vocab_size
        sizes["positions"] = fam.longest_input(cfg)
    except Exception as e:
        raise CheckpointError(f"config.json of {source} is incomplete: {e}") from None
    field_of = {"layers": "the number of layers", "hidden": "the hidden size", "heads": "the number of heads",
                "intermediate": "the intermediate size", "embedding": "the embedding size",
                "vocab_size": "vocab_size", "positions": "the maximum input length"}
    for k, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if k == "layers" else 1):
            raise CheckpointError(f"config.json of {source}: {field_of.get(k, k)} must be a positive whole "
                                  f"number, got {v!r}")
    if sizes["heads"] > sizes["hidden"]:
        raise CheckpointError(f"config.json of {source}: {sizes['heads']} attention heads for a hidden size of "
                              f"{sizes['hidden']}")
    shapes = _weights_header(folder)
    if not shapes:
        return
    layer = re.escape(fam.layer[0].template).replace(re.escape("{base}"), r"(?:\w+\.)?").replace(
        re.escape("{l}"), r"(\d+)")
    found = [int(m.group(1)) for k in shapes if (m := re.match(layer, k))]
    in_file = max(found) + 1 if found else 0
    if sizes["layers"] > in_file:
        raise CheckpointError(f"config.json of {source} declares {sizes['layers']} layers, but its weights hold "
                              f"{in_file}; the config does not belong to these weights")
    widest = max((d for shape in shapes.values() for d in shape), default=0)
    for k in ("hidden", "intermediate", "embedding", "vocab_size"):
        if sizes[k] > widest:
            raise CheckpointError(f"config.json of {source}: {field_of[k]} {sizes[k]} is larger than any tensor "
                                  f"dimension in its weights (at most {widest}); the config does not belong "
                                  "to these weights")


def _architecture(cfg) -> str:
    """The class a checkpoint is loaded as: its config's class, or for a class it is published
    under (BertForPreTraining) the family's class for it (BertForMaskedLM)."""
    if cfg.model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(f"unsupported model type {cfg.model_type!r} (supported: {sorted(SUPPORTED_MODEL_TYPES)})")
    fam = SUPPORTED_MODEL_TYPES[cfg.model_type]
    archs = [fam.loaded_class(a) for a in (cfg.architectures or []) if fam.loaded_class(a)]
    if cfg.architectures and not archs:
        supported = list(fam.classes) + list(fam.published)
        raise CheckpointError(f"unsupported architecture {cfg.architectures[0]} (supported: {', '.join(supported)})")
    return archs[0] if archs else fam.default_class()


def published_note(cfg) -> str | None:
    """For a checkpoint published under a class permerge loads as another one: what happens, in words
    ("published as BertForPreTraining, loaded as BertForMaskedLM: the next-sentence head ...")."""
    fam = SUPPORTED_MODEL_TYPES.get(getattr(cfg, "model_type", None))
    for a in (getattr(cfg, "architectures", None) or []) if fam else []:
        if a in fam.published:
            loaded, ignored = fam.published[a]
            return f"published as {a}, loaded as {loaded}: {ignored}"
    return None


def _config_field(cfg, arch: str, field: str):
    head = SUPPORTED_MODEL_TYPES[cfg.model_type].head_of(arch)
    if field == "architecture":
        return arch
    if field == "num_labels":
        return cfg.num_labels if head == "classifier" else None
    if field == "tie_word_embeddings":
        return bool(getattr(cfg, "tie_word_embeddings", True)) if head in ("mlm", "causal-lm") else None
    return getattr(cfg, field, None)


def config_summary(source: str) -> dict:
    """Layers, heads, widths and parameter count from a checkpoint's config alone (the model is
    built on the meta device, so no weights are read); for RoPE families the rotary dims that stay
    in place and the key/value heads (``fixed.config_facts``)."""
    import transformers

    from .fixed import config_facts

    cfg = read_config(source)
    arch = _architecture(cfg)
    try:
        with torch.device("meta"):
            n_params = sum(p.numel() for p in getattr(transformers, arch)(cfg).parameters())
    except Exception:
        n_params = None
    fam = SUPPORTED_MODEL_TYPES[cfg.model_type]
    s, head = fam.sizes(cfg), fam.head_of(arch)
    return {"architecture": arch, "family": fam.name, "head": head, "layers": s["layers"], "heads": s["heads"],
            "hidden": s["hidden"], "head width": s["hidden"] // max(s["heads"], 1),
            "intermediate": s["intermediate"], "vocab": cfg.vocab_size,
            "labels": cfg.num_labels if head == "classifier" else None,
            "parameters": n_params, "published": published_note(cfg), **config_facts(fam, cfg)}


def config_spec(source: str):
    """The ArchSpec (groups, residual points, evaluation kind) of a checkpoint from its config
    alone: the model is built on the meta device, so no weights are read or allocated."""
    import transformers

    from .arch import build_spec

    cfg = read_config(source)
    arch = _architecture(cfg)
    with torch.device("meta"):
        model = getattr(transformers, arch)(cfg)
    return build_spec(SUPPORTED_MODEL_TYPES[cfg.model_type], model)


def validate_pair(cfg_a, cfg_b) -> None:
    """Raise IncompatibleModels naming the first differing field (before any weights load)."""
    arch_a, arch_b = _architecture(cfg_a), _architecture(cfg_b)
    fields = SUPPORTED_MODEL_TYPES[cfg_a.model_type].pair_fields
    if cfg_a.model_type != cfg_b.model_type:
        fields = ("model_type",)
    for f in fields:
        va, vb = _config_field(cfg_a, arch_a, f), _config_field(cfg_b, arch_b, f)
        if va != vb:
            raise IncompatibleModels(f"the checkpoints differ in {f}: {va!r} (A) vs {vb!r} (B)")


def _check_weight_files(path: Path) -> None:
    """Open every safetensors file's header so a corrupt file fails here with its name."""
    from safetensors import safe_open

    for f in sorted(path.glob("*.safetensors")):
        try:
            with safeio.pinned(f) as pf, safe_open(pf, framework="pt") as h:
                keys = list(h.keys())
                if keys:  # a truncated file ends before the last tensor's data
                    h.get_slice(keys[-1])
        except Exception as e:
            raise CheckpointError(f"corrupt weights file {f}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


# Weights a pretraining checkpoint carries for heads the loaded class does not have (BERT's
# next-sentence head, the pooler of an MLM, the MLM head under a classifier): ignored when the
# model has no such module.  Any other unexpected tensor is an error.
_FOREIGN_HEADS = ("cls.seq_relationship.", "cls.predictions.", "bert.pooler.", "pooler.", "classifier.")
# Files that hold a tokenizer's vocabulary; without one transformers makes up a special-tokens-only
# tokenizer, which would turn every word into [UNK].
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                    "tokenizer.model")


def _index_files(index: Path) -> list[str]:
    try:
        names = sorted(set(json.loads(safeio.read_bytes(index))["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"unreadable {index}: {e}") from None
    outside = [f for f in names if not isinstance(f, str) or Path(f).name != f]
    if outside:
        raise CheckpointError(f"{index} names a weights file outside the checkpoint folder: {outside[0]!r}")
    return names


def _load_safetensors(f: Path) -> dict:
    """Read into memory, not memory-mapped: a file rewritten or truncated while it is read is an
    error, not a SIGBUS; ``safeio`` opens only a regular file and never blocks on a FIFO."""
    from safetensors.torch import load as load_bytes

    return load_bytes(safeio.read_bytes(f))


def _load_bin(f: Path) -> dict:
    """``torch.load(weights_only=True)``: tensors only, never code."""
    part = torch.load(str(f), map_location="cpu", weights_only=True)
    if not isinstance(part, dict) or not all(isinstance(v, torch.Tensor) for v in part.values()):
        raise CheckpointError(f"weights file {f} does not hold a dictionary of tensors")
    return part


# The weight formats in the order they are looked for: the single file's name (its shards are listed
# in "<name>.index.json"), its reader, and what a file it cannot read is called.
_WEIGHT_FORMATS = (
    ("model.safetensors", _load_safetensors, "corrupt weights file {f}: {msg} (was it changed while it was read?)"),
    ("pytorch_model.bin", _load_bin, "cannot read weights file {f} with weights_only=True (tensors only): {msg}"),
)


def _read_weights(folder: Path) -> dict | None:
    """The weights of a folder read into memory: safetensors (one file or shards with their index),
    else legacy pytorch_model.bin (likewise); None when the folder has neither."""
    for name, load, unreadable in _WEIGHT_FORMATS:
        index = folder / f"{name}.index.json"
        if (folder / name).is_file():
            files = [folder / name]
        elif index.is_file():
            files = [folder / f for f in _index_files(index)]
        else:
            continue
        state = {}
        for f in files:
            try:
                state.update(load(f))
            except CheckpointError:
                raise
            except Exception as e:
                text = str(e).strip()
                msg = getattr(e, "strerror", None) or (text.splitlines()[0] if text else type(e).__name__)
                raise CheckpointError(unreadable.format(f=f, msg=msg)) from None
        return state
    return None


def _check_loading_info(source: str, model, info: dict) -> tuple[str, ...]:
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"checkpoint {source} lacks the tensor {missing[0]}{more}; "
                              "the weights file is incomplete")
    names = list(model.state_dict())

    def foreign(key: str) -> bool:  # a head this class does not have
        return any(key.startswith(h) and not any(n.startswith(h) for n in names) for h in _FOREIGN_HEADS)

    extra = sorted(info.get("unexpected_keys") or ())
    unexpected = [k for k in extra if not foreign(k)]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"checkpoint {source} has an unexpected tensor {unexpected[0]}{more} "
                              f"that the {type(model).__name__} architecture does not have")
    mismatched = list(info.get("mismatched_keys") or ())
    if mismatched:
        m = mismatched[0]
        name, shapes = (m[0], f" ({tuple(m[1])} in the file, {tuple(m[2])} for its config)") \
            if isinstance(m, (tuple, list)) and len(m) == 3 else (m, "")
        raise CheckpointError(f"checkpoint {source}: tensor {name} has the wrong shape{shapes}")
    # the modules that were left out (cls.seq_relationship, bert.pooler, ...), for the summary
    return tuple(dict.fromkeys(k.rsplit(".", 1)[0].removesuffix(".dense") for k in extra if foreign(k)))


def check_finite(source: str, model) -> None:
    """Non-finite weights anywhere make every loss NaN: refuse them before any compute."""
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            raise CheckpointError(f"checkpoint {source} has non-finite weights in {name} ({nan} NaN, {inf} inf)")


def _load_tokenizer(target: str, source: str | None = None):
    import transformers

    present = [f for f in _TOKENIZER_FILES if (Path(target) / f).is_file()]
    if not present:
        return None
    try:
        tok = transformers.AutoTokenizer.from_pretrained(target, trust_remote_code=False, local_files_only=True)
    except Exception as e:
        if present:  # the files are there but do not load: say so rather than "no tokenizer"
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"checkpoint {source or target}: its tokenizer ({', '.join(present)}) cannot be "
                                  f"read: {msg}") from None
        return None  # a checkpoint without tokenizer files; data that needs one will say so
    if len(tok) <= len(set(tok.all_special_tokens)):  # special tokens only: no real vocabulary
        return None
    return tok


# The parts of a tokenizer that decide the ids of a text, in the order they act (fast tokenizers).
_TOKENIZER_PARTS = (("normalizer", "normalisers"), ("pre_tokenizer", "pre-tokenisers"), ("model", "models"),
                    ("added_tokens", "added tokens"), ("post_processor", "post-processors"))


def _short(v, width: int = 60) -> str:
    r = repr(v)
    return r if len(r) <= width else r[: width - 1] + "…"


def _first_difference(a, b, path: str = ""):
    """(path, value in a, value in b) of the first difference between two JSON trees, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if k not in b or k not in a or a[k] != b[k]:
                if k in a and k in b:
                    return _first_difference(a[k], b[k], f"{path}.{k}" if path else str(k))
                return (f"{path}.{k}" if path else str(k), a.get(k, "(absent)"), b.get(k, "(absent)"))
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return _first_difference(x, y, f"{path}[{i}]")
        return None
    return None if a == b else (path, a, b)


def _vocab_difference(va: dict, vb: dict) -> str | None:
    if va == vb:
        return None
    for tok, i in sorted(va.items(), key=lambda kv: kv[1]):
        if vb.get(tok) != i:
            return (f"token {tok!r} is id {i} in A's vocabulary and "
                    + (f"id {vb[tok]} in B's" if tok in vb else "absent from B's"))
    tok = min((t for t in vb if t not in va), key=lambda t: vb[t])
    return f"token {tok!r} is id {vb[tok]} in B's vocabulary and absent from A's"


def tokenizer_difference(ta, tb) -> str | None:
    """The first difference between two tokenizers that can change the ids of a text (vocabulary,
    normaliser, pre-tokeniser, model options, added and special tokens), in words; None if none."""
    d = _vocab_difference(ta.get_vocab(), tb.get_vocab())
    if d:
        return f"their vocabularies differ: {d}"
    ja = json.loads(ta.backend_tokenizer.to_str()) if hasattr(ta, "backend_tokenizer") else None
    jb = json.loads(tb.backend_tokenizer.to_str()) if hasattr(tb, "backend_tokenizer") else None
    if ja is not None and jb is not None:
        for part, words in _TOKENIZER_PARTS:
            pa, pb = ja.get(part), jb.get(part)
            if part == "model" and isinstance(pa, dict) and isinstance(pb, dict):
                pa = {k: v for k, v in pa.items() if k not in ("vocab", "merges")}
                pb = {k: v for k, v in pb.items() if k not in ("vocab", "merges")}
                if ja["model"].get("merges") != jb["model"].get("merges"):
                    return "their BPE merges differ"
            diff = _first_difference(pa, pb)
            if diff:
                where, x, y = diff
                return f"their {words} differ{' in ' + where if where else ''}: {_short(x)} (A) vs {_short(y)} (B)"
    else:  # slow tokenizers: the options they share
        for opt in ("do_lower_case", "strip_accents", "tokenize_chinese_chars", "add_prefix_space"):
            x, y = getattr(ta, opt, None), getattr(tb, opt, None)
            if x != y:
                return f"their option {opt} differs: {x!r} (A) vs {y!r} (B)"
    sa, sb = ta.special_tokens_map, tb.special_tokens_map
    diff = _first_difference(sa, sb)
    if diff:
        where, x, y = diff
        return f"their special token {where} differs: {_short(x)} (A) vs {_short(y)} (B)"
    return None


def check_tokenizers(a: "Checkpoint", b: "Checkpoint") -> None:
    """One tokenizer for the pair: IncompatibleModels naming the first difference between the two
    checkpoints' tokenizers, and CheckpointError when the tokenizer's ids do not fit the models'
    embeddings (which would fail in the middle of a forward pass)."""
    ta, tb = a.tokenizer, b.tokenizer
    if ta is not None and tb is not None:
        diff = tokenizer_difference(ta, tb)
        if diff:
            raise IncompatibleModels(f"the checkpoints' tokenizers differ: {diff}; give a pair with one tokenizer")
    tok, owner = (tb, "B") if tb is not None else (ta, "A")
    if tok is None:
        return
    top = max([len(tok) - 1, *tok.get_vocab().values()])
    for name, c in (("A", a), ("B", b)):
        rows = c.model.get_input_embeddings().num_embeddings
        if top >= rows:
            raise CheckpointError(f"the tokenizer of checkpoint {owner} has ids up to {top}, but checkpoint {name}'s "
                                  f"embedding has {rows} rows (vocab_size {c.config.vocab_size}); "
                                  "the tokenizer does not belong to this model")


def load_checkpoint(source: str, cfg=None, progress=None) -> Checkpoint:
    import transformers

    quiet_transformers()
    cfg = cfg if cfg is not None else read_config(source)
    arch = _architecture(cfg)
    folder, local = _folder(source, "all", progress)
    target = str(folder)
    check_regular_files(source, folder)
    _check_weight_files(folder)
    state = _read_weights(folder)
    try:
        # mismatched shapes are reported by name below (transformers would only say "see the report")
        model, info = getattr(transformers, arch).from_pretrained(
            None if state is not None else target, config=cfg, dtype=torch.float32, trust_remote_code=False,
            output_loading_info=True, ignore_mismatched_sizes=True, local_files_only=True,
            **({"state_dict": state} if state is not None else {}))
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot load weights of {source!r}: {msg}") from None
    ignored = _check_loading_info(source, model, info)
    model = model.float().eval()
    check_finite(source, model)
    return Checkpoint(source, model, _load_tokenizer(target, source), arch, state_hash(model),
                      commit=None if local else folder.name, published=published_note(cfg), ignored=ignored)


def load_pair(source_a: str, source_b: str) -> tuple[Checkpoint, Checkpoint]:
    """Read and compare both configs first; load weights only for a compatible pair."""
    cfg_a, cfg_b = read_config(source_a), read_config(source_b)
    validate_pair(cfg_a, cfg_b)
    a, b = load_checkpoint(source_a, cfg_a), load_checkpoint(source_b, cfg_b)
    sa = {n: tuple(p.shape) for n, p in a.model.named_parameters()}
    sb = {n: tuple(p.shape) for n, p in b.model.named_parameters()}
    for n in sa:
        if sb.get(n) != sa[n]:
            raise IncompatibleModels(f"the checkpoints differ in parameter {n}: {sa[n]} (A) vs {sb.get(n)} (B)")
    return a, b


def state_hash(model: torch.nn.Module) -> str:
    """Content hash of a model: its config and every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256()
    cfg = {k: v for k, v in model.config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def quiet_transformers() -> None:
    """permerge shows its own progress; silence the library's bars and notices."""
    import huggingface_hub.utils
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    huggingface_hub.utils.disable_progress_bars()


def save_model(model, tokenizer, out_dir: Path) -> None:
    quiet_transformers()
    model.save_pretrained(str(out_dir), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))
