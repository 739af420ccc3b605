"""Architecture adapters. ``spec_for(model)`` is the only entry point the rest of permerge uses."""
from .bert import ArchSpec, Group, bert_spec

SUPPORTED_MODEL_TYPES = {"bert": bert_spec}


def spec_for(model) -> ArchSpec:
    mt = getattr(model.config, "model_type", None)
    if mt not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"unsupported model type {mt!r}: permerge supports {sorted(SUPPORTED_MODEL_TYPES)}")
    return SUPPORTED_MODEL_TYPES[mt](model)


__all__ = ["ArchSpec", "Group", "spec_for", "SUPPORTED_MODEL_TYPES"]
