"""The small things a lecturer trips over: one λ-point default on every page (the run's), the live
curve's axis, the classifiers' aligned colour on a projector, no gap before a heatmap image's colour
bar, and Table 3 saying why one pair per task has no standard error."""
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("streamlit")

from permerge import plots, report, shapes  # noqa: E402
from permerge.align import AlignOptions  # noqa: E402
from test_app_lecture import assert_clean, fake_run, fresh  # noqa: E402

pytestmark = pytest.mark.usefixtures("app_env")


@pytest.mark.parametrize("page", ["pages/methods.py", "pages/matchers.py", "pages/data_amount.py",
                                  "pages/interpolation.py"])
def test_every_study_defaults_to_the_runs_lambda_points(page):
    run = fake_run(AlignOptions(), 0.6, 0.3, tag="lam")  # a run of 5 λ points
    at = fresh()
    at.session_state["run"] = run
    at.run()
    at.switch_page(page).run()
    assert_clean(at)
    values = [n.value for n in at.number_input if n.label == "λ points"]
    assert values and all(v == run.lambdas for v in values), values


def test_the_live_curve_keeps_two_close_points_flat():
    lo, hi = plots.live_range([5.49, 5.50])
    assert hi - lo >= 0.5 and lo < 5.49 and hi > 5.50
    lo, hi = plots.live_range([5.0, 7.0, 6.0])  # a real hump: the points with a margin
    assert lo < 5.0 and hi > 7.0 and hi - lo < 3.0


def _luminance(hex_colour: str) -> float:
    r, g, b = (int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5))
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def test_the_classifiers_aligned_curve_is_not_pale():
    colour = plots.method_color(AlignOptions(ff=True, attention="head-perm", pooler=True).label())
    contrast = (1.0 + 0.05) / (_luminance(colour) + 0.05)  # against a white background
    assert contrast >= 4.5, (colour, contrast)  # WCAG's contrast for text, enough for a projector


def test_a_heatmap_image_has_its_colour_bar_next_to_it():
    fig = plots.heatmap(np.eye(8), heads=2)
    assert report.image_width(fig) < 700  # the matrix is square: no 600 px of white before the bar
    df = pd.DataFrame({"method": "vanilla", "lambda": [0.0, 1.0], "loss": [1.0, 1.0], "function_preserving": True})
    assert report.image_width(plots.curves(df, "loss")) == 1100


def test_table3_names_the_tasks_with_one_pair():
    table = pd.DataFrame({"task": ["style", "topic"], "pairs": [1, 3]})
    assert shapes.one_pair_tasks(table) == ["style"]


def test_feature_correlation_as_grouped_bars_with_standard_errors_or_as_lines():
    df = pd.DataFrame([{"group": f"ff.{i}", "kind": "ff", "layer": i, "point": None, "position": None,
                        "before": 0.1, "after": 0.5, "aligned": True, "before_se": 0.01, "after_se": 0.02}
                       for i in range(3)])
    bars = plots.layer_corr(df)
    assert [t.type for t in bars.data] == ["bar", "bar"] and bars.layout.barmode == "group"
    assert list(bars.data[1].error_y.array) == [0.02] * 3
    lines = plots.layer_corr(df.drop(columns=["before_se", "after_se"]), view="lines")
    assert [t.type for t in lines.data] == ["scatter", "scatter"]
    with pytest.raises(ValueError):
        plots.layer_corr(df, view="pie")
