"""Optional dependencies: the ``dashboard`` extra (streamlit, plotly, kaleido) and the ``test``
extra (pytest, selenium).  The library, ``align``, ``interpolate`` and ``zoo`` need neither."""
from __future__ import annotations

import importlib

from .errors import PermergeError

EXTRAS = {"dashboard": ("streamlit", "plotly", "kaleido"), "test": ("pytest", "selenium")}


class MissingExtra(PermergeError, ImportError):
    """A feature was used whose optional dependencies are not installed."""


def missing(feature: str, module: str, extra: str) -> MissingExtra:
    return MissingExtra(f"{feature} needs {module}, which comes with the {extra} extra: "
                        f"pip install 'permerge[{extra}]'")


def require(feature: str, extra: str, modules: tuple[str, ...] | None = None) -> None:
    """Import ``modules`` (default: the extra's required ones); MissingExtra naming the extra when
    one is not installed."""
    for module in modules or EXTRAS[extra]:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise missing(feature, module, extra) from e
