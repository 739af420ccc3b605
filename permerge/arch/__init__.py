"""Architecture tables. ``spec_for(model)`` and ``family_for(config)`` are the entry points the rest
of permerge uses; a family is one table in this package, listed in ``FAMILIES``."""
from .bert import BERT
from .distilbert import DISTILBERT
from .gpt2 import GPT2
from .roberta import ROBERTA
from .spec import ArchSpec, Family, Group, build_spec

FAMILIES: tuple[Family, ...] = (BERT, ROBERTA, DISTILBERT, GPT2)
SUPPORTED_MODEL_TYPES = {mt: fam for fam in FAMILIES for mt in fam.model_types}


def family_for(config) -> Family:
    mt = getattr(config, "model_type", None)
    if mt not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"unsupported model type {mt!r}: permerge supports {sorted(SUPPORTED_MODEL_TYPES)}")
    return SUPPORTED_MODEL_TYPES[mt]


def spec_for(model) -> ArchSpec:
    return build_spec(family_for(model.config), model)


def supported_classes() -> tuple[str, ...]:
    return tuple(c for fam in FAMILIES for c in fam.classes)


__all__ = ["ArchSpec", "Family", "Group", "spec_for", "family_for", "supported_classes", "FAMILIES",
           "SUPPORTED_MODEL_TYPES"]
