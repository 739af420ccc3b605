"""The GPU step's inputs and outputs as files that fit the transfer limits of a borrowed GPU machine.

``write_pack`` (the ``pack`` stage of ``zoo build``) puts everything pre-training needs into one
folder of at most ``PACK_MAX_BYTES``: the tokenizer, the training token stream (little-endian
uint16, xz-compressed) and the held-out eval text, with ``manifest.json`` listing the sha256 and
size of every file.  The same inputs give the same bytes; the sha256 of ``manifest.json`` is the
pack's checksum.

``permerge.zoo.gpu_step`` writes one tar archive per checkpoint plus ``returned.json`` (sha256 of
each archive) and its log; ``check_returned`` enforces the limits on what comes back, and
``adopt`` verifies the archives and unpacks them into a zoo folder.

Only the standard library and numpy here: the GPU step imports this module.
"""
from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path

from ..errors import PermergeError
from ..outputs import current_umask

MiB = 1 << 20
PACK_MAX_BYTES = 16 * MiB
PACK_FORMAT = "permerge-zoo-pack/1"
STREAM_FILE = "train.u16.xz"
EVAL_FILE = "eval.txt"
TOKENIZER_DIR = "tokenizer"
MANIFEST = "manifest.json"

# what may come back from the GPU machine
RETURN_MAX_FILES = 8
RETURN_MAX_FILE_BYTES = 16 * MiB
RETURN_MAX_TOTAL_BYTES = 64 * MiB
RETURN_MAX_DEPTH = 2  # folders below the output folder
RETURN_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
RETURNED = "returned.json"
RETURNED_FORMAT = "permerge-zoo-returned/1"
LOG_FILE = "gpu_step.log"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(MiB), b""):
            h.update(chunk)
    return h.hexdigest()


def _compress(raw: bytes) -> bytes:
    # one thread, fixed preset: the same input always gives the same bytes
    return lzma.compress(raw, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64,
                         preset=9 | lzma.PRESET_EXTREME)


