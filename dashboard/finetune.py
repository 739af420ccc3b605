"""The classifier section's "make a fine-tuned pair" panel and the user's classifier pairs per task.

No computation here: the panel submits ``permerge.tune.pair_work`` to the job manager (whole-job
progress line and Cancel through ``job_panel``) and keeps the pairs it made, and pairs of the
user's own classifier folders, in the session, for the classifier curves and Table 3.
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from permerge import zoo
from permerge.errors import PermergeError

from .state import exports_root, job_key, job_result, jobs, name
from .text import md

USER_PAIRS = "user_cls_pairs"  # session: [{"task": label, "dir": task folder, "pair": (a, b)}]
FT_KEY = "ft_key"
BASE_SOURCES = ("this run's pair", "the bundled family")


def user_pairs() -> list[dict]:
    return st.session_state.setdefault(USER_PAIRS, [])


def add_user_pair(task_dir: str, pair: tuple[str, str]) -> str:
    """Offer a pair of classifiers for the task folder; returns the task's label (the folder's
    name, marked when a bundled task of that name has another folder)."""
    folder = str(Path(task_dir).expanduser().resolve())
    label = Path(folder).name
    if label in zoo.list_tasks() and str(zoo.task_dir(label).resolve()) != folder:
        label = f"{label} (yours)"
    entry = {"task": label, "dir": folder, "pair": (str(pair[0]), str(pair[1]))}
    if entry not in user_pairs():
        user_pairs().append(entry)
    return label


def classifier_tasks(bundled: dict[str, list[tuple[str, str]]]) -> tuple[dict, dict]:
    """(pairs per task, task folder per task): the bundled classifiers' and the user's, the user's
    pairs first in their task (so that "pairs per task" takes them first)."""
    pairs = {t: list(p) for t, p in bundled.items()}
    dirs = {t: str(zoo.task_dir(t)) for t in bundled}
    for e in reversed(user_pairs()):
        mine = tuple(e["pair"])
        pairs[e["task"]] = [mine] + [p for p in pairs.get(e["task"], []) if p != mine]
        dirs[e["task"]] = e["dir"]
    return pairs, dirs


def make_pair_panel(run) -> None:
    """Base pair (this run's, or two of the bundled MLMs), task folder, head seed, epochs: a
    background job; the finished pair is offered below."""
    from permerge.training import HEAD_SEED, FinetuneRecipe
    from permerge.tune import pair_work

    with st.expander("Make a fine-tuned pair", expanded=st.session_state.get(FT_KEY) is not None):
        st.markdown("Fine-tune two base checkpoints (MLM or causal LM) into classifiers on a task folder, with "
                    "**the same classifier-head initialisation** for both (the paper's setting), as "
                    "`permerge finetune --pair` does. The pair is written under the dashboard's exports folder "
                    "and offered below for the classifier curves and Table 3.")
        src = st.radio("Base pair", BASE_SOURCES, horizontal=True, key="ft_source")
        if src == BASE_SOURCES[0]:
            a, b = run.job.model_a, run.job.model_b
        else:
            mlms = [e["path"] for e in zoo.list_checkpoints(kind="mlm")]
            c1, c2 = st.columns(2)
            a = c1.selectbox("Base A", mlms, index=0, format_func=name, key="ft_a") if mlms else None
            b = c2.selectbox("Base B", mlms, index=min(1, len(mlms) - 1), format_func=name, key="ft_b") if mlms else None
        st.caption(f"Bases: {md(name(a)) if a else '–'} | {md(name(b)) if b else '–'}")
        default_task = str(zoo.task_dir("style")) if "style" in zoo.list_tasks() else ""
        st.session_state.setdefault("ft_task", default_task)
        task = st.text_input("Task folder (train.tsv, dev.tsv; a GLUE task as distributed is recognised by its "
                             "name)", key="ft_task")
        c1, c2, c3, c4 = st.columns(4)
        head_seed = c1.number_input("Head seed", 0, 2**31 - 1, HEAD_SEED, key="ft_head_seed",
                                    help="The classifier head's initialisation: the same for both bases.")
        epochs = c2.number_input("Epochs", 0.05, 20.0, 3.0, step=0.5, key="ft_epochs")
        max_ex = c3.number_input("Training examples (0: all)", 0, 10**7, 0, step=100, key="ft_max")
        seed = c4.number_input("Data-order seed", 0, 2**31 - 1, 0, key="ft_seed")
        recipe = FinetuneRecipe(epochs=float(epochs), max_examples=int(max_ex) or None)
        key = job_key("finetune", bases=[a, b], task=task, head_seed=int(head_seed), seed=int(seed),
                      recipe=recipe.to_dict(), device=run.job.device)
        if st.button("Fine-tune the pair", key="ft_btn", disabled=not (a and b and task.strip())):
            try:
                fn = pair_work([a, b], task.strip(), exports_root() / "finetuned", head_seed=int(head_seed),
                               seed=int(seed), recipe=recipe, device=run.job.device)
            except PermergeError as e:  # checked before anything runs
                st.error(md(e))
            else:
                jobs().submit(key, fn, "fine-tuned pair")
                st.session_state[FT_KEY] = key
        shown = st.session_state.get(FT_KEY)
        if shown is not None:
            res = job_result(shown, "Fine-tuning the pair")
            if res is not None:
                label = add_user_pair(res["task"], res["pair"])
                shown_m = "; ".join(
                    f"{md(Path(r['path'] if 'path' in r else p).name)}: " + ", ".join(
                        f"{k[4:]} {v:.3f}" for k, v in r["metrics"].items() if k.startswith("dev_") and
                        isinstance(v, float))
                    for r, p in zip(res["records"], res["pair"]))
                st.success(f"Fine-tuned pair ready{' (reused)' if res.get('reused') else ''}: {shown_m}. "
                           f"It is offered below under the task **{md(label)}**.")
    with st.expander("Add a pair of your own classifiers"):
        c1, c2 = st.columns(2)
        ua = c1.text_input("Classifier A (folder or hub id)", key="up_a")
        ub = c2.text_input("Classifier B", key="up_b")
        ut = st.text_input("Its task folder (dev.tsv for the curves)", key="up_task")
        if st.button("Add the pair", key="up_btn", disabled=not (ua.strip() and ub.strip() and ut.strip())):
            from permerge.checkpoints import read_config, validate_pair
            from permerge.data import is_task_folder

            try:
                validate_pair(read_config(ua.strip()), read_config(ub.strip()))
                if not is_task_folder(ut.strip()):
                    raise PermergeError(f"{ut.strip()} is not a task folder (dev.tsv)")
            except PermergeError as e:
                st.error(md(e))
            else:
                st.success(f"Added under the task **{md(add_user_pair(ut.strip(), (ua.strip(), ub.strip())))}**.")
        if user_pairs():
            st.caption("Your pairs: " + "; ".join(f"{md(e['task'])}: {md(name(e['pair'][0]))} | "
                                                  f"{md(name(e['pair'][1]))}" for e in user_pairs()))
