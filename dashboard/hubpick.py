"""The Pick page's Hugging Face Hub controls: the download switch (off until turned on, kept for
the session) and the "Known families" picker (family, size, seed, step) with each checkpoint's
download size and whether it is cached.  The catalogue and the downloads live in the library
(permerge.catalogue, permerge.hub); this module only draws them."""
from __future__ import annotations

import streamlit as st

from dashboard.text import md
from permerge import catalogue, hub

KNOWN = "known family (Hugging Face Hub)"
ALLOW = "hub_allow"  # the session's switch (a plain key: kept while other pages are shown)


def downloads_switch() -> bool:
    """The switch; its state allows downloads for this session's script runs and the jobs it starts."""
    ss = st.session_state
    ss.setdefault(ALLOW, False)
    if "hub_allow_widget" not in ss:
        ss["hub_allow_widget"] = ss[ALLOW]
    on = st.toggle("Download from the Hugging Face Hub", key="hub_allow_widget",
                   help="Off: hub ids are read from the local Hugging Face cache only. On: missing files are "
                        "fetched (config, tokenizer and one weights format; the size is shown first).")
    ss[ALLOW] = bool(on)
    hub.allow_downloads(ss[ALLOW])
    return ss[ALLOW]


@st.cache_data(show_spinner=False, max_entries=256, ttl=300)
def _hub_size(hub_id: str) -> tuple[int, int, str]:
    """(total bytes, bytes still to fetch, commit) from the Hub's file list."""
    token = hub.allow_downloads(True)
    try:
        p = hub.plan(hub_id)
    finally:
        hub._allowed.reset(token)
    return p.total_bytes, p.missing_bytes, p.commit


def size_line(fam: catalogue.Family, size: str, hub_id: str) -> str:
    """The download size of a pick and whether it is cached, in one line."""
    snap = hub.local_snapshot(hub_id)
    if snap is not None and hub.has_weights(snap):
        return f"`{hub_id}`: cached (commit {snap.name[:12]})"
    if st.session_state.get(ALLOW):
        try:
            total, missing, commit = _hub_size(hub_id)
        except Exception as e:  # a one-line CheckpointError
            return f"`{hub_id}`: {e}"
        return (f"`{hub_id}` (commit {commit[:12]}): {hub.fmt_bytes(total)}, "
                + ("cached" if not missing else f"{hub.fmt_bytes(missing)} to download"))
    mb = fam.weights_mb(size)
    return (f"`{hub_id}`: not cached" + (f", about {mb:g} MB to download" if mb else "")
            + " (turn on the download switch to fetch it)")


def known(side: str) -> str | None:
    """A checkpoint of a known family.  The family, size and step are chosen once (in A's column,
    or in B's when only B picks from the catalogue); each side chooses its seed."""
    ss = st.session_state
    fams = catalogue.families()
    by_name = {f.name: f for f in fams}
    shared = side == "A" or ss.get("src_A") != KNOWN
    if shared:
        ss.setdefault("known_family", fams[0].name)
        st.selectbox("Family", list(by_name), key="known_family",
                     format_func=lambda n: f"{by_name[n].title}", help="The catalogue (permerge hub list).")
    fam = by_name[ss.get("known_family", fams[0].name)]
    if not fam.supported:
        st.warning(md(f"{fam.title}: {fam.support_note()}."))
    sizes = fam.sizes()
    if shared:
        if ss.get("known_size") not in sizes:
            ss["known_size"] = sizes[0]
        st.selectbox("Size", sizes, key="known_size")
    size = ss.get("known_size") if ss.get("known_size") in sizes else sizes[0]
    seeds = fam.seeds(size)
    key = f"known_seed_{side}"
    if ss.get(key) not in seeds:
        ss[key] = seeds[min(len(seeds) - 1, side == "B")]
    seed = st.selectbox(f"Seed {side}", seeds, key=key)
    steps = ["final"] + fam.steps(size)
    if shared:
        if ss.get("known_step") not in steps:
            ss["known_step"] = "final"
        st.selectbox("Step", steps, key="known_step", help="An intermediate checkpoint of training (its own repo or "
                                                           "a revision of the seed's repo).")
    step = ss.get("known_step") if ss.get("known_step") in steps else "final"
    try:
        hub_id = fam.hub_id(size, seed, None if step == "final" else step)
    except Exception as e:  # a step the other seed does not have (MultiBERTs: seeds 0-4 only)
        st.error(md(str(e)))
        return None
    st.caption(size_line(fam, size, hub_id))
    return hub_id