def write_pack(pack_dir: Path, tok_dir: Path, stream, eval_txt: Path, log=print) -> dict:
    """Write the pack folder (replacing an older one only when the new one is complete and fits).

    ``stream``: the training token stream (numpy uint16 array).  Returns the manifest with the
    pack's checksum under ``"sha256"`` (not stored in the file)."""
    import numpy as np

    pack_dir = Path(pack_dir)
    tok_files = sorted(p for p in Path(tok_dir).iterdir() if p.is_file())
    if not any(p.name == "tokenizer.json" for p in tok_files):
        raise PermergeError(f"{tok_dir} has no tokenizer.json: run the tokenizer stage first")
    if not Path(eval_txt).is_file():
        raise PermergeError(f"{eval_txt} is missing: run the corpus stage first")
    raw = np.ascontiguousarray(stream, dtype="<u2").tobytes()
    log(f"  compressing {len(raw) / 1e6:.1f} MB of uint16 tokens (xz -9e)")
    blob = _compress(raw)
    contents: dict[str, bytes] = {STREAM_FILE: blob, EVAL_FILE: Path(eval_txt).read_bytes()}
    for p in tok_files:
        contents[f"{TOKENIZER_DIR}/{p.name}"] = p.read_bytes()
    manifest = {
        "format": PACK_FORMAT,
        "stream": {"file": STREAM_FILE, "dtype": "uint16 little-endian", "tokens": len(raw) // 2,
                   "sha256_uncompressed": hashlib.sha256(raw).hexdigest()},
        "files": {name: {"bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()}
                  for name, b in sorted(contents.items())},
    }
    mbytes = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    total = sum(len(b) for b in contents.values()) + len(mbytes)
    if total > PACK_MAX_BYTES:
        raise PermergeError(f"the pack would be {total / MiB:.2f} MiB, over the {PACK_MAX_BYTES / MiB:.0f} MiB "
                            "limit (use --train-tokens to pack fewer training tokens)")
    if pack_dir.exists() and not _is_pack(pack_dir):
        raise PermergeError(f"{pack_dir} exists and is not a zoo pack: refusing to replace it (choose another --pack)")
    if pack_dir.exists():
        extra = _unlisted_files(pack_dir)
        if extra:
            raise PermergeError(f"{pack_dir} holds {extra[0]}, which the pack stage did not write: refusing to replace "
                                "the pack (move the file away or choose another --pack)")
    pack_dir.parent.mkdir(parents=True, exist_ok=True)
    _replace_dir(pack_dir, {**contents, MANIFEST: mbytes})
    return manifest | {"sha256": hashlib.sha256(mbytes).hexdigest(), "total_bytes": total}


def _is_pack(folder: Path) -> bool:
    """A folder that ``write_pack`` wrote (its manifest names the pack format)."""
    try:
        return json.loads((Path(folder) / MANIFEST).read_text()).get("format") == PACK_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _unlisted_files(pack_dir: Path) -> list[str]:
    """Files and folders in an existing pack that its manifest does not list (the user's)."""
    try:
        listed = set(json.loads((Path(pack_dir) / MANIFEST).read_text()).get("files") or {}) | {MANIFEST}
    except (OSError, ValueError, AttributeError, TypeError):
        return [MANIFEST]
    dirs = {str(Path(n).parent) for n in listed if "/" in n}
    found = []
    for p in sorted(Path(pack_dir).rglob("*")):
        rel = str(p.relative_to(pack_dir))
        if p.is_symlink() or not (rel in listed if p.is_file() else rel in dirs and p.is_dir()):
            found.append(rel)
    return found


def _stage_dir(target: Path, files: dict[str, bytes]) -> Path:
    """``files`` (relative name -> bytes) written into a new folder beside ``target``, with the
    permissions of an ordinary folder (mkdtemp's are 0700)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        for name, b in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(b)
        os.chmod(tmp, 0o777 & ~current_umask())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def _swap_in(target: Path, tmp: Path) -> None:
    """Rename the staged folder ``tmp`` to ``target``; what was at ``target`` (a folder, or a link
    to one) is moved aside under a new name first and removed after (a link: only the link)."""
    old = None
    try:
        if target.exists() or target.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            old.rmdir()
            target.rename(old)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        if old.is_symlink():
            old.unlink()
        else:
            shutil.rmtree(old, ignore_errors=True)


def _replace_dir(target: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` into a new folder beside ``target`` and rename it into place (see
    ``_stage_dir`` and ``_swap_in``).  The temporary names are new ones, so nothing else beside
    ``target`` is touched."""
    _swap_in(target, _stage_dir(target, files))


def pack_bytes(pack_dir: Path) -> int:
    return sum(p.stat().st_size for p in Path(pack_dir).rglob("*") if p.is_file())


def read_manifest(pack_dir: Path, verify: bool = True) -> dict:
    """The pack's manifest (plus ``"sha256"``, the pack checksum); with ``verify`` every file's
    size and sha256 are checked first (PermergeError naming the first that differs)."""
    pack_dir = Path(pack_dir)
    mpath = pack_dir / MANIFEST
    if not mpath.is_file():
        raise PermergeError(f"{pack_dir} is not a zoo pack (no {MANIFEST}); build it with "
                            "`python -m permerge zoo build --stages corpus,tokenizer,pack`")
    mbytes = mpath.read_bytes()
    try:
        manifest = json.loads(mbytes)
    except ValueError:
        raise PermergeError(f"{mpath} is not valid JSON") from None
    if manifest.get("format") != PACK_FORMAT:
        raise PermergeError(f"{mpath}: unknown format {manifest.get('format')!r} (expected {PACK_FORMAT})")
    if verify:
        for name, info in manifest["files"].items():
            p = pack_dir / name
            if not p.is_file():
                raise PermergeError(f"pack file {p} is missing")
            if p.stat().st_size != info["bytes"] or sha256_file(p) != info["sha256"]:
                raise PermergeError(f"pack file {p} does not match its checksum in {MANIFEST}")
    return manifest | {"sha256": hashlib.sha256(mbytes).hexdigest()}


def load_stream(pack_dir: Path, manifest: dict, dest: Path | None = None):
    """Decompress the training stream -> numpy uint16 array (checked against its sha256); with
    ``dest`` the raw bytes are also written there (for worker processes to read)."""
    import numpy as np

    raw = lzma.decompress((Path(pack_dir) / manifest["stream"]["file"]).read_bytes())
    if hashlib.sha256(raw).hexdigest() != manifest["stream"]["sha256_uncompressed"]:
        raise PermergeError(f"the training stream in {pack_dir} does not match its checksum")
    if dest is not None:
        tmp = Path(dest).with_name(Path(dest).name + ".tmp")
        tmp.write_bytes(raw)
        tmp.replace(dest)
    return np.frombuffer(raw, dtype="<u2").astype(np.uint16, copy=False)


# ----------------------------------------------------------------------------- returned files
def check_returned(out_dir: Path) -> list[str]:
    """What breaks the limits on returned files (empty list: all fine): at most 8 files, each at
    most 16 MiB, 64 MiB in all, names of letters, digits, '.', '_', '-', at most 2 folders down."""
    out_dir = Path(out_dir)
    problems = []
    files = []
    for p in sorted(out_dir.rglob("*")):
        rel = p.relative_to(out_dir)
        if any(not RETURN_NAME.match(part) for part in rel.parts):
            problems.append(f"{rel}: name has characters other than letters, digits, '.', '_', '-'")
        if p.is_symlink():
            problems.append(f"{rel}: a link")
        elif p.is_file():
            files.append(p)
            if len(rel.parts) - 1 > RETURN_MAX_DEPTH:
                problems.append(f"{rel}: more than {RETURN_MAX_DEPTH} folders down")
            if p.stat().st_size > RETURN_MAX_FILE_BYTES:
                problems.append(f"{rel}: {p.stat().st_size / MiB:.2f} MiB, over {RETURN_MAX_FILE_BYTES // MiB} MiB")
        elif not p.is_dir():
            problems.append(f"{rel}: not a plain file")
    if len(files) > RETURN_MAX_FILES:
        problems.append(f"{len(files)} files, over {RETURN_MAX_FILES}")
    total = sum(p.stat().st_size for p in files)
    if total > RETURN_MAX_TOTAL_BYTES:
        problems.append(f"{total / MiB:.2f} MiB in all, over {RETURN_MAX_TOTAL_BYTES // MiB} MiB")
    return problems


def archive_checkpoint(ckpt: Path, dest: Path) -> dict:
    """A checkpoint folder -> one uncompressed tar (members ``<name>/<file>``, sorted, no owner or
    time), written as ``dest`` atomically. Returns {bytes, sha256}."""
    ckpt = Path(ckpt)
    part = Path(dest).with_name("." + Path(dest).name + ".part")
    with tarfile.open(part, "w", format=tarfile.PAX_FORMAT) as tar:
        for p in sorted(ckpt.iterdir()):
            if not p.is_file():
                continue
            data = p.read_bytes()
            info = tarfile.TarInfo(f"{ckpt.name}/{p.name}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    part.replace(dest)
    return {"bytes": Path(dest).stat().st_size, "sha256": sha256_file(Path(dest))}


_MEMBER = re.compile(r"^[A-Za-z0-9._-]+$")
_ARCHIVE = re.compile(r"^mlm-seed[0-9]+\.tar$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NEEDED = ("config.json", "model.safetensors", "permerge.json", "tokenizer.json")
# the files a checkpoint of the zoo holds (train.save_checkpoint); a folder without the adopt
# record (ADOPTED) is replaced only if it holds nothing else
_ZOO_FILES = frozenset(_NEEDED + ("README.md", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                                  "generation_config.json"))
ADOPTED = ".permerge-adopted.json"  # what adopt wrote into a checkpoint folder: name -> size, sha256
ADOPT_MAX_MEMBERS = 16
# without limits from the recipe: a member of at most 64 MiB (the weights of the bundled family are ~10)
DEFAULT_LIMITS = {"members": ADOPT_MAX_MEMBERS, "weights_bytes": 64 * MiB, "other_bytes": 8 * MiB}


def _returned_record(rpath: Path) -> dict:
    """returned.json, its schema checked: {format, pack_sha256?, archives: {name: {bytes, sha256}}}."""
    try:
        returned = json.loads(rpath.read_text(encoding="utf-8"))
    except (ValueError, RecursionError, UnicodeDecodeError):
        raise PermergeError(f"{rpath} is not valid JSON") from None
    if not isinstance(returned, dict):
        raise PermergeError(f"{rpath}: expected a JSON object, not {type(returned).__name__}")
    if returned.get("format") != RETURNED_FORMAT:
        raise PermergeError(f"{rpath}: unknown format {str(returned.get('format'))[:80]!r}")
    if not isinstance(returned.get("pack_sha256", ""), (str, type(None))):
        raise PermergeError(f"{rpath}: pack_sha256 is not a string")
    archives = returned.get("archives")
    if archives is None:
        archives = {}
    if not isinstance(archives, dict):
        raise PermergeError(f"{rpath}: archives is not an object of archive name -> {{bytes, sha256}}")
    for name, info in archives.items():
        if not isinstance(info, dict) or not isinstance(info.get("bytes"), int) or isinstance(info.get("bytes"), bool) \
                or info["bytes"] < 0 or not isinstance(info.get("sha256"), str) or not _SHA256.match(info["sha256"]):
            raise PermergeError(f"{rpath}: the entry of archive {str(name)[:80]!r} is not {{bytes: int, sha256: hex}}")
    return returned


def _read_members(p: Path, name: str, limits: dict) -> dict[str, bytes]:
    """An archive's files (``<name>/<file>``, regular files only), every header checked against the
    limits before any member is read: member count, each member's real size (a sparse member counts
    at its expanded size), the total (at most the archive's own size: the tar is uncompressed), no
    name twice."""
    size = p.stat().st_size
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(p, "r:") as tar:
            members = []
            for m in tar:
                members.append(m)
                if len(members) > limits["members"]:
                    raise PermergeError(f"archive {p}: more than {limits['members']} members")
            total = 0
            for m in members:
                parts = m.name.split("/")
                if not m.isfile() or len(parts) != 2 or parts[0] != name or not _MEMBER.match(parts[1]) \
                        or parts[1] in (".", ".."):
                    raise PermergeError(f"archive {p}: unexpected member {m.name!r}")
                if parts[1] in files:
                    raise PermergeError(f"archive {p}: member {m.name!r} appears twice")
                cap = limits["weights_bytes"] if parts[1].endswith(".safetensors") else limits["other_bytes"]
                if m.size > cap:
                    raise PermergeError(f"archive {p}: member {m.name!r} is {m.size / MiB:.1f} MiB, over the "
                                        f"{cap / MiB:.1f} MiB such a file of this recipe can take")
                total += m.size
                if total > size:
                    raise PermergeError(f"archive {p}: its members add up to more than the archive's own "
                                        f"{size / MiB:.1f} MiB (sparse members?)")
                files[parts[1]] = b""
            for m in members:
                f = tar.extractfile(m)
                data = f.read(m.size + 1)
                if len(data) != m.size:
                    raise PermergeError(f"archive {p}: member {m.name!r} is not {m.size} bytes long")
                files[m.name.split("/")[1]] = data
    except tarfile.TarError as e:
        raise PermergeError(f"archive {p} is not a readable tar archive: {e}") from None
    return files


def _replaceable(out: Path) -> str | None:
    """Why the checkpoint folder ``out`` may not be replaced (None: it may): it must hold exactly
    what adopt wrote there (its ADOPTED record), or, written by the pretrain stage, only the files
    of a zoo checkpoint."""
    if not out.exists() and not out.is_symlink():
        return None
    if not out.is_dir():
        return f"{out} exists and is not a checkpoint of the zoo"
    names = sorted(p.name for p in out.iterdir())
    record = out / ADOPTED
    if record.is_file():
        try:
            wrote = json.loads(record.read_text(encoding="utf-8"))
            wrote = {k: (int(v["bytes"]), str(v["sha256"])) for k, v in wrote["files"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return f"{out / ADOPTED} is damaged"
        for n in names:
            if n == ADOPTED:
                continue
            f = out / n
            if n not in wrote:
                return f"{out} holds {n}, which adopt did not write"
            if not f.is_file() or f.is_symlink() or f.stat().st_size != wrote[n][0] or sha256_file(f) != wrote[n][1]:
                return f"{out / n} was changed after adopt wrote it"
        return None
    if not (out / "permerge.json").is_file():
        return f"{out} exists and is not a checkpoint of the zoo"
    extra = [n for n in names if n not in _ZOO_FILES or not (out / n).is_file() or (out / n).is_symlink()]
    if extra:
        return f"{out} holds {extra[0]}, which is not a file of a zoo checkpoint"
    return None


def _record(files: dict[str, bytes]) -> bytes:
    return (json.dumps({"files": {n: {"bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()}
                                  for n, b in sorted(files.items())}}, indent=1, sort_keys=True) + "\n").encode()


def adopt(from_dir: Path, ckpts: Path, pack_sha256: str | None = None, log=print, limits: dict | None = None,
          verify=None) -> list[str]:
    """Verify the GPU step's archives in ``from_dir`` against its ``returned.json`` and unpack them
    into ``ckpts``.  Before anything is replaced: returned.json's schema, every archive's checksum,
    its members against ``limits`` (count, per-member and total size, no duplicates), each checkpoint
    written to a temporary folder beside its place and, with ``verify(folder)``, loaded and evaluated
    there (PermergeError if it is not usable); a folder at a checkpoint's place must hold exactly
    what adopt (or the pretrain stage) wrote.  Then each staged folder is renamed into place, with a
    record of what was written.  Nothing else is removed: classifiers fine-tuned from a replaced MLM
    are reported (the finetune stage makes them again).  Returns the adopted checkpoint names."""
    from_dir, ckpts = Path(from_dir), Path(ckpts)
    limits = {**DEFAULT_LIMITS, **(limits or {})}
    rpath = from_dir / RETURNED
    if not rpath.is_file():
        raise PermergeError(f"{from_dir} has no {RETURNED}: not the output folder of the GPU step")
    returned = _returned_record(rpath)
    if pack_sha256 and returned.get("pack_sha256") != pack_sha256:
        raise PermergeError(f"the archives in {from_dir} were trained from pack {returned.get('pack_sha256')}, "
                            f"not from the local pack {pack_sha256}")
    archives = returned.get("archives") or {}
    if not archives:
        raise PermergeError(f"{rpath} lists no archive (did every seed fail? see {from_dir / LOG_FILE})")
    members: dict[str, dict[str, bytes]] = {}
    summaries: dict[str, str] = {}
    for fname, info in sorted(archives.items()):
        p = from_dir / fname
        if not _ARCHIVE.match(fname):
            raise PermergeError(f"{rpath}: bad archive name {fname!r} (expected mlm-seed<N>.tar)")
        if not p.is_file():
            raise PermergeError(f"archive {p} is missing")
        if p.stat().st_size != info["bytes"] or sha256_file(p) != info["sha256"]:
            raise PermergeError(f"archive {p} does not match its checksum in {RETURNED}")
        name = fname[:-4]
        files = _read_members(p, name, limits)
        missing = [f for f in _NEEDED if f not in files]
        if missing:
            raise PermergeError(f"archive {p} lacks {', '.join(missing)}")
        if ADOPTED in files:
            raise PermergeError(f"archive {p}: unexpected member {name}/{ADOPTED}")
        try:
            meta = json.loads(files["permerge.json"])
            summary = (f"eval MLM loss {float(meta['metrics']['eval_mlm_loss']):.3f} ({int(meta['steps'])} steps, "
                       f"{meta['device']})")
        except (ValueError, KeyError, TypeError, RecursionError):
            raise PermergeError(f"archive {p}: permerge.json is not a checkpoint record of the GPU step") from None
        if meta.get("kind") != "mlm":
            raise PermergeError(f"archive {p} does not hold an MLM checkpoint")
        why = _replaceable(ckpts / name)
        if why:
            raise PermergeError(f"{why}: refusing to replace it (move it away, or adopt into another --out)")
        members[name] = files
        summaries[name] = summary
    ckpts.mkdir(parents=True, exist_ok=True)
    staged: dict[str, Path] = {}
    try:
        for name, files in members.items():
            staged[name] = _stage_dir(ckpts / name, {**files, ADOPTED: _record(files)})
            if verify is not None:
                verify(staged[name], name)
        for name in members:
            _swap_in(ckpts / name, staged.pop(name))
            log(f"  adopted {name}: {summaries[name]}")
    finally:
        for tmp in staged.values():
            shutil.rmtree(tmp, ignore_errors=True)
    for d in sorted(ckpts.iterdir()):
        if d.name.startswith(".") or d.name in members:
            continue
        try:
            meta = json.loads((d / "permerge.json").read_text(encoding="utf-8"))
            base = meta.get("base") if isinstance(meta, dict) and meta.get("kind") == "classifier" else None
        except (OSError, ValueError, RecursionError, AttributeError):
            continue
        if base in members:
            log(f"  note: {d.name} was fine-tuned from the previous {base}, which adopt replaced; it is kept "
                "(the finetune stage makes it again from the new one)")
    return sorted(members)
