"""The lecture pack names checkpoints and data without local paths unless asked: a pack of a pair whose
folders live under a distinctive folder, with every study it can carry computed (Fig. 4, Tables 1 and
2, Fig. 7, the residual variants, the matcher comparison, the classifier curves with Table 3), holds
neither that folder's path nor the user's home folder; with "Full local paths" it holds the path."""
from pathlib import Path

import pytest

pytest.importorskip("streamlit")

from conftest import VOCAB, make_model, save_checkpoint, write_text  # noqa: E402
from test_glue_and_dist import write_task  # noqa: E402

pytestmark = pytest.mark.usefixtures("app_env")  # this module's own result cache (conftest)

SECRET = "Lecturer Private Zq7-folder"  # a folder name that no other text contains


@pytest.fixture(scope="module")
def pack_files(tmp_path_factory):
    from dashboard.figures import pack_html
    from dashboard.state import Run, job_key, registry
    from permerge import work
    from permerge.align import AlignOptions
    from permerge.pipeline import Job
    from permerge.study import FIG4, TABLE1, TABLE2

    root = tmp_path_factory.mktemp("pack") / SECRET / "models"
    kw = dict(hidden_size=24, num_attention_heads=3, intermediate_size=40, num_hidden_layers=2, vocab_size=len(VOCAB))
    a = save_checkpoint(make_model(31, head="mlm", **kw), root / "seedA")
    b = save_checkpoint(make_model(32, head="mlm", **kw), root / "seedB")
    text = write_text(root / "align.txt", n_words=24000)
    ca = save_checkpoint(make_model(33, head="cls", num_labels=3, **kw), root / "clsA")
    cb = save_checkpoint(make_model(34, head="cls", num_labels=3, **kw), root / "clsB")
    task = write_task(root / "mytask", pair=False)

    job = Job(model_a=str(a), model_b=str(b), data=str(text), tokens=1024, device="cpu", eval_blocks=2)
    options, lambdas = AlignOptions(), 3
    run = Run(job, options, lambdas, job_key("pair", job=job.to_dict(), options=options.to_dict(), lambdas=lambdas), {})
    reg = registry()
    quiet = lambda *args, **info: None  # noqa: E731
    base = Job(**{**job.to_dict(), "model_a": "", "model_b": ""})
    studies = {
        "fig4": work.curves_work(reg, job, FIG4, lambdas)(quiet),
        "methods": work.family_work(reg, base, [(str(a), str(b))], TABLE1[-1:] + TABLE2[:2], lambdas)(quiet),
        "amount": work.data_amount_work(reg, job, options, lambdas)(quiet),
        "start_residual": work.curves_work(reg, job, [o for o in TABLE2 if o.function_preserving], lambdas)(quiet),
        "matchers": work.matchers_work(reg, job, options, lambdas)(quiet),
        "classifiers": work.tasks_work(reg, {"mytask": [(str(ca), str(cb))]}, {"mytask": str(task)}, None, "cpu",
                                       [AlignOptions(), AlignOptions(pooler=True)], lambdas, None)(quiet),
    }
    out = tmp_path_factory.mktemp("packs")
    files = {}
    for full in (False, True):
        f = out / f"pack-{'full' if full else 'names'}.html"
        f.write_text(pack_html(run, full, studies))
        files[full] = f
    return files, root, studies


def test_the_pack_carries_every_study(pack_files):
    files, _, _ = pack_files
    page = files[False].read_text()
    for section in ("Fig. 4", "Tables 1 and 2", "Fig. 7", "Correlation heatmaps", "The residual stream on this pair",
                    "Activation vs weight matching", "Fig. 8 and Table 3"):
        assert section in page, section
    assert "To include" not in page  # nothing left out: every study was computed


def test_the_pack_holds_no_local_path_unless_asked(pack_files):
    files, root, _ = pack_files
    home = str(Path.home())
    names = files[False].read_text()
    for needle in (str(root), str(root.parent), SECRET, home + "/"):
        assert needle not in names, needle
    assert "seedA" in names and "seedB" in names  # named by folder
    from dashboard.state import short
    from permerge.report import pack_file_name

    file_name = pack_file_name((short(str(root / "seedA")), short(str(root / "seedB"))), "x")
    assert "seedA" in file_name and "Zq7" not in file_name and "/" not in file_name
    full = files[True].read_text()
    assert str(root / "seedA") in full and str(root / "seedB") in full
