"""Offline English corpus for the bundled checkpoint family.

Every source is a Debian package fetched with ``apt-get download`` and unpacked with
``dpkg-deb -x`` (nothing is installed) into a git-ignored build folder.  The parsers are
deliberately small: SWORD modules are zlib blocks plus fixed-width binary indexes, the GCIDE
is a dictzip (gzip) file, WordNet glosses are the text after ``|`` in ``data.*``.

The raw corpus is never committed; only the two held-out samples (``data/eval.txt`` and
``data/align.txt``) and the task TSVs are.
"""
from __future__ import annotations

import gzip
import html
import random
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

# name -> (license summary as read from /usr/share/doc/<pkg>/copyright, usable for committed text?)
PACKAGES = {
    "sword-text-web": ("public domain (World English Bible; the name is a trademark of eBible.org)", True),
    "sword-text-kjv": ("public domain outside the UK (King James Version, 1769 text)", True),
    "sword-comm-mhcc": ("public domain (Matthew Henry's Concise Commentary)", True),
    "sword-comm-tdavid": ("public domain (C. H. Spurgeon, The Treasury of David, 1885)", True),
    "wordnet-base": ("WordNet 3.0 license (permissive, BSD-like; notice must be kept)", True),
    "dict-gcide": ("GPL-2+ (GNU Collaborative International Dictionary of English, from Webster 1913)", False),
}

SWORD = "usr/share/sword/modules"
SWORD_MODULES = {
    # source name: (package, module dir)
    "web": ("sword-text-web", "texts/ztext/engWEB2015eb"),
    "kjv": ("sword-text-kjv", "texts/ztext/engKJV2006eb"),
    "mhcc": ("sword-comm-mhcc", "comments/zcom/mhcc"),
    "tdavid": ("sword-comm-tdavid", "comments/zcom/tdavid"),
}


def fetch(build: Path, log=print) -> Path:
    """apt-get download + dpkg-deb -x into build/root (idempotent)."""
    debs = build / "debs"
    root = build / "root"
    debs.mkdir(parents=True, exist_ok=True)
    have = {p.name.split("_")[0] for p in debs.glob("*.deb")}
    missing = [p for p in PACKAGES if p not in have]
    if missing:
        if shutil.which("apt-get") is None:
            raise RuntimeError(f"apt-get is needed to fetch {missing}")
        log(f"apt-get download {' '.join(missing)}")
        subprocess.run(["apt-get", "download", *missing], cwd=debs, check=True,
                       stdout=subprocess.DEVNULL)
    stamp = root / ".unpacked"
    if not stamp.exists():
        root.mkdir(parents=True, exist_ok=True)
        for deb in sorted(debs.glob("*.deb")):
            if deb.name.split("_")[0] in PACKAGES:
                subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        stamp.write_text("ok\n")
    return root


# ----------------------------------------------------------------------------- SWORD
def _sword_entries(moddir: Path, testament: str) -> list[str]:
    """Raw entries (one per verse slot, markup included) of a zText/zCom/zCom4 module."""
    for letter in "bc":
        bzs = moddir / f"{testament}.{letter}zs"
        if bzs.exists() and bzs.stat().st_size:
            break
    else:
        return []
    bs = bzs.read_bytes()
    bv = (moddir / f"{testament}.{letter}zv").read_bytes()
    bz = (moddir / f"{testament}.{letter}zz").read_bytes()
    blocks = [struct.unpack_from("<III", bs, i) for i in range(0, len(bs), 12)]
    # index entries are u32 block, u32 offset, then u16 (zText/zCom) or u32 (zCom4) size;
    # pick the width whose entries all point inside their blocks
    def plausible(step: int) -> bool:
        if len(bv) % step:
            return False
        for i in range(0, len(bv) - step + 1, step):
            b, o = struct.unpack_from("<II", bv, i)
            s = int.from_bytes(bv[i + 8:i + step], "little")
            if s and (b >= len(blocks) or o + s > blocks[b][2]):
                return False
        return True

    step = 12 if plausible(12) else 10
    cache: dict[int, bytes] = {}
    out = []
    for i in range(0, len(bv) - step + 1, step):
        b, o = struct.unpack_from("<II", bv, i)
        s = int.from_bytes(bv[i + 8:i + step], "little")
        if s == 0 or b >= len(blocks):
            out.append("")
            continue
        if b not in cache:
            off, cs, _us = blocks[b]
            cache[b] = zlib.decompress(bz[off:off + cs])
        out.append(cache[b][o:o + s].decode("utf-8", "replace"))
    return out


_NOTE = re.compile(r"<note\b.*?</note>", re.S)
_TITLE = re.compile(r"<title\b.*?</title>", re.S)
_TAG = re.compile(r"<[^>]*>")
_RTF = re.compile(r"\\par\b|\\[a-z]+\d* ?")
_WS = re.compile(r"\s+")


