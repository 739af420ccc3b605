"""Output folders, written safely; shared by the CLI's ``--out`` and the dashboard's Export page.

* ``check_out`` runs before any compute: it refuses a target that is ``/``, the home or working
  folder (or one of their parents), that contains or lies inside an input (checkpoints, data,
  evaluation data, the cache), a non-empty folder without ``--overwrite``, a folder that permerge
  did not write (no marker file), and a location that cannot be written (read-only mount, no
  space left).
* ``staged`` writes into a hidden temporary sibling and renames it into place only when complete;
  a replaced folder is renamed aside first and removed after the rename succeeded.  The rules on
  an existing folder are checked again at that moment (a folder may appear during a long run):
  a non-empty one is replaced only with ``overwrite`` and the marker file, otherwise the results
  stay in the temporary folder and the error says where.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError

MARKER = ".permerge-output"  # present in every folder permerge writes; --overwrite needs it
_MARKER_HEAD = "written by permerge; `--overwrite` may replace this folder; its entries:"
# What a folder written before markers listed their entries can hold: the command line's outputs
# and the files of save_pretrained (the Export page).
_LEGACY_ENTRIES = re.compile(r"model|permutations\.safetensors|report\.json|curve\.csv|barrier\.json|config\.json|"
                             r"generation_config\.json|model(-\d+-of-\d+)?\.safetensors(\.index\.json)?|tokenizer.*|"
                             r"vocab\.(txt|json)|merges\.txt|special_tokens_map\.json|added_tokens\.json|"
                             r"spiece\.model|sentencepiece\.bpe\.model|chat_template.*")


def written_entries(folder: Path) -> set[str] | None:
    """The entries permerge wrote into ``folder`` according to its marker (None: no marker)."""
    try:
        text = (folder / MARKER).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    lines = [x.strip() for x in text.splitlines()]
    if lines and lines[0] == _MARKER_HEAD:
        return {x for x in lines[1:] if x}
    return {p.name for p in folder.iterdir() if _LEGACY_ENTRIES.fullmatch(p.name)}


def foreign_entries(folder: Path) -> list[str]:
    """Entries of a permerge output folder that permerge did not write (the user's own files)."""
    mine = written_entries(folder) or set()
    return sorted(p.name + ("/" if p.is_dir() and not p.is_symlink() else "") for p in folder.iterdir()
                  if p.name != MARKER and p.name not in mine)


def _foreign_message(raw, folder: Path) -> str | None:
    extra = foreign_entries(folder)
    if not extra:
        return None
    shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
    return (f"refusing to replace {raw}: it holds entries permerge did not write ({shown}); "
            "move them out or choose another folder")
_PROBE_BYTES = 64 * 1024


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_out(out: str | os.PathLike, overwrite: bool = False, inputs: dict | None = None,
              cache_dir: str | os.PathLike | None = None, need_bytes: int = 0, what: str = "--out",
              replace_hint: str = "--overwrite") -> Path:
    """The resolved output folder, or OutputError with a one-line reason.  ``inputs`` maps a
    label ("checkpoint A", "--data", ...) to a path; hub ids and missing paths are ignored."""
    raw = str(out).strip()
    if not raw:
        raise OutputError(f"{what} is empty")
    _check_names(Path(raw).expanduser(), raw, what)
    path = Path(raw).expanduser().resolve()
    home, cwd = Path.home().resolve(), Path.cwd().resolve()
    if raw in (".", "..", "~", "/") or path == Path(path.anchor) or _within(home, path) or _within(cwd, path):
        raise OutputError(f"refusing {what} {raw}: it is (or contains) the root, home or working folder; "
                          "name a new folder for the results")
    for label, inp in (inputs or {}).items():
        if not inp:
            continue
        ip = Path(str(inp)).expanduser()
        if not ip.exists():
            continue
        ip = ip.resolve()
        if _within(ip, path):
            raise OutputError(f"refusing {what} {raw}: it contains {label} ({inp})")
        if _within(path, ip):
            raise OutputError(f"refusing {what} {raw}: it lies inside {label} ({inp})")
    if cache_dir:
        cd = Path(str(cache_dir)).expanduser().resolve()
        if _within(cd, path) or (_within(path, cd) and not _within(path, cd / "exports")):
            raise OutputError(f"refusing {what} {raw}: it contains or lies inside the cache folder {cache_dir}")
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise OutputError(f"{what} {raw} exists and is not a folder")
        if any(path.iterdir()):
            if not overwrite:
                raise OutputError(f"output folder {raw} exists and is not empty (use {replace_hint} to replace it)")
            if not (path / MARKER).is_file():
                raise OutputError(f"refusing to replace {raw}: permerge did not write it (no {MARKER} file); "
                                  "remove it yourself or choose another folder")
            foreign = _foreign_message(raw, path)
            if foreign:
                raise OutputError(foreign)
    check_writable(path, need_bytes, what)
    return path


# staged() writes into ".<name>.partial-XXXXXXXX" and moves an old folder to ".<name>.old-<pid>"
_STAGING_EXTRA = len("..partial-") + 8


def _check_names(path: Path, raw: str, what: str) -> None:
    """Every component of the path fits the file system, and the last one leaves room for the
    staging folders' names, so that a long name fails now and not after all the computation."""
    base = _nearest_existing(path.absolute().parent)
    try:
        name_max = os.pathconf(base, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    for part in path.parts:
        if len(os.fsencode(part)) > name_max:
            raise OutputError(f"{what} {raw}: the name {part[:16]}… is too long ({len(os.fsencode(part))} bytes; "
                              f"the file system allows {name_max})")
    n = len(os.fsencode(path.name))
    if n + _STAGING_EXTRA > name_max:
        raise OutputError(f"{what} {raw}: the folder name is too long ({n} bytes; at most "
                          f"{name_max - _STAGING_EXTRA}, since permerge writes it under a longer temporary name first)")


def check_writable(path: Path, need_bytes: int = 0, what: str = "--out") -> None:
    """Write (and remove) a small probe file where the folder will be created; check free space."""
    base = _nearest_existing(path.parent if not path.exists() else path)
    if not base.is_dir():
        raise OutputError(f"cannot create {what} {path}: {base} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".permerge-probe-", dir=base)
    except OSError as e:
        raise OutputError(f"cannot write to {base} ({e.strerror or e}); put {what} in a folder you can write to") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(b"\0" * _PROBE_BYTES)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as e:
        raise OutputError(f"cannot write to {base} ({e.strerror or e}); put {what} in a folder you can write to") from None
    finally:
        try:
            os.unlink(probe)
        except OSError:
            pass
    free = shutil.disk_usage(base).free
    if need_bytes and free < need_bytes:
        raise OutputError(f"not enough free space for {what} at {base}: about {need_bytes / 2**20:.0f} MiB "
                          f"needed, {free / 2**20:.0f} MiB free")


def current_umask() -> int:
    """The process's umask, read without changing it (``os.umask`` would, for every thread)."""
    try:  # Linux: from /proc
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _is_write_error(e: BaseException) -> bool:
    return isinstance(e, OSError) or type(e).__name__ == "SafetensorError"


class _Refused(OutputError):
    """``final`` may not be replaced at commit time; the staged folder is kept."""


@contextmanager
def staged(final: Path, overwrite: bool = False):
    """``with staged(final, overwrite) as tmp:`` write into ``tmp``; on success it becomes ``final``
    (with the marker file), replacing a previous permerge output atomically (only with
    ``overwrite``); on failure nothing remains, except when ``final`` may not be replaced: then
    the finished results stay in ``tmp`` and the OutputError names it."""
    final = Path(final)
    created = []
    p = final.parent
    while not p.exists():
        created.append(p)
        p = p.parent
    tmp, kept = None, False
    try:
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
            tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes it 0700; the output gets the usual mode
        except OSError as e:
            raise OutputError(f"cannot write the output at {final}: {e.strerror or e}") from None
        yield tmp
        try:
            entries = sorted(p.name for p in tmp.iterdir() if p.name != MARKER)
            (tmp / MARKER).write_text("\n".join([_MARKER_HEAD, *entries]) + "\n", encoding="utf-8")
            _commit(tmp, final, overwrite)
        except _Refused as e:
            kept = True  # the finished results stay in tmp
            raise OutputError(f"{e}; the results were kept in {tmp}") from None
        except OSError as e:
            raise OutputError(f"cannot write the output at {final}: {e.strerror or e}") from None
    except BaseException as e:
        if kept:
            raise
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for d in created:  # innermost first
            try:
                d.rmdir()
            except OSError:
                break
        if _is_write_error(e) and not isinstance(e, OutputError):
            msg = getattr(e, "strerror", None) or (str(e).splitlines()[0] if str(e) else type(e).__name__)
            raise OutputError(f"cannot write the output at {final}: {msg}") from None
        raise


def _commit(tmp: Path, final: Path, overwrite: bool = False) -> None:
    if not (final.exists() or final.is_symlink()):
        tmp.rename(final)
        return
    # check_out ran before the compute; the folder may have appeared or changed since
    if final.is_symlink() or not final.is_dir():
        raise _Refused(f"refusing to replace {final}: it is not a folder (it appeared during the run)")
    if any(final.iterdir()):
        if not overwrite:
            raise _Refused(f"refusing to replace {final}: it is not empty (it appeared or changed during the run)")
        if not (final / MARKER).is_file():
            raise _Refused(f"refusing to replace {final}: permerge did not write it (no {MARKER} file)")
        foreign = _foreign_message(final, final)
        if foreign:
            raise _Refused(foreign)
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    final.rename(old)
    try:
        tmp.rename(final)
    except BaseException:
        old.rename(final)
        raise
    shutil.rmtree(old, ignore_errors=True)
