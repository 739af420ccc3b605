"""Where permerge's own files are, in a source checkout and in an installed package.

A checkout (the repository, with or without an editable install) keeps its result cache in
``cache/`` beside the code and runs the dashboard from its own ``app.py``; an installed package
keeps the cache in the user's cache folder and runs the copy of the dashboard it ships in
``permerge/_app/``.  The bundled checkpoints are located by ``permerge.zoo``.
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
APP_COPY = PACKAGE_DIR / "_app"  # app.py, pages/, dashboard/ and docs/figures/ inside a built package


def checkout_root() -> Path | None:
    """The repository folder when this package runs from a source checkout, else None."""
    root = PACKAGE_DIR.parent
    if (root / "pyproject.toml").is_file() and (root / "app.py").is_file() and (root / "pages").is_dir():
        return root
    return None


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/permerge`` (``~/.cache/permerge`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "permerge"


def default_cache_dir() -> Path:
    """``$PERMERGE_CACHE``; else ``cache/`` of the checkout; else the user's cache folder."""
    env = os.environ.get("PERMERGE_CACHE")
    if env:
        return Path(env)
    root = checkout_root()
    return root / "cache" if root is not None else user_cache_dir()


def exports_dir() -> Path:
    """Where the dashboard's Export page writes: ``exports`` in the result cache folder
    (``$PERMERGE_CACHE``, else ``cache/`` of the checkout, else the user's cache folder)."""
    return default_cache_dir() / "exports"


def app_script() -> Path | None:
    """The dashboard's ``app.py``: the checkout's own, else the copy shipped in the package; None
    when neither is there."""
    root = checkout_root()
    for script in ((root / "app.py") if root is not None else None, APP_COPY / "app.py"):
        if script is not None and script.is_file():
            return script
    return None