def clean_markup(s: str, keep_titles: bool = False) -> str:
    s = _NOTE.sub(" ", s)
    if not keep_titles:
        s = _TITLE.sub(" ", s)
    s = _TAG.sub("", s)
    s = _RTF.sub(" ", s)
    s = html.unescape(s)
    return _WS.sub(" ", s).strip()


_BOOK = re.compile(r'<div[^>]*osisID="([^"]+)"[^>]*type="book"|<div[^>]*type="book"[^>]*osisID="([^"]+)"')
_CHAP = re.compile(r'<chapter[^>]*osisID="([^".]+)\.(\d+)"[^>]*sID=')


def sword_verses(root: Path, name: str) -> list[tuple[str, int, int, str]]:
    """(book, chapter, verse, clean text) for every non-empty verse slot of a module.

    Book/chapter come from the OSIS ``<div type="book">``/``<chapter sID>`` milestones kept in
    the intro slots; verse numbers count the slots after a chapter intro (KJV-style layout).
    """
    _pkg, mod = SWORD_MODULES[name]
    moddir = root / SWORD / mod
    out = []
    for testament in ("ot", "nt"):
        book, chap, verse = None, 0, 0
        for raw in _sword_entries(moddir, testament):
            m = _CHAP.search(raw)
            if m:
                book, chap, verse = m.group(1), int(m.group(2)), 0
                continue
            mb = _BOOK.search(raw)
            if mb:
                book, chap, verse = (mb.group(1) or mb.group(2)), 0, 0
                continue
            verse += 1
            if book is None or chap == 0:
                continue
            text = clean_markup(raw)
            if text:
                out.append((book, chap, verse, text))
    return out


def sword_documents(root: Path, name: str) -> list[tuple[str, str]]:
    """One document per chapter: (doc id, text)."""
    docs: dict[tuple[str, int], list[str]] = {}
    prev = None
    for book, chap, _v, text in sword_verses(root, name):
        if text == prev:  # commentaries link one comment to a range of verses
            continue
        prev = text
        docs.setdefault((book, chap), []).append(text)
    return [(f"{name}:{b}.{c}", " ".join(v)) for (b, c), v in docs.items()]


# ----------------------------------------------------------------------------- WordNet
_WN_POS = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}


def wordnet_synsets(root: Path) -> list[dict]:
    """Every synset: offset, pos, lexname id, lemmas, gloss definition, examples."""
    out = []
    for pos in _WN_POS:
        path = root / "usr/share/wordnet" / f"data.{pos}"
        for line in path.read_text("utf-8", "replace").splitlines():
            if line.startswith("  ") or "|" not in line:
                continue
            head, gloss = line.split("|", 1)
            f = head.split()
            lex = int(f[1])
            n = int(f[3], 16)
            lemmas = [f[4 + 2 * i].replace("_", " ") for i in range(n)]
            parts = [p.strip() for p in gloss.strip().split(";")]
            defs = [p for p in parts if p and not p.startswith('"')]
            exs = [p.strip('"').strip() for p in parts if p.startswith('"')]
            out.append({"id": f"{pos}{f[0]}", "pos": pos, "lex": lex, "lemmas": lemmas,
                        "definition": "; ".join(defs), "examples": [e for e in exs if e]})
    return out


def wordnet_documents(root: Path) -> list[tuple[str, str]]:
    docs = []
    for s in wordnet_synsets(root):
        text = f"{', '.join(s['lemmas'])}: {s['definition']}."
        if s["examples"]:
            text += " " + " ".join(e if e.endswith((".", "!", "?")) else e + "." for e in s["examples"])
        docs.append((f"wordnet:{s['id']}", text))
    return docs


# ----------------------------------------------------------------------------- GCIDE
def gcide_documents(root: Path) -> list[tuple[str, str]]:
    """One document per dictionary entry (dictd index gives base64 offset/length)."""
    d = root / "usr/share/dictd"
    data = gzip.decompress((d / "gcide.dict.dz").read_bytes())
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    val = {c: i for i, c in enumerate(alphabet)}

    def b64(s: str) -> int:
        n = 0
        for c in s:
            n = n * 64 + val[c]
        return n

    seen = set()
    docs = []
    for line in (d / "gcide.index").read_text("utf-8", "replace").splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or parts[0].startswith("00-"):
            continue
        off, ln = b64(parts[1]), b64(parts[2])
        if off in seen:
            continue
        seen.add(off)
        text = data[off:off + ln].decode("utf-8", "replace")
        text = _WS.sub(" ", re.sub(r"\[[^\]]*\]", " ", text)).strip()  # drop etymology/source brackets
        if len(text) > 40:
            docs.append((f"gcide:{off}", text))
    return docs


