"""A model family described as data, and the one generic builder that turns it into an ArchSpec.

A :class:`Family` is a table: the Hugging Face classes it covers and the head kind of each, the
config fields that give its sizes and must agree for a pair, the inputs the model takes, whether the
residual stream is post-LN or pre-LN, where each permutation group's features are captured, and for
every weight (by role) its name template and the group acting on each axis.  Nothing outside
``permerge/arch/`` spells out a weight name, an input name or a class name.

Name templates use ``{base}`` (the base model's prefix, e.g. ``"bert."``, or ``""`` for a bare base
model) and ``{l}`` (the layer index).  Axis entries are *symbols* resolved per layer:

* ``"in"``: the residual point entering the layer (``res.emb`` for layer 0);
* ``"att"``, ``"ff"``, ``"res.att"``, ``"res.ff"``: the layer's attention, feed-forward and residual
  points (after the attention and after the feed-forward sub-block);
* ``"res.emb"`` (first residual point), ``"last"`` (last residual point), ``"emb"`` (the word
  embedding's columns: ``res.emb``, or a group of its own when an ``embedding_project`` maps a
  narrower embedding into the residual width), ``"dec"`` (the space of the output decoder's
  columns: ``emb`` when the decoder is tied to the word embedding; else ``last``, or nothing when
  the embedding is projected), ``"pooler"`` (the pooler group of a classifier, else nothing);
* ``(symbol, k)``: the symbol's permutation tiled ``k`` times along that axis, with offsets (GPT-2's
  fused ``c_attn`` holds Q, K and V side by side: ``("att", 3)``);
* ``None``: the axis is not permuted.
* ``KV(symbol)``: the symbol's permutation (an attention group, over the query heads) reduced to
  the key/value heads (grouped-query attention: kv head ``s`` serves query heads ``s*r .. s*r+r-1``,
  and a function-preserving permutation moves such a group as a block, with one inner permutation
  shared by the group's query heads, so the reduction is well defined);
* ``PerHead(s1, s2, ...)``: an axis holding, per head, one block of each symbol side by side
  (GPT-NeoX's fused ``query_key_value``: per head q, k, v: ``PerHead("qk", "qk", "att")``).

Rotary position embeddings (RoPE) as data.  A RoPE family's attention has two permuted spaces per
layer: the head contexts ``att.<l>`` (value dimensions, the output projection's columns: free within a
head) and the query/key space ``qk.<l>`` (the rows of the query projection, and through ``KV`` or
``PerHead`` those of the key projection).  Inside each head of ``qk.<l>`` the first ``rotary`` dims
(``Family.rotary``: config -> dims per head) turn at fixed frequencies and stay in place; the others
may be permuted, identically in queries and keys (one permutation of the group serves both).  Both
spaces of a layer move whole heads together: ``Group.qk`` links the attention group to its q/k group,
and the matchers solve the pair jointly (one head assignment, two inner permutations).  A grouped
key/value layout (``Family.kv_heads``) is read from the config too.  Nothing outside this package
names a family: the matchers read ``Group.heads``, ``kv_heads``, ``fixed`` and ``qk``.

Weights come in layouts: ``linear`` ([out, in] weight and [out] bias, ``torch.nn.Linear``),
``conv1d`` ([in, out] weight and [out] bias, GPT-2's ``Conv1D``), ``norm`` (weight and bias, one
entry per unit), ``embedding`` ([rows, units]), ``vector`` (one bare parameter, e.g. a decoder's
bias over the vocabulary).  A table accounts for every parameter of the model, permuted or not
(axes ``None``): a model with a parameter the table does not know (an architecture option the
family does not cover) is refused before any statistics are collected.

Residual points: in a post-LN network (BERT) each sub-block ends with a LayerNorm whose output is
the residual stream, so the points are those outputs.  In a pre-LN network (GPT-2) the stream is the
raw sum; the points are where that sum is read (the embedding sum, the input of the second norm of
each block, the block output), and the norms *reading* the stream take its permutation on their
gamma and beta.  Either way a function-preserving residual variant gives every point the same
permutation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import CheckpointError

# --- the generic description ---------------------------------------------------------------------

HEAD_KINDS = ("mlm", "causal-lm", "classifier", "discriminator", "base")
# How a head is evaluated along lambda (see permerge.evaluate); "none": no loss to interpolate.
EVALUATION = {"mlm": "mlm", "causal-lm": "causal-lm", "classifier": "classification",
              "discriminator": "none", "base": "none"}


@dataclass(frozen=True)
class Group:
    name: str  # "ff.0", "att.0", "res.emb", "res.0.att", "res.0.ff", "pooler", "emb"
    kind: str  # "ff" | "att" | "res" | "pooler"
    size: int
    capture: str  # module name whose input or output is the feature
    capture_io: str  # "input" | "output"
    layer: int | None = None
    heads: int | None = None  # attention groups: number of heads (units are head-major)
    per_sentence: bool = False  # pooler: one row per sentence instead of one per token
    # grouped-query attention: number of key/value heads (None: one per query head); query heads
    # s*r .. s*r+r-1 (r = heads // kv_heads) share key/value head s
    kv_heads: int | None = None
    fixed: int = 0  # leading dims of every head that stay in place (RoPE: the rotary dims of a q/k group)
    qk: str | None = None  # an attention group's q/k group, matched jointly with it (RoPE families)
    columns: tuple[int, ...] | None = None  # the capture's output columns that are the features (None: all)

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (1 without grouping)."""
        return self.heads // self.kv_heads if self.heads and self.kv_heads else 1


