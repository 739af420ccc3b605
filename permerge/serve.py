"""``permerge dashboard``: start the Streamlit dashboard on the bundled checkpoints.

The same server as ``make run``: it listens on 127.0.0.1 unless told otherwise, and its WebSocket
accepts only ``Host`` headers naming 127.0.0.1, localhost, the bound address or a name given with
``--allowed-host`` (Streamlit's ``server.allowedHosts``), so a page that rebinds its DNS name to this
machine cannot drive it.  Every setting of the checkout's ``.streamlit/config.toml`` is passed on the
command line, so an installed package, run from any folder, behaves the same.

The server never connects outside: Streamlit looks up this machine's external address (an HTTP
request to checkip.amazonaws.com) and its network address (a socket towards 8.8.8.8) to print URLs
and whenever a WebSocket arrives from an origin it does not know.  No setting turns that off, so
the server is started through ``OFFLINE_PATCH``, which replaces both look-ups by "unknown" before
Streamlit starts (``app.py`` applies the same patch for ``streamlit run app.py``); the origins of
``--allowed-host`` names are allowed explicitly instead.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import PermergeError

LOOPBACK_NAMES = ("127.0.0.1", "localhost")
ANY_ADDRESS = ("0.0.0.0", "::", "")
# Run before Streamlit: its address look-ups answer "unknown" instead of asking the network.
OFFLINE_PATCH = ("from streamlit import net_util as _n\n"
                 "_n.get_external_ip = lambda: None\n"
                 "_n.get_internal_ip = lambda: None\n")
_LAUNCHER = OFFLINE_PATCH + ("import sys\n"
                             "from streamlit.web import cli\n"
                             "sys.argv = ['streamlit', *sys.argv[1:]]\n"
                             "sys.exit(cli.main(prog_name='streamlit'))\n")


def streamlit_argv(app: Path, host: str = "127.0.0.1", port: int = 8501, allowed_hosts=()) -> list[str]:
    """The ``python -m streamlit run`` command line for ``app``."""
    hosts = sorted({*LOOPBACK_NAMES, host, *allowed_hosts})
    browser = host if host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    argv = [sys.executable, "-c", _LAUNCHER, "run", str(app),
            "--server.address", host, "--server.port", str(port), "--server.headless", "true",
            "--server.fileWatcherType", "none", "--server.enableCORS", "true",
            "--server.enableXsrfProtection", "true", "--browser.gatherUsageStats", "false",
            "--browser.serverAddress", browser, "--client.toolbarMode", "minimal",
            "--runner.postScriptGC", "false"]
    for h in hosts:
        argv += ["--server.allowedHosts", h]
    for h in sorted(set(allowed_hosts) - set(LOOPBACK_NAMES)):  # the WebSocket's Origin check
        argv += ["--server.corsAllowedOrigins", f"http://{h}:{port}", "--server.corsAllowedOrigins", f"https://{h}:{port}"]
    return argv


def lan_hint(host: str, port: int, allowed_hosts=()) -> str | None:
    """For a server on every address without ``--allowed-host``: the exact command that lets the
    other machines' browsers in (the page loads for them, but its WebSocket is refused)."""
    if host not in ANY_ADDRESS or set(allowed_hosts) - set(LOOPBACK_NAMES):
        return None
    import socket

    name = socket.gethostname() or "NAME"  # this machine's own name: no network look-up
    return (f"note: other machines' browsers are refused until you name the address they use; restart with "
            f"`permerge dashboard --host {host} --port {port} --allowed-host {name}` (or --allowed-host with this "
            "machine's IP address or DNS name)")


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
    hint = lan_hint(host, port, allowed_hosts)
    if hint:
        print(hint, file=sys.stderr, flush=True)
    sys.stdout.flush()
    if os.name == "posix":
        os.execve(argv[0], argv, env)
    import subprocess  # no exec on Windows: wait for the child instead

    return subprocess.call(argv, env=env)