# ----------------------------------------------------------------------------- assembly
def all_documents(root: Path, log=print) -> dict[str, list[tuple[str, str]]]:
    out = {}
    for name in SWORD_MODULES:
        out[name] = sword_documents(root, name)
    out["wordnet"] = wordnet_documents(root)
    out["gcide"] = gcide_documents(root)
    for k, v in out.items():
        log(f"  {k:8s} {len(v):7d} docs {sum(len(t) for _, t in v) / 1e6:7.2f} M chars")
    return out


def _chunk_lines(text: str, width: int = 2000) -> list[str]:
    """Split a long document into lines of at most ~width characters at sentence ends."""
    if len(text) <= width:
        return [text]
    out, cur = [], ""
    for sent in re.split(r"(?<=[.;:?!])\s+", text):
        if cur and len(cur) + len(sent) + 1 > width:
            out.append(cur)
            cur = sent
        else:
            cur = f"{cur} {sent}" if cur else sent
    if cur:
        out.append(cur)
    return out


def build_corpus(build: Path, data_dir: Path, eval_chars: int = 150_000, align_chars: int = 450_000,
                 seed: int = 0, log=print) -> dict:
    """Write build/corpus/train.txt (not committed) and data/eval.txt, data/align.txt (committed).

    Held-out samples are whole documents (a Bible/commentary chapter or a WordNet synset),
    drawn only from the public-domain / permissively licensed sources.  A held-out Bible
    chapter is held out in both translations, so no model ever sees its text.
    """
    root = fetch(build, log)
    docs = all_documents(root, log)
    rng = random.Random(seed)
    # chapter keys shared across web/kjv/mhcc/tdavid are held out together
    chapter_keys = sorted({d.split(":", 1)[1] for n in SWORD_MODULES for d, _ in docs[n]})
    rng.shuffle(chapter_keys)
    wn = list(docs["wordnet"])
    rng.shuffle(wn)
    by_key = {n: {d.split(":", 1)[1]: t for d, t in docs[n]} for n in SWORD_MODULES}

    held: dict[str, list[str]] = {"eval": [], "align": []}
    held_keys: set[str] = set()
    held_wn: set[str] = set()
    targets = {"eval": eval_chars, "align": align_chars}
    # ~80% SWORD text (one source per chapter, rotating), ~20% WordNet glosses
    names = list(SWORD_MODULES)
    ki = wi = 0
    for split in ("eval", "align"):
        size = 0
        while size < targets[split]:
            if rng.random() < 0.8:
                key = chapter_keys[ki]
                ki += 1
                held_keys.add(key)
                src = names[ki % len(names)]
                text = by_key[src].get(key) or next((by_key[n][key] for n in names if key in by_key[n]), "")
                if not text:
                    continue
                lines = _chunk_lines(text)[:2]
                held[split].extend(lines)
                size += sum(len(x) + 1 for x in lines)
            else:
                did, text = wn[wi]
                wi += 1
                held_wn.add(did)
                held[split].append(text)
                size += len(text) + 1
    data_dir.mkdir(parents=True, exist_ok=True)
    for split in ("eval", "align"):
        (data_dir / f"{split}.txt").write_text("\n".join(held[split]) + "\n", encoding="utf-8")

    corpus = build / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    n_lines = n_chars = 0
    train_docs = []
    for name, items in docs.items():
        for did, text in items:
            key = did.split(":", 1)[1]
            if name in SWORD_MODULES and key in held_keys:
                continue
            if name == "wordnet" and did in held_wn:
                continue
            train_docs.append((did, text))
    rng.shuffle(train_docs)
    with open(corpus / "train.txt.tmp", "w", encoding="utf-8") as f:
        for _did, text in train_docs:
            for line in _chunk_lines(text):
                f.write(line + "\n")
                n_lines += 1
                n_chars += len(line) + 1
    (corpus / "train.txt.tmp").replace(corpus / "train.txt")
    (corpus / "heldout_keys.txt").write_text("\n".join(sorted(held_keys | held_wn)) + "\n")
    info = {"train_lines": n_lines, "train_chars": n_chars, "held_out_chapters": len(held_keys),
            "held_out_synsets": len(held_wn),
            "eval_chars": (data_dir / "eval.txt").stat().st_size,
            "align_chars": (data_dir / "align.txt").stat().st_size,
            "sources": {k: {"docs": len(v), "chars": sum(len(t) for _, t in v),
                            "license": PACKAGES[SWORD_MODULES[k][0]][0] if k in SWORD_MODULES
                            else PACKAGES["wordnet-base" if k == "wordnet" else "dict-gcide"][0]}
                        for k, v in docs.items()}}
    log(f"  train.txt {n_chars / 1e6:.1f} M chars in {n_lines} lines; "
        f"eval {info['eval_chars']} B, align {info['align_chars']} B")
    return info
