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


class LayoutError(CheckpointError, ValueError):
    """The model's weights do not match its family's table."""


@dataclass(frozen=True)
class Capture:
    template: str  # module name template
    io: str = "output"  # "input" | "output"


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
        return [(p, ax) for p, axes in self.axes.items() for ax, g in enumerate(axes) if axis_group(g) == group]

    def axis_label(self, name: str, axis: int) -> str:
        """How a permutation moves this axis: "rows", "columns" or "entries" (of the stored tensor),
        "... (k tiles)" when it is tiled."""
        a = self.axes[name][axis]
        if len(self.axes[name]) == 1:
            word = "entries"
        else:
            word = "rows" if axis == 0 else "columns"
        return f"{word} ({a[1]} tiles)" if isinstance(a, tuple) else word

    def model_inputs(self, batch: dict) -> dict:
        """The entries of a batch that the model takes."""
        return {k: v for k, v in batch.items() if k in self.inputs}


def axis_group(entry):
    """The group name of an axis entry (a name, ``(name, tiles)`` or None)."""
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
        groups[att] = Group(att, "att", d, *cap("att", l), layer=l, heads=H)
        groups[ff] = Group(ff, "ff", d_ff, *cap("ff", l), layer=l)
        groups[r_att] = Group(r_att, "res", d, *cap("res.att", l), layer=l)
        groups[r_ff] = Group(r_ff, "res", d, *cap("res.ff", l), layer=l)
        res_points += [r_att, r_ff]
        add(fam.layer, l, {"in": prev, "att": att, "ff": ff, "res.att": r_att, "res.ff": r_ff})
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