@dataclass(frozen=True)
class Param:
    """One weight (with its bias) of a family: its role, name template, layout and axis symbols."""
    role: str  # "embeddings", "q", "k", "v", "qkv", "attn-out", "ff-in", "ff-out", "norm", "head", ...
    template: str
    layout: str  # "linear" | "conv1d" | "norm" | "embedding" | "vector"
    out: object = None  # symbol on the output units (the only axis of norm / the columns of embedding)
    inp: object = None  # symbol on the input units (linear / conv1d)
    optional: bool = False  # absent in some configurations (an untied decoder, token types, a pooler)
    bias: bool = True


def linear(role, template, out, inp, **kw) -> Param:
    return Param(role, template, "linear", out, inp, **kw)


def conv1d(role, template, out, inp, **kw) -> Param:
    return Param(role, template, "conv1d", out, inp, **kw)


def norm(role, template, g, **kw) -> Param:
    return Param(role, template, "norm", g, **kw)


def embedding(role, template, g, **kw) -> Param:
    return Param(role, template, "embedding", g, **kw)


def vector(role, template, g=None, **kw) -> Param:
    return Param(role, template, "vector", g, **kw)


def linear_any_bias(role, template, out, inp) -> tuple[Param, Param]:
    """A Linear with or without bias (a config switch such as ``attention_bias``): both entries are
    optional, and the one that matches the model's parameters is used."""
    return (linear(role, template, out, inp, optional=True),
            linear(role, template, out, inp, optional=True, bias=False))


@dataclass(frozen=True)
class KV:
    """Table symbol: ``symbol``'s permutation reduced to the key/value heads (see the module docstring)."""
    symbol: str


class PerHead(tuple):
    """Table symbol: per head, one block of each symbol side by side (see the module docstring)."""
    def __new__(cls, *symbols):
        return super().__new__(cls, symbols)


