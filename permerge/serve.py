"""``permerge dashboard``: start the Streamlit dashboard on the bundled checkpoints.

The same server as ``make run``: it listens on 127.0.0.1 unless told otherwise, and its WebSocket
accepts only ``Host`` headers naming 127.0.0.1, localhost, the bound address or a name given with
``--allowed-host`` (Streamlit's ``server.allowedHosts``), so a page that rebinds its DNS name to this
machine cannot drive it.  Every setting of the checkout's ``.streamlit/config.toml`` is passed on the
command line, so an installed package, run from any folder, behaves the same.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import PermergeError

LOOPBACK_NAMES = ("127.0.0.1", "localhost")


def streamlit_argv(app: Path, host: str = "127.0.0.1", port: int = 8501, allowed_hosts=()) -> list[str]:
    """The ``python -m streamlit run`` command line for ``app``."""
    hosts = sorted({*LOOPBACK_NAMES, host, *allowed_hosts})
    browser = host if host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    argv = [sys.executable, "-m", "streamlit", "run", str(app),
            "--server.address", host, "--server.port", str(port), "--server.headless", "true",
            "--server.fileWatcherType", "none", "--server.enableCORS", "true",
            "--server.enableXsrfProtection", "true", "--browser.gatherUsageStats", "false",
            "--browser.serverAddress", browser, "--client.toolbarMode", "minimal"]
    for h in hosts:
        argv += ["--server.allowedHosts", h]
    return argv


def prepare(host: str, port: int, allowed_hosts=()) -> tuple[list[str], dict]:
    """Check what the dashboard needs (the extra, the app, the bundled checkpoints) and return the
    command line and environment that start it; PermergeError with one line otherwise."""
    from . import zoo
    from .extras import require
    from .locations import app_script

    if not 0 < port < 65536:
        raise PermergeError(f"argument --port: must lie in 1..65535, got {port}")
    if not host:
        raise PermergeError("argument --host: must not be empty")
    require("the dashboard", "dashboard", ("streamlit", "plotly"))
    app = app_script()
    if app is None:
        raise PermergeError("the dashboard's app.py is missing from this installation: reinstall permerge "
                            "(`pip install 'permerge[dashboard]'`) or run it from a clone of the repository")
    root = zoo.require()
    env = {**os.environ, zoo.ENV_VAR: str(root)}
    return streamlit_argv(app, host, port, allowed_hosts), env


def run(host: str = "127.0.0.1", port: int = 8501, allowed_hosts=()) -> int:
    """Replace this process with the Streamlit server (signals then reach it directly)."""
    argv, env = prepare(host, port, allowed_hosts)
    from . import zoo

    print(f"permerge dashboard on http://{host}:{port} (bundled checkpoints: {zoo.ZOO_DIR}); Ctrl-C stops it",
          file=sys.stderr, flush=True)
    sys.stdout.flush()
    if os.name == "posix":
        os.execve(argv[0], argv, env)
    import subprocess  # no exec on Windows: wait for the child instead

    return subprocess.call(argv, env=env)
