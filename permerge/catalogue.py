"""The catalogue of known multi-seed checkpoint families (``catalogue.json``: data, each family
with its public source and how its names were checked), and ``permerge hub list [FAMILY]``.

A pick (family, size, seed, step) names a hub id, ``NAME`` or ``NAME@REVISION``, which loads like
any typed id; a typed id that is not in the catalogue works all the same.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import PermergeError

CATALOGUE = Path(__file__).with_name("catalogue.json")


@lru_cache(maxsize=1)
def _data() -> dict:
    return json.loads(CATALOGUE.read_text())


@dataclass(frozen=True)
class Family:
    name: str
    title: str
    model_type: str
    source: str
    verified: str
    entry: dict

    @property
    def supported(self) -> bool:
        """Whether this permerge has a table for the family's model type (permerge/arch/)."""
        from .arch import SUPPORTED_MODEL_TYPES

        return self.model_type in SUPPORTED_MODEL_TYPES

    def support_note(self) -> str:
        return "" if self.supported else f"needs the {self.model_type} table, which this permerge does not have yet"

    def sizes(self) -> list[str]:
        return list(self.entry["sizes"])

    def seeds(self, size: str) -> list[str]:
        s = self.entry["sizes"][size]
        return [str(x) for x in s["seeds"]] if "seeds" in s else list(s["repos"])

    def steps(self, size: str, seed: str | None = None) -> list[str]:
        """The steps of a size (and seed) as the catalogue names them; [] when it has none."""
        st = self.entry.get("steps")
        if not st or size not in st.get("sizes", [size]):
            return []
        if seed is not None and "seeds" in st and int(seed) not in st["seeds"]:
            return []
        out = list(st.get("values", []))  # named one by one, then (or else) a schedule [from, to, every]
        if "schedule" in st:
            for lo, hi, step in st["schedule"]:
                out += [st["format"].format(n=n) for n in range(lo, hi, step)]
            out.append(st["format"].format(n=st["schedule"][-1][1]))
        return out

    def repo(self, size: str, seed: str) -> str:
        s = self.entry["sizes"][size]
        if "repos" in s:
            return s["repos"][str(seed)]
        return s["repo"].format(seed=seed, size=size)

    def hub_id(self, size: str, seed: str, step: str | None = None) -> str:
        """The hub id of a pick: the repo, ``repo@revision`` for a step branch, or the step's own repo."""
        if size not in self.entry["sizes"]:
            raise PermergeError(f"{self.name} has no size {size!r} (sizes: {', '.join(self.sizes())})")
        if str(seed) not in self.seeds(size):
            raise PermergeError(f"{self.name} {size} has no seed {seed!r} (seeds: {', '.join(self.seeds(size))})")
        if not step:
            return self.repo(size, seed)
        if step not in self.steps(size, seed):
            raise PermergeError(f"{self.name} {size} seed {seed} has no step {step!r} in the catalogue")
        st = self.entry["steps"]
        if st["kind"] == "repo":
            return st["repo"].format(seed=seed, step=step, size=size)
        return f"{self.repo(size, seed)}@{step}"

    def weights_mb(self, size: str) -> float | None:
        return self.entry["sizes"][size].get("weights_mb")


def families() -> list[Family]:
    return [Family(f["name"], f["title"], f["model_type"], f["source"], f["verified"], f) for f in _data()["families"]]


def family(name: str) -> Family:
    for f in families():
        if f.name == name:
            return f
    raise PermergeError(f"no family {name!r} in the catalogue (known: {', '.join(f.name for f in families())})")


def _seed_span(seeds: list[str]) -> str:
    nums = [int(s) for s in seeds]
    if nums == list(range(nums[0], nums[-1] + 1)) and len(nums) > 2:
        return f"{nums[0]}-{nums[-1]}"
    return ", ".join(seeds)


def _step_span(steps: list[str]) -> str:
    if not steps:
        return "none"
    if len(steps) <= 8:
        return ", ".join(steps)
    return f"{', '.join(steps[:3])}, ..., {', '.join(steps[-2:])} ({len(steps)})"


def describe(fam: Family, exact: bool = False) -> list[str]:
    """Lines for ``hub list``: the family, its sizes, seeds and steps, the download size (from the
    catalogue, or with ``exact`` from the Hub's file list of one seed), and which seeds are cached."""
    from . import hub

    note = fam.support_note()
    lines = [f"{fam.name}: {fam.title} ({fam.model_type}{'; ' + note if note else ''})", f"  source: {fam.source}"]
    for size in fam.sizes():
        seeds = fam.seeds(size)
        cached = [s for s in seeds if (snap := hub.local_snapshot(fam.repo(size, s))) is not None
                  and hub.has_weights(snap)]
        mb = fam.weights_mb(size)
        where = f"weights about {mb:g} MB each (catalogue)" if mb else "download size: ask the Hub (--allow-downloads)"
        if exact:
            first = fam.repo(size, seeds[0])
            steps = fam.steps(size, seeds[0])
            if fam.entry.get("steps", {}).get("kind") == "revision" and steps:
                first = f"{first}@{steps[-1]}"  # PolyPythias' main branch holds no weights
            try:
                p = hub.plan(first)
                where = f"{hub.fmt_bytes(p.total_bytes)} each ({len(p.files)} files of {first}, from the Hub's file list)"
            except PermergeError as e:
                where = f"download size unknown ({e})"
        repo = fam.entry["sizes"][size].get("repo") or ", ".join(fam.entry["sizes"][size]["repos"].values())
        lines.append(f"  {size}: {repo}  seeds {_seed_span(seeds)}  {where}  "
                     f"cached: {', '.join(cached) if cached else 'none'}")
        steps = fam.steps(size)
        if steps:
            st = fam.entry["steps"]
            how = (f"repos {st['repo']}" if st["kind"] == "repo" else "revisions NAME@" + st["format"].format(n="N"))
            only = f" (seeds {_seed_span([str(s) for s in st['seeds']])})" if "seeds" in st else ""
            lines.append(f"    steps{only}: {how}: {_step_span(steps)}")
    return lines


def add_hub_parser(sub) -> None:
    h = sub.add_parser("hub", help="the catalogue of known multi-seed families on the Hugging Face Hub")
    hs = h.add_subparsers(dest="hub_command", required=True)
    hl = hs.add_parser("list", help="families, sizes, seeds and steps (download size and cached state)")
    hl.add_argument("family", nargs="?", default=None, help="one family (default: all)")
    hl.add_argument("--json", action="store_true", help="the catalogue entries as JSON")
    hl.add_argument("--allow-downloads", action="store_true",
                    help="ask the Hub for the exact file list and download size of each size")


def cmd_hub(args) -> int:
    from . import hub

    fams = [family(args.family)] if args.family else families()
    if args.json:
        out = [{**f.entry, "supported": f.supported} for f in fams]
        print(json.dumps(out, indent=1))
        return 0
    for f in fams:
        print("\n".join(describe(f, exact=hub.downloads_allowed())))
    sys.stdout.flush()
    return 0