@dataclass(frozen=True)
class View:
    """A resolved axis entry moved by a permutation derived from attention groups' permutations.
    ``kind`` "kv": ``groups[0]``'s permutation (query units) reduced to the key/value heads;
    "per-head": per head, one block of each group's permutation side by side."""
    kind: str
    groups: tuple[str, ...]
    heads: int
    kv_heads: int
    head_dim: int

    @property
    def rep(self) -> int:
        return self.heads // self.kv_heads

    def size(self) -> int:
        if self.kind == "kv":
            return self.kv_heads * self.head_dim
        return self.heads * len(self.groups) * self.head_dim

    def index(self, perms: dict) -> np.ndarray | None:
        """The gather along the axis (None when none of its groups has a permutation)."""
        if not any(g in perms for g in self.groups):
            return None
        dk, n = self.head_dim, self.heads * self.head_dim
        if self.kind == "kv":
            p = np.asarray(perms.get(self.groups[0], np.arange(n)))
            first = (np.arange(self.kv_heads) * self.rep)[:, None] * dk + np.arange(dk)[None, :]
            hb, ib = np.divmod(p[first.reshape(-1)], dk)
            return (hb // self.rep) * dk + ib
        parts = len(self.groups)
        idx = np.empty((self.heads, parts, dk), dtype=np.int64)
        for t, g in enumerate(self.groups):
            hb, ib = np.divmod(np.asarray(perms.get(g, np.arange(n))), dk)
            idx[:, t, :] = (hb * parts * dk + t * dk + ib).reshape(self.heads, dk)
        return idx.reshape(-1)

    def unit_rows(self, group: str) -> tuple[np.ndarray, float]:
        """For weight matching: per unit of ``group`` (query-head-major), the stored rows of the axis
        that belong to it (units x k), and the weight of each row's contribution (a key/value row
        serves ``rep`` query heads: 1/rep, so that a grouped permutation counts it once)."""
        dk = self.head_dim
        h, i = np.divmod(np.arange(self.heads * dk), dk)
        if self.kind == "kv":
            return ((h // self.rep) * dk + i)[:, None], 1.0 / self.rep
        parts = len(self.groups)
        cols = [h * parts * dk + t * dk + i for t, g in enumerate(self.groups) if g == group]
        return np.stack(cols, 1), 1.0


def entry_groups(entry) -> tuple[str, ...]:
    """The groups whose permutations move an axis entry."""
    if entry is None:
        return ()
    if isinstance(entry, View):
        return tuple(dict.fromkeys(entry.groups))
    return (entry[0] if isinstance(entry, tuple) else entry,)


def axis_index(entry, perms: dict) -> np.ndarray | None:
    """The gather along an axis for an entry (None: the axis does not move under ``perms``)."""
    if entry is None:
        return None
    if isinstance(entry, View):
        return entry.index(perms)
    g, tiles = entry if isinstance(entry, tuple) else (entry, 1)
    if g not in perms:
        return None
    return tiled_index(perms[g], tiles)


def unit_rows(entry, group: str, length: int) -> tuple[np.ndarray, float]:
    """Per unit of ``group``, the rows of an axis of ``length`` entries that belong to it (units x k)
    and the weight of their contribution (see ``View.unit_rows``)."""
    if isinstance(entry, View):
        return entry.unit_rows(group)
    tiles = entry[1] if isinstance(entry, tuple) else 1
    n = length // tiles
    return np.arange(n)[:, None] + n * np.arange(tiles)[None, :], 1.0


class LayoutError(CheckpointError, ValueError):
    """The model's weights do not match its family's table."""


@dataclass(frozen=True)
class Capture:
    template: str  # module name template
    io: str = "output"  # "input" | "output"
    # (parts, which): the output holds, per head, ``parts`` blocks side by side and the features are
    # block ``which`` of every head (GPT-NeoX's fused query_key_value: (3, 0) are the queries)
    part: tuple[int, int] | None = None


@dataclass(frozen=True)
class Family:
    """One model family as data.  See the module docstring for the template and symbol language."""
    name: str
    model_types: tuple[str, ...]  # config.model_type values
    classes: dict[str, str]  # HF class name -> head kind (see HEAD_KINDS); the first "base" one is the default
    base: str  # attribute holding the base model inside a head class ("bert", "transformer")
    sizes: Callable  # config -> dict(layers, hidden, heads, intermediate, embedding)
    norm: str  # "post-ln" | "pre-ln"
    inputs: tuple[str, ...]  # the keyword inputs the model takes
    pair_fields: tuple[str, ...]  # config fields that must agree ("architecture": the class)
    embeddings: tuple[Param, ...]
    layer: tuple[Param, ...]  # every weight of layer {l}
    final: tuple[Param, ...]  # after the last layer (a pre-LN network's final norm)
    heads: dict[str, tuple[Param, ...]]  # head kind -> its weights
    captures: dict[str, Capture]  # "res.emb", "att", "ff", "res.att", "res.ff" (per layer: {l})
    decoder: dict[str, str] = field(default_factory=dict)  # head kind -> output decoder weight (tied when absent)
    head_module: dict[str, str] = field(default_factory=dict)  # head kind -> module from hidden states to logits
    pooler: Capture | None = None  # a classifier's pooler (one row per sentence), inside the base model
    # A module mapping a narrower embedding to the residual width.  When the model has it, the
    # "res.emb" capture gives the features of the embedding's own group "emb" (kind "ff": a free
    # hidden space, aligned with FF), and res.emb is read at the projection's output.
    embedding_project: str | None = None
    block_specials: bool = True  # text blocks are [CLS] ... [SEP] (False: plain token runs, for decoders)
    max_length: Callable | None = None  # config -> longest input (default max_position_embeddings)
    # RoPE families (see the module docstring): rotary dims per head (config -> int), key/value
    # heads (config -> int; default one per query head), whether attention and MLP read the same
    # stream in parallel (config -> bool: the MLP's norm reads the layer input and the attention
    # output joins the layer output; symbols "att.write" and "ff.read" follow it)
    rotary: Callable | None = None
    kv_heads: Callable | None = None
    parallel: Callable | None = None
    # The relative tolerance of the float64 equivalence check (permute.equivalence) when a module of
    # the family computes in float32 even in a float64 model (None: the float64 default)
    equivalence_tol: float | None = None
    # Classes that checkpoints are published under on the Hub but that permerge loads as another
    # class of the family, with the heads the loaded class lacks ignored: class -> (loaded class,
    # what is ignored, in words).  E.g. BERT's pre-training class (MLM + next-sentence heads).
    published: dict[str, tuple[str, str]] = field(default_factory=dict)

    # --- what the rest of permerge asks ---------------------------------------------------
    def head_of(self, class_name: str) -> str:
        return self.classes[class_name]

    def loaded_class(self, class_name: str) -> str | None:
        """The class a checkpoint published as ``class_name`` is loaded as (None: not supported)."""
        if class_name in self.classes:
            return class_name
        return self.published[class_name][0] if class_name in self.published else None

    def default_class(self) -> str:
        return next(c for c, h in self.classes.items() if h == "base")

    def longest_input(self, cfg) -> int:
        return self.max_length(cfg) if self.max_length else cfg.max_position_embeddings


@dataclass(frozen=True)
class ArchSpec:
    family: str
    head: str  # "mlm" | "causal-lm" | "classifier" | "discriminator" | "base"
    num_layers: int
    hidden: int
    heads: int
    intermediate: int
    groups: dict[str, Group]
    axes: dict[str, tuple]  # parameter name -> per axis: group name, (group name, tiles) or None
    residual_points: tuple[str, ...] = field(default=())
    mlm_head: str | None = None  # module mapping encoder states to vocabulary logits (MLMs)
    norm: str = "post-ln"
    inputs: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
    evaluation: str = "mlm"  # "mlm" | "causal-lm" | "classification" | "none"
    layouts: dict[str, str] = field(default_factory=dict)  # parameter name -> layout
    roles: dict[str, str] = field(default_factory=dict)  # parameter name -> role ("q", "ff-in", "norm", ...)
    table: Family | None = None

    def groups_of(self, kind: str) -> list[Group]:
        return [g for g in self.groups.values() if g.kind == kind]

    def params_of(self, group: str) -> list[tuple[str, int]]:
        """(parameter name, axis) pairs that the group permutes: what the UI shows as 'touches'."""
        return [(p, ax) for p, axes in self.axes.items() for ax, g in enumerate(axes) if group in entry_groups(g)]

    def axis_label(self, name: str, axis: int) -> str:
        """How a permutation moves this axis: "rows", "columns" or "entries" (of the stored tensor),
        "... (k tiles)" when it is tiled."""
        a = self.axes[name][axis]
        if len(self.axes[name]) == 1:
            word = "entries"
        else:
            word = "rows" if axis == 0 else "columns"
        if isinstance(a, View):
            return f"{word} (key/value heads)" if a.kind == "kv" else f"{word} ({len(a.groups)} blocks per head)"
        return f"{word} ({a[1]} tiles)" if isinstance(a, tuple) else word

    def model_inputs(self, batch: dict) -> dict:
        """The entries of a batch that the model takes."""
        return {k: v for k, v in batch.items() if k in self.inputs}


def axis_group(entry):
    """The group name of an axis entry (a name, ``(name, tiles)``, a view: its first group, or None)."""
    if isinstance(entry, View):
        return entry.groups[0]
    return entry[0] if isinstance(entry, tuple) else entry


def tiled_index(perm, tiles: int) -> np.ndarray:
    """The permutation repeated ``tiles`` times along one axis, each copy offset by its length."""
    perm = np.asarray(perm)
    return np.concatenate([perm + k * len(perm) for k in range(tiles)])


# --- the generic builder -----------------------------------------------------------------------------

def _param_axes(p: Param, resolve) -> dict[str, tuple]:
    out, inp = resolve(p.out), resolve(p.inp)
    if p.layout == "linear":
        d = {f"{p.template}.weight": (out, inp)}
    elif p.layout == "conv1d":
        d = {f"{p.template}.weight": (inp, out)}
    elif p.layout == "norm":
        d = {f"{p.template}.weight": (out,)}
    elif p.layout == "embedding":
        return {f"{p.template}.weight": (None, out)}
    elif p.layout == "vector":
        return {p.template: (out,)}
    else:
        raise ValueError(f"unknown layout {p.layout!r}")
    if p.bias:
        d[f"{p.template}.bias"] = (out,)
    return d


def build_spec(fam: Family, model) -> ArchSpec:
    """Expand a family's table for one model (its class, sizes and which optional weights exist)."""
    cls = type(model).__name__
    if cls not in fam.classes:
        raise ValueError(f"unsupported class {cls} for the {fam.name} family (supported: {', '.join(fam.classes)})")
    head = fam.head_of(cls)
    s = fam.sizes(model.config)
    L, d, H, d_ff = s["layers"], s["hidden"], s["heads"], s["intermediate"]
    dk = s.get("head_dim") or d // max(H, 1)
    kv = fam.kv_heads(model.config) if fam.kv_heads else H
    if kv != H and (kv < 1 or H % kv):
        raise LayoutError(f"unsupported {fam.name} variant: {H} query heads cannot be grouped over {kv} key/value heads")
    rotary = fam.rotary(model.config) if fam.rotary else 0
    parallel = bool(fam.parallel(model.config)) if fam.parallel else False
    base = f"{fam.base}." if hasattr(model, fam.base) else ""
    params = dict(model.named_parameters())  # tied weights appear once
    modules = {n for n, _ in model.named_modules()}

    def fmt(t: str, l: int | None = None) -> str:
        return t.format(base=base, l=l)

    groups: dict[str, Group] = {}
    axes: dict[str, tuple] = {}
    layouts: dict[str, str] = {}
    roles: dict[str, str] = {}
    res_points: list[str] = []

    def cap(key: str, l: int | None = None) -> tuple[str, str]:
        c = fam.captures[key]
        return fmt(c.template, l), c.io

    # embeddings: the word embedding's own group when a projection widens it into the residual stream
    project = fmt(fam.embedding_project) if fam.embedding_project else None
    if project is not None and project not in modules:
        project = None
    if project is not None:
        groups["emb"] = Group("emb", "ff", s["embedding"], *cap("res.emb"))
        groups["res.emb"] = Group("res.emb", "res", d, project, "output")
        emb = "emb"
    else:
        groups["res.emb"] = Group("res.emb", "res", d, *cap("res.emb"))
        emb = "res.emb"
    res_points.append("res.emb")

    last = f"res.{L - 1}.ff" if L else "res.emb"
    tied = head not in fam.decoder or fmt(fam.decoder[head]) not in params  # a tied decoder is not listed
    dec = emb if tied else (last if emb == "res.emb" else None)
    pooler_g = "pooler" if (head == "classifier" and fam.pooler is not None) else None
    symbols = {"res.emb": "res.emb", "emb": emb, "last": last, "dec": dec, "pooler": pooler_g}

    def add(plist, l: int | None = None, local: dict | None = None):
        table = {**symbols, **(local or {})}

        def resolve(sym):
            if sym is None:
                return None
            if isinstance(sym, KV):
                g = resolve(sym.symbol)
                return None if g is None else View("kv", (g,), H, kv, dk)
            if isinstance(sym, PerHead):
                gs = tuple(resolve(x) for x in sym)
                return None if all(g is None for g in gs) else View("per-head", gs, H, kv, dk)
            if isinstance(sym, tuple):
                g = resolve(sym[0])
                return None if g is None else (g, sym[1])
            return table[sym]

        for p in plist:
            entries = {fmt(n, l): a for n, a in _param_axes(p, resolve).items()}
            if p.optional and not all(n in params for n in entries):
                continue
            for n, a in entries.items():
                axes[n] = a
                layouts[n] = p.layout
                roles[n] = p.role

    if project is not None:
        add([linear("embeddings-project", fam.embedding_project, "res.emb", "emb")])
    add(fam.embeddings)
    prev = "res.emb"
    for l in range(L):
        att, ff, r_att, r_ff = f"att.{l}", f"ff.{l}", f"res.{l}.att", f"res.{l}.ff"
        qk = f"qk.{l}" if "qk" in fam.captures else None
        groups[att] = Group(att, "att", H * dk, *cap("att", l), layer=l, heads=H,
                            kv_heads=kv if kv != H else None, qk=qk)
        if qk is not None:
            part = fam.captures["qk"].part
            cols = None if part is None else tuple(
                int(h * part[0] * dk + part[1] * dk + i) for h in range(H) for i in range(dk))
            groups[qk] = Group(qk, "qk", H * dk, *cap("qk", l), layer=l, heads=H,
                               kv_heads=kv if kv != H else None, fixed=rotary, columns=cols)
        groups[ff] = Group(ff, "ff", d_ff, *cap("ff", l), layer=l)
        groups[r_att] = Group(r_att, "res", d, *cap("res.att", l), layer=l)
        groups[r_ff] = Group(r_ff, "res", d, *cap("res.ff", l), layer=l)
        res_points += [r_att, r_ff]
        add(fam.layer, l, {"in": prev, "att": att, "qk": qk, "ff": ff, "res.att": r_att, "res.ff": r_ff,
                           "att.write": r_ff if parallel else r_att, "ff.read": prev if parallel else r_att})
        prev = r_ff
    add(fam.final)
    add(fam.heads.get(head, ()))
    if pooler_g is not None:
        groups["pooler"] = Group("pooler", "pooler", d, fmt(fam.pooler.template), fam.pooler.io, per_sentence=True)

    missing = [n for n in axes if n not in params]
    if missing:
        raise LayoutError(f"unexpected {fam.name} layout: parameter {missing[0]} not found in the model")
    unknown = [n for n in params if n not in axes]
    if unknown:
        raise LayoutError(f"unsupported {fam.name} variant: parameter {unknown[0]} is not in the {fam.name} table")
    for g in groups.values():
        if g.capture not in modules:
            raise LayoutError(f"unexpected {fam.name} layout: capture module {g.capture} not found in the model")
    return ArchSpec(fam.name, head, L, d, H, d_ff, groups, axes, tuple(res_points),
                    mlm_head=fam.head_module.get(head), norm=fam.norm, inputs=fam.inputs,
                    evaluation=EVALUATION[head], layouts=layouts, roles=roles, table=fam)
