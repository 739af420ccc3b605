"""Architecture tables. ``spec_for(model)`` and ``family_for(config)`` are the entry points the rest
of permerge uses.  A family is one module in this package holding a ``Family`` table (see spec.py);
every such module is found here, so adding a family adds its file and nothing else."""
import importlib
import pkgutil

from .spec import ArchSpec, Family, Group, build_spec


def _discover() -> tuple[Family, ...]:
    found: dict[str, Family] = {}
    for mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        if mod == "spec":
            continue
        module = importlib.import_module(f"{__name__}.{mod}")
        for value in vars(module).values():
            if isinstance(value, Family):
                found.setdefault(value.name, value)
    return tuple(sorted(found.values(), key=lambda f: (f.name != "bert", f.name)))


FAMILIES: tuple[Family, ...] = _discover()
SUPPORTED_MODEL_TYPES = {mt: fam for fam in FAMILIES for mt in fam.model_types}


def family_for(config) -> Family:
    mt = getattr(config, "model_type", None)
    if mt not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"unsupported model type {mt!r}: permerge supports {sorted(SUPPORTED_MODEL_TYPES)}")
    return SUPPORTED_MODEL_TYPES[mt]


def spec_for(model) -> ArchSpec:
    return build_spec(family_for(model.config), model)


__all__ = ["ArchSpec", "Family", "Group", "spec_for", "family_for", "FAMILIES",
           "SUPPORTED_MODEL_TYPES"]
