"""permerge as a Python package: declared dependencies and extras, the `permerge` command, the
bundled checkpoints located outside the package, and a wheel that installs and runs.

The wheel test (marked slow) builds the wheel from a copy of the tree, installs it into a fresh
virtual environment offline and runs the installed command from a folder outside the checkout.
The fresh environment sees the locked dependencies of the environment running the tests (one
path line in a .pth file, like --system-site-packages), so pip must find every declared
dependency and extra satisfied by requirements.txt's pins: a range that excludes a pinned version
makes the offline install fail instead of downloading another torch.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import time
import tomllib
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, free_port, upgrade_status
from dashboard.figures import PLOTLY_PRELOAD
from permerge import zoo

ZOO = ROOT / "permerge" / "zoo"
DASHBOARD_MODULES = ("streamlit", "plotly", "kaleido")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
ENV.pop(zoo.ENV_VAR, None)


def _blocker(folder: Path) -> Path:
    """A folder that, first on PYTHONPATH, makes the dashboard's modules uninstalled."""
    for name in DASHBOARD_MODULES:
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed (test stub)')\n")
    return folder


# --- pyproject.toml against the lock ----------------------------------------------------------------

def _lock() -> dict:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def test_pyproject_declares_the_lock_as_ranges():
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"core": project.get("dependencies", []), **project.get("optional-dependencies", {})}
    assert set(groups) == {"core", "dashboard", "test"}
    declared = {}
    for group, reqs in groups.items():
        for r in map(Requirement, reqs):
            assert r.name.lower() not in declared, f"{r.name} declared twice"
            declared[r.name.lower()] = (group, r.specifier)
    pins = _lock()
    assert set(declared) == set(pins), "pyproject.toml and requirements.txt name different packages"
    for name, version in pins.items():
        group, spec = declared[name]
        assert spec.contains(version), f"{name}=={version} (requirements.txt) is outside {spec}"
        assert any(s.operator == ">=" and s.version == version for s in spec), f"{name}: the floor must be {version}"
        assert any(s.operator == "<" for s in spec), f"{name}: give an upper bound (a compatible range)"
    assert {n for n, (g, _) in declared.items() if g == "dashboard"} == set(DASHBOARD_MODULES)
    assert {n for n, (g, _) in declared.items() if g == "test"} == {"pytest", "selenium"}
    assert declared["torch"][1].contains("2.13.0+cpu")  # the CPU build on the project's machines
    assert project["scripts"] == {"permerge": "permerge.cli:main"}
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert not any("checkpoints" in p or "data" in p or "**" in p for pats in package_data.values() for p in pats)


# --- the library and the CLI without the dashboard's modules ----------------------------------------

