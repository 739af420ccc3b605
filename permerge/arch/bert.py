"""The BERT-family adapter: the one place that knows BERT's weight names.

An architecture is described as data (in the style of git-re-basin's PermutationSpec):

* ``groups``: every set of hidden units a single permutation acts on, with where its features are
  captured (a module name, and whether its input or output is the feature);
* ``axes``: for every permuted parameter, a tuple naming the group acting on each axis (``None``
  for an axis that is not permuted).

The residual stream is described point by point (``res.emb``, ``res.<l>.att``, ``res.<l>.ff``).
A function-preserving residual variant gives every point the same permutation; the
non-preserving "Separate" variant gives each point its own.  Nothing outside this module spells
out a BERT weight name.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Group:
    name: str  # "ff.0", "att.0", "res.emb", "res.0.att", "res.0.ff", "pooler"
    kind: str  # "ff" | "att" | "res" | "pooler"
    size: int
    capture: str  # module name whose input or output is the feature
    capture_io: str  # "input" | "output"
    layer: int | None = None
    heads: int | None = None  # attention groups: number of heads (units are head-major)
    per_sentence: bool = False  # pooler: one row per sentence instead of one per token


@dataclass(frozen=True)
class ArchSpec:
    family: str
    head: str  # "mlm" | "classifier" | "base"
    num_layers: int
    hidden: int
    heads: int
    intermediate: int
    groups: dict[str, Group]
    axes: dict[str, tuple]  # parameter name -> group name (or None) per axis
    residual_points: tuple[str, ...] = field(default=())
    mlm_head: str | None = None  # module mapping encoder states to vocabulary logits (MLMs)

    def groups_of(self, kind: str) -> list[Group]:
        return [g for g in self.groups.values() if g.kind == kind]

    def params_of(self, group: str) -> list[tuple[str, int]]:
        """(parameter name, axis) pairs that the group permutes: what the UI shows as 'touches'."""
        return [(p, ax) for p, axes in self.axes.items() for ax, g in enumerate(axes) if g == group]


# --- tiny helpers that spell one layer type each -------------------------------------------------

def _dense(name: str, out_g, in_g) -> dict[str, tuple]:
    return {f"{name}.weight": (out_g, in_g), f"{name}.bias": (out_g,)}


def _norm(name: str, g) -> dict[str, tuple]:
    return {f"{name}.weight": (g,), f"{name}.bias": (g,)}


def _embedding(name: str, g) -> dict[str, tuple]:
    return {f"{name}.weight": (None, g)}


def _head_of(model) -> str:
    names = {n for n, _ in model.named_modules()}
    if "cls.predictions.decoder" in names:
        return "mlm"
    if "classifier" in names:
        return "classifier"
    return "base"


def bert_spec(model) -> ArchSpec:
    """Describe a BertModel / BertForMaskedLM / BertForSequenceClassification as an ArchSpec."""
    cfg = model.config
    p = "bert." if hasattr(model, "bert") else ""
    head = _head_of(model)
    L, d, H, d_ff = cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size
    has_pooler = getattr(model.base_model, "pooler", None) is not None

    groups: dict[str, Group] = {}
    axes: dict[str, tuple] = {}
    res_points = ["res.emb"]
    groups["res.emb"] = Group("res.emb", "res", d, f"{p}embeddings.LayerNorm", "output")
    axes.update(_embedding(f"{p}embeddings.word_embeddings", "res.emb"))
    axes.update(_embedding(f"{p}embeddings.position_embeddings", "res.emb"))
    axes.update(_embedding(f"{p}embeddings.token_type_embeddings", "res.emb"))
    axes.update(_norm(f"{p}embeddings.LayerNorm", "res.emb"))

    prev = "res.emb"
    for l in range(L):
        lp = f"{p}encoder.layer.{l}"
        att, ff, r_att, r_ff = f"att.{l}", f"ff.{l}", f"res.{l}.att", f"res.{l}.ff"
        groups[att] = Group(att, "att", d, f"{lp}.attention.output.dense", "input", layer=l, heads=H)
        groups[ff] = Group(ff, "ff", d_ff, f"{lp}.output.dense", "input", layer=l)
        groups[r_att] = Group(r_att, "res", d, f"{lp}.attention.output.LayerNorm", "output", layer=l)
        groups[r_ff] = Group(r_ff, "res", d, f"{lp}.output.LayerNorm", "output", layer=l)
        res_points += [r_att, r_ff]
        for qkv in ("query", "key", "value"):
            axes.update(_dense(f"{lp}.attention.self.{qkv}", att, prev))
        axes.update(_dense(f"{lp}.attention.output.dense", r_att, att))
        axes.update(_norm(f"{lp}.attention.output.LayerNorm", r_att))
        axes.update(_dense(f"{lp}.intermediate.dense", ff, r_att))
        axes.update(_dense(f"{lp}.output.dense", r_ff, ff))
        axes.update(_norm(f"{lp}.output.LayerNorm", r_ff))
        prev = r_ff
    last = prev

    params = dict(model.named_parameters())  # tied weights appear once
    if head == "mlm":
        tied = "cls.predictions.decoder.weight" not in params
        # The transform's output space meets the decoder, whose columns are the word embedding's
        # when tied: it takes the embedding point's permutation then (identical for every
        # function-preserving variant). Forgetting this transform is the public code's bug.
        out_g = "res.emb" if tied else last
        axes.update(_dense("cls.predictions.transform.dense", out_g, last))
        axes.update(_norm("cls.predictions.transform.LayerNorm", out_g))
        if not tied:
            axes["cls.predictions.decoder.weight"] = (None, out_g)
    if has_pooler:
        pooler_g = "pooler" if head == "classifier" else None
        axes.update(_dense(f"{p}pooler.dense", pooler_g, last))
        if head == "classifier":
            groups["pooler"] = Group("pooler", "pooler", d, f"{p}pooler", "output", per_sentence=True)
            axes["classifier.weight"] = (None, "pooler")

    missing = [n for n in axes if n not in params]
    if missing:
        raise ValueError(f"unexpected BERT layout: parameter {missing[0]} not found in the model")
    return ArchSpec("bert", head, L, d, H, d_ff, groups, axes, tuple(res_points),
                    mlm_head="cls" if head == "mlm" else None)
