"""Tables 1 and 2 of the paper: barrier per attention and residual variant over the family's pairs."""
import streamlit as st

from permerge import plots, zoo
from permerge.pipeline import Job
from permerge.study import TABLE1, TABLE2, family_pairs, methods_table
from permerge.ui_state import family_work, job_key, job_outcome, job_panel, jobs, require_run, short

st.title("Methods")
st.markdown(
    "Loss barrier (lower is better) of each alignment method, as the **mean ± standard error over pairs** of "
    "the bundled MLM family. **Table 1** compares the attention variants, with the feed-forward layers aligned "
    "too; **Table 2** aligns the residual stream only. Rows marked *NO* are not function-preserving: their B′ "
    "is not B, so their barrier is not a fair comparison (the paper reports them for their extra freedom).")
run = require_run("the methods tables")

mlms = zoo.list_checkpoints(kind="mlm")
pairs = family_pairs([e["path"] for e in mlms])
if not pairs:
    st.info("The tables need at least two bundled MLMs; more are being built.")
    st.stop()
c1, c2, c3 = st.columns(3)
n_pairs = c1.number_input("Pairs", 1, len(pairs), min(3, len(pairs)),
                          help=f"{len(mlms)} bundled MLM(s) give {len(pairs)} pair(s); about a minute per new pair on CPU.")
lambdas = c2.number_input("λ points", 3, 41, 11, step=2)
which = c3.multiselect("Tables", ["Table 1", "Table 2"], default=["Table 1", "Table 2"])
chosen = pairs[: int(n_pairs)]
st.caption("Pairs: " + "; ".join(f"{short(a)} | {short(b)}" for a, b in chosen)
           + f". Data: bundled alignment text, {run.job.tokens:,} tokens (from this session's run), device "
             f"{run.job.device}.")
options = (TABLE1 if "Table 1" in which else []) + (TABLE2 if "Table 2" in which else [])
base = Job(model_a="", model_b="", data=str(zoo.align_text()), eval_data=str(zoo.eval_text()),
           tokens=run.job.tokens, device=run.job.device, eval_blocks=run.job.eval_blocks)
key = job_key("methods", base=base.to_dict(), pairs=chosen, options=[o.label() for o in options], lambdas=int(lambdas))
if st.button("Compute the tables", type="primary", disabled=not options):
    jobs().submit(key, family_work(base, chosen, options, int(lambdas)), "methods tables")
    st.session_state["methods_key"] = (key, which)

started = st.session_state.get("methods_key")
if started is None:
    st.info("Press **Compute the tables** to run every method on the chosen pairs in the background.")
else:
    skey, swhich = started
    job_panel(skey, "Methods tables")
    res = job_outcome(skey)
    if res is not None:
        _, bars = res
        for name, opts in (("Table 1: attention variants (FF aligned too)", TABLE1),
                           ("Table 2: residual variants (residual only)", TABLE2)):
            if name.split(":")[0] not in swhich:
                continue
            st.subheader(name)
            table = methods_table(bars, opts)
            left, right = st.columns([3, 2])
            with left:
                st.dataframe(table, width="stretch", hide_index=True,
                             column_config={"barrier": st.column_config.NumberColumn("barrier (mean)", format="%.4f"),
                                            "std_err": st.column_config.NumberColumn("standard error", format="%.4f"),
                                            "function_preserving": "function-preserving"})
            with right:
                st.plotly_chart(plots.methods_bar(table), width="stretch")
        st.caption("Standard error is empty with a single pair. Hatched bars: not function-preserving.")
        with st.expander("Every pair"):
            st.dataframe(bars, width="stretch", hide_index=True)