def test_core_paths_need_no_dashboard_modules(tiny_mlm_pair, tmp_path):
    """import permerge, align, interpolate and zoo list attempt no import of streamlit, plotly or
    kaleido; without them, permerge.plots and `permerge dashboard` name the extra to install."""
    a, b, text = tiny_mlm_pair
    script = textwrap.dedent(f"""
        import sys
        attempts = []
        class Record:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {DASHBOARD_MODULES!r}:
                    attempts.append(name)
                return None
        sys.meta_path.insert(0, Record())
        import permerge, permerge.pipeline, permerge.study, permerge.work, permerge.views
        from permerge.cli import main
        common = [{str(a)!r}, {str(b)!r}, "--data", {str(text)!r}, "--tokens", "512", "--eval-blocks", "2",
                  "--no-cache", "--quiet", "--device", "cpu"]
        assert main(["align", *common, "--out", {str(tmp_path / "al")!r}]) == 0
        assert main(["interpolate", *common, "--lambdas", "3", "--out", {str(tmp_path / "ip")!r}]) == 0
        assert main(["zoo", "list"]) == 0
        print("ATTEMPTS", sorted(set(attempts)))
    """)
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env={**ENV, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ATTEMPTS []" in r.stdout, r.stdout
    assert (tmp_path / "al" / "report.json").is_file() and (tmp_path / "ip" / "curve.csv").is_file()

    blocked = {**ENV, "PYTHONPATH": os.pathsep.join([str(_blocker(tmp_path / "block")), str(ROOT)])}
    r = subprocess.run([sys.executable, "-c", "import permerge.plots"], cwd=tmp_path, env=blocked,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "permerge.plots needs plotly" in r.stderr and "pip install 'permerge[dashboard]'" in r.stderr
    r = subprocess.run([sys.executable, "-m", "permerge", "dashboard"], cwd=tmp_path, env=blocked,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == ("error: the dashboard needs streamlit, which comes with the dashboard extra: "
                                "pip install 'permerge[dashboard]'"), r.stderr


# --- locating the bundled checkpoints ---------------------------------------------------------------

@pytest.fixture
def restore_zoo(monkeypatch):
    """The CLI's --zoo moves the module's folders: put them back after the test."""
    for name in ("ZOO_DIR", "CHECKPOINTS_DIR", "DATA_DIR", "TASKS_DIR", "_SOURCE"):
        monkeypatch.setattr(zoo, name, getattr(zoo, name))


def _small_zoo(folder: Path, names=zoo.DEFAULT_PAIR) -> Path:
    """A zoo folder with the descriptions (no weights) of two bundled checkpoints and a data file."""
    (folder / "data").mkdir(parents=True)
    for n in names:
        (folder / "checkpoints" / n).mkdir(parents=True)
        for f in ("config.json", "permerge.json"):
            shutil.copy(ZOO / "checkpoints" / n / f, folder / "checkpoints" / n / f)
    (folder / "data" / "align.txt").write_text("a few words\n")
    return folder


def test_zoo_found_from_option_environment_or_checkout(tmp_path, capsys, restore_zoo):
    from permerge.cli import main

    small = _small_zoo(tmp_path / "small")
    # the checkout's own folder by default
    assert zoo.ZOO_DIR == ZOO and zoo.require() == ZOO
    assert zoo.resolve(f"zoo:{zoo.DEFAULT_PAIR[0]}") == str(ZOO / "checkpoints" / zoo.DEFAULT_PAIR[0])
    assert zoo.resolve("zoo:align.txt") == str(ZOO / "data" / "align.txt")
    assert zoo.resolve("plain/path") == "plain/path"
    # --zoo DIR
    assert main(["zoo", "list", "--json", "--zoo", str(small)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["name"] for e in listed] == list(zoo.DEFAULT_PAIR)
    assert all(e["path"].startswith(str(small)) for e in listed)
    assert zoo.resolve("zoo:align.txt") == str(small / "data" / "align.txt")
    # $PERMERGE_ZOO, read by a new process
    r = subprocess.run([sys.executable, "-m", "permerge", "zoo", "list", "--json"], cwd=tmp_path,
                       env={**ENV, "PYTHONPATH": str(ROOT), zoo.ENV_VAR: str(small)}, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert [e["name"] for e in json.loads(r.stdout)] == list(zoo.DEFAULT_PAIR)


def test_zoo_errors_say_how_to_get_the_checkpoints(tmp_path, capsys, restore_zoo, monkeypatch):
    from permerge.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    how = "clone the permerge repository and pass --zoo CLONE/permerge/zoo (or set PERMERGE_ZOO to it), " \
          "or build them with `permerge zoo build --out DIR`"
    cases = [
        (["zoo", "list", "--zoo", str(tmp_path / "nope")], f"error: --zoo {tmp_path / 'nope'}: no such folder; {how}"),
        (["zoo", "list", "--zoo", str(empty)],
         f"error: --zoo {empty}: no bundled checkpoints there (no checkpoints/NAME/permerge.json); {how}"),
        (["align", "zoo:mlm-seed1", "zoo:mlm-seed2", "--data", "zoo:align.txt", "--out", str(tmp_path / "o"),
          "--zoo", str(empty)], None),
        (["dashboard", "--zoo", str(empty)], None),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and how in err, err
        if message:
            assert err == message
    assert not (tmp_path / "o").exists()
    # an installed package (no checkpoints beside the code, nothing named): say they are not in it
    monkeypatch.setattr(zoo, "ZOO_DIR", empty)
    monkeypatch.setattr(zoo, "CHECKPOINTS_DIR", empty / "checkpoints")
    monkeypatch.setattr(zoo, "_SOURCE", None)
    assert main(["zoo", "list"]) == 2
    assert capsys.readouterr().err.strip() == ("error: no bundled checkpoints: they are repository data, not part "
                                               f"of the installed package; {how}")
    # an unknown zoo: name lists what there is
    small = _small_zoo(tmp_path / "small")
    assert main(["align", "zoo:mlm-seed9", "zoo:mlm-seed2", "--data", "zoo:align.txt", "--zoo", str(small),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: no bundled checkpoint or data file 'zoo:mlm-seed9' in {small} (checkpoints: "
                          f"{', '.join(zoo.DEFAULT_PAIR)};"), err


# --- the dashboard command --------------------------------------------------------------------------

def test_dashboard_command_line_listens_locally_and_restricts_hosts():
    from permerge import locations, serve

    assert locations.checkout_root() == ROOT and locations.app_script() == ROOT / "app.py"
    cache = os.environ.get("PERMERGE_CACHE")
    assert locations.default_cache_dir() == (Path(cache) if cache else ROOT / "cache")

    def opts(argv):
        pairs = {}
        for k, v in zip(argv[5::2], argv[6::2]):
            pairs.setdefault(k, []).append(v)
        return pairs

    argv = serve.streamlit_argv(ROOT / "app.py")
    assert argv[:5] == [sys.executable, "-c", serve._LAUNCHER, "run", str(ROOT / "app.py")]
    o = opts(argv)
    assert o["--server.address"] == ["127.0.0.1"] and o["--server.port"] == ["8501"]
    assert o["--server.allowedHosts"] == ["127.0.0.1", "localhost"]
    assert o["--server.fileWatcherType"] == ["none"] and o["--browser.gatherUsageStats"] == ["false"]
    o = opts(serve.streamlit_argv(ROOT / "app.py", "0.0.0.0", 8600, ["box.lan"]))
    assert o["--server.address"] == ["0.0.0.0"] and o["--server.port"] == ["8600"]
    assert o["--server.allowedHosts"] == ["0.0.0.0", "127.0.0.1", "box.lan", "localhost"]


def _serve_and_check(argv, cwd, env, port):
    """Start `permerge dashboard` (argv), wait until it answers, check the Host rule, stop it."""
    log = Path(cwd) / f"dashboard-{port}.log"
    with open(log, "w") as fh:
        p = subprocess.Popen(argv, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        t0 = time.time()
        while True:
            try:
                status = upgrade_status(port, f"127.0.0.1:{port}")
                break
            except OSError:
                assert p.poll() is None, f"the dashboard exited: {log.read_text()[-2000:]}"
                assert time.time() - t0 < 120, "the dashboard did not start"
                time.sleep(0.3)
        assert " 101 " in status, status
        assert " 101 " in upgrade_status(port, f"localhost:{port}")
        assert " 101 " not in upgrade_status(port, f"evil.example:{port}")
    finally:
        p.terminate()
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@pytest.mark.slow
def test_dashboard_command_from_the_checkout(tmp_path):
    pytest.importorskip("streamlit")
    port = free_port()
    _serve_and_check([sys.executable, "-m", "permerge", "dashboard", "--port", str(port)], tmp_path,
                     {**ENV, "PYTHONPATH": str(ROOT), "PERMERGE_CACHE": str(tmp_path / "cache")}, port)


# --- the wheel --------------------------------------------------------------------------------------

IGNORED = shutil.ignore_patterns(".git", ".venv", "venv", "cache", "build", "artifacts", "tmp", "__pycache__",
                                 "*.egg-info", ".pytest_cache", "*.tmp", "*.old")


@pytest.mark.slow
def test_wheel_builds_small_installs_offline_and_runs(tmp_path):
    pytest.importorskip("streamlit")
    # build from a copy of the tree, checkpoints included, so the build cannot write into the checkout
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=IGNORED, symlinks=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    r = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp_path / "wh"),
                        str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (wheel,) = (tmp_path / "wh").glob("permerge-*.whl")
    assert wheel.stat().st_size < 2 * 2**20, f"wheel of {wheel.stat().st_size} bytes"
    names = set(zipfile.ZipFile(wheel).namelist())
    assert not [n for n in names if n.startswith(("permerge/zoo/checkpoints/", "permerge/zoo/data/"))]
    code = {f"permerge/{p.relative_to(ROOT / 'permerge').as_posix()}" for p in (ROOT / "permerge").rglob("*.py")}
    code.add("permerge/catalogue.json")  # data the hub commands read
    app = {f"permerge/_app/{p.relative_to(ROOT).as_posix()}" for p in
           [ROOT / "app.py", *(ROOT / "pages").glob("*.py"), *(ROOT / "dashboard").glob("*.py"),
            *(ROOT / "docs" / "figures").glob("*")]}
    assert not (code | app) - names, f"missing from the wheel: {sorted((code | app) - names)}"

    # a fresh environment that sees the lock's packages, and the wheel with both extras, offline
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    lock_sites = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "_permerge_lock.pth").write_text("".join(f"{p}\n" for p in lock_sites))
    r = subprocess.run([*pip, "--python", str(py), "install", "--no-index", f"{wheel}[dashboard,test]"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    installed = re.findall(r"^Installing collected packages: (.*)$", r.stdout, re.M)
    assert installed == ["permerge"], r.stdout[-3000:]  # every dependency and extra satisfied by the lock

    # from a folder outside the checkout, without the dashboard's modules
    work = tmp_path / "elsewhere"
    work.mkdir()
    exe = str(venv / "bin" / "permerge")
    env = {**ENV, "PYTHONPATH": str(_blocker(tmp_path / "block")), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    env.pop("PERMERGE_CACHE", None)

    def run(*argv, **extra):
        return subprocess.run([exe, *argv], cwd=work, env={**env, **extra}, capture_output=True, text=True,
                              timeout=300)

    r = subprocess.run([str(py), "-c", "import permerge, permerge.locations as L; print(permerge.__file__); "
                        "print(L.checkout_root()); print(L.app_script())"], cwd=work, env=env,
                       capture_output=True, text=True, timeout=120)
    file_, root, app_py = r.stdout.split("\n")[:3]
    assert file_ == str(site / "permerge" / "__init__.py") and root == "None"
    assert app_py == str(site / "permerge" / "_app" / "app.py")
    r = run("--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: permerge ") and "dashboard" in r.stdout
    r = run("zoo", "list")
    assert r.returncode == 2 and "not part of the installed package" in r.stderr and "permerge zoo build" in r.stderr
    r = run("zoo", "list", "--zoo", str(ZOO))
    assert r.returncode == 0 and all(n in r.stdout for n in zoo.DEFAULT_PAIR), r.stderr
    r = run("hub", "list", "multiberts")  # the catalogue is data of the package
    assert r.returncode == 0 and "google/multiberts-seed_{seed}" in r.stdout, r.stderr
    r = run("zoo", "list", "--json", PERMERGE_ZOO=str(ZOO))
    assert r.returncode == 0 and {e["name"] for e in json.loads(r.stdout)} >= set(zoo.DEFAULT_PAIR), r.stderr
    a, b = (f"zoo:{n}" for n in zoo.DEFAULT_PAIR)
    r = run("align", a, b, "--data", "zoo:align.txt", "--tokens", "2048", "--eval-blocks", "1", "--quiet",
            "--device", "cpu", "--out", "aligned", PERMERGE_ZOO=str(ZOO))
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((work / "aligned" / "report.json").read_text())
    assert report["equivalent"] is True and report["data"]["tokens"] >= 2048
    assert (work / "aligned" / "permutations.safetensors").is_file()
    assert (tmp_path / "xdg" / "permerge").is_dir() and not (site / "cache").exists()  # the user's cache folder
    r = run("dashboard", "--zoo", str(ZOO))
    assert r.returncode == 2 and "pip install 'permerge[dashboard]'" in r.stderr, r.stderr

    # the dashboard from the wheel: the server with its Host rule, and the shipped Start page
    env.pop("PYTHONPATH")
    port = free_port()
    _serve_and_check([exe, "dashboard", "--port", str(port), "--zoo", str(ZOO)], work, env, port)
    script = textwrap.dedent(f"""
        import sys
        from permerge.locations import app_script
        app = app_script()
        sys.path.insert(0, str(app.parent))  # as `streamlit run` does for the script's folder
        from streamlit.testing.v1 import AppTest
        at = AppTest.from_file(str(app), default_timeout=120).run()
        assert not at.exception, [e.value for e in at.exception]
        charts = [c for c in at.get("plotly_chart") if not c.proto.id.endswith("{PLOTLY_PRELOAD}_chart")]
        print("TITLE", at.title[0].value, len(charts))
    """)
    r = subprocess.run([str(py), "-c", script], cwd=work, env={**env, "PERMERGE_ZOO": str(ZOO)},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "TITLE Start here 1" in r.stdout, r.stdout
