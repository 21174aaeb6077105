"""Every figure renders to a real PNG at 10 and at 100 classes, and its labels never collide."""

from __future__ import annotations

import io
import itertools
import re
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox
from PIL import Image

from trainwise import plots

RNG_SEED = 0


def class_names(n: int) -> list[str]:
    # ~20-character names: the widest a label is expected to get in practice
    return [f"class_with_long_name_{i}" for i in range(n)]


def image(rng: np.random.Generator, channels: int = 3, height: int = 16, width: int = 16) -> np.ndarray:
    return rng.integers(0, 256, (height, width, channels), dtype=np.uint8)


def table(rng: np.random.Generator, n_classes: int, n_rows: int = 200) -> pd.DataFrame:
    frame = pd.DataFrame({f"feature_{i}": rng.normal(size=n_rows) for i in range(15)})
    frame["colour"] = rng.choice(["red", "green", "a_really_long_category_name"], n_rows)
    frame["constant"] = 1.0
    frame.loc[::5, "feature_1"] = np.nan
    frame["label"] = rng.choice(class_names(n_classes), n_rows)
    return frame


def build_all(n: int) -> dict[str, Figure]:
    """Every plot function, fed synthetic data with n classes."""
    rng = np.random.default_rng(RNG_SEED)
    names = class_names(n)
    counts = {c: int(rng.integers(1, 500)) for c in names}
    frame = table(rng, n)
    return {
        "class_distribution": plots.class_distribution(counts),
        # grey and colour images of different sizes side by side
        "sample_grid": plots.sample_grid({c: [image(rng, 1 + 2 * (i % 2), 8 + i, 12) for i in range(8)]
                                          for c in names}),
        "size_histograms": plots.size_histograms(rng.integers(8, 600, 300), rng.integers(8, 600, 300)),
        "channel_stats": plots.channel_stats(rng.random((300, 3)), rng.random((300, 3)) * 0.3),
        "brightness_contrast": plots.brightness_contrast(rng.random(300), rng.random(300) * 0.3),
        "mean_images": plots.mean_images({c: rng.random((12, 12, 1)) for c in names}),
        "duplicate_groups": plots.duplicate_groups(
            [[(image(rng), f"{names[g]} | train/{names[g]}/{k}.png") for k in range(2 + g % 3)]
             for g in range(min(n, 12))]
            + [[(image(rng), f"{names[0]} | a.png"), (image(rng), f"{names[-1]} | b.png")]]),
        "label_distribution_comparison": plots.label_distribution_comparison(
            counts, {c: max(0, v // 10 + int(rng.integers(-2, 3))) for c, v in counts.items()}),
        "distribution_comparison": plots.distribution_comparison(
            rng.normal(size=500), rng.normal(0.3, size=80), "brightness"),
        "image_batch": plots.image_batch(rng.random((min(n, 32), 16, 16, 3)), labels=names[:32]),
        "feature_distributions": plots.feature_distributions(frame, "label", classification=True),
        "feature_distributions_regression": plots.feature_distributions(
            frame.assign(label=rng.normal(size=len(frame))), "label", classification=False),
        "missingness": plots.missingness(frame),
        "correlation_heatmap": plots.correlation_heatmap(frame),
        "target_distribution": plots.target_distribution(frame["label"], classification=True),
        "target_distribution_regression": plots.target_distribution(frame["feature_0"], classification=False),
        "feature_importance": plots.feature_importance({f"{c}_importance": float(rng.random()) for c in names}),
        "feature_drift": plots.feature_drift(pd.DataFrame({"property": names, "statistic": rng.random(n) * 0.4,
                                                           "q_value": rng.random(n) * 0.1}), 0.2),
        "property_auc_heatmap": plots.property_auc_heatmap(
            pd.DataFrame(0.5 + rng.random((n, 9)) / 2, index=names, columns=[f"property_{i}" for i in range(9)]), 0.97),
        "curves": plots.curves({"train loss": np.linspace(2, 0.3, 20), "val loss": np.linspace(2.1, 0.5, 20)},
                               title="Learning curves", xlabel="epoch", ylabel="loss", marks={"best": 15}),
        "confusion_matrix": plots.confusion_matrix(rng.integers(0, 30, (n, n)), names, normalize=n <= 10),
        "per_class_metrics": plots.per_class_metrics(
            {k: rng.random(n) for k in ("precision", "recall", "f1")}, names),
        "predicted_vs_true": plots.predicted_vs_true(rng.normal(size=200), rng.normal(size=200)),
        "learning_curve": plots.learning_curve([100, 250, 500], [0.2, 0.12, 0.08], (2.0, 0.5), 1.5, (1000, 0.06),
                                               metric="error"),
    }


def render(fig: Figure) -> Image.Image:
    """save_png's bytes opened as an image, checked to be a real, non-blank PNG of bounded size."""
    png = plots.save_png(fig)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    img = Image.open(io.BytesIO(png))
    img.verify()  # the whole stream decodes: no truncated or corrupt chunks
    img = Image.open(io.BytesIO(png)).convert("RGB")
    width, height = img.size
    assert 400 <= width <= plots.MAX_W * plots.DPI and 250 <= height <= plots.MAX_H * plots.DPI, img.size
    expected = fig.get_size_inches() * plots.DPI
    assert abs(width - expected[0]) <= 1 and abs(height - expected[1]) <= 1, (img.size, expected)  # Agg floors
    assert len(np.unique(np.asarray(img).reshape(-1, 3), axis=0)) > 2, "a blank figure"
    return img


def drawn(texts: list[Text], renderer: object,
          keep: Callable[[Bbox], bool] = lambda box: True) -> list[tuple[str, Bbox]]:
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_visible() and t.get_text().strip()]
    return [(text, box) for text, box in boxes if keep(box)]


def assert_readable(fig: Figure) -> None:
    """Drawn with the figure's own renderer: no two visible labels overlap and none leaves the figure."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    page = fig.bbox.padded(1)
    for i, ax in enumerate(fig.axes):
        # the locator also returns ticks just past the view limits, which are never drawn
        area = ax.bbox.padded(1)
        groups = {
            "x ticks": drawn(ax.get_xticklabels(), renderer, lambda b, a=area: a.x0 <= (b.x0 + b.x1) / 2 <= a.x1),
            "y ticks": drawn(ax.get_yticklabels(), renderer, lambda b, a=area: a.y0 <= (b.y0 + b.y1) / 2 <= a.y1),
            "texts": drawn(list(ax.texts), renderer),
        }
        for where, boxes in groups.items():
            for text, box in boxes:
                assert page.contains(box.x0, box.y0) and page.contains(box.x1, box.y1), (
                    f"axes {i} {where}: {text!r} is cut off by the figure edge")
            for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2):
                assert not box_a.overlaps(box_b), f"axes {i} {where}: {a!r} overlaps {b!r}"
    ticks = {id(t) for ax in fig.axes for t in ax.get_xticklabels() + ax.get_yticklabels()}
    for text, box in drawn([t for t in fig.findobj(Text) if id(t) not in ticks], renderer):  # titles, notes, legends
        assert page.contains(box.x0, box.y0) and page.contains(box.x1, box.y1), f"{text!r} is cut off"


@pytest.fixture(scope="module", params=[10, 100], ids=["10-classes", "100-classes"])
def figures(request: pytest.FixtureRequest) -> dict[str, Figure]:
    return build_all(request.param)


FIGURES = [
    "class_distribution", "sample_grid", "size_histograms", "channel_stats", "brightness_contrast", "mean_images",
    "duplicate_groups", "label_distribution_comparison", "distribution_comparison", "image_batch",
    "feature_distributions", "feature_distributions_regression", "missingness", "correlation_heatmap",
    "target_distribution", "target_distribution_regression", "feature_importance", "feature_drift",
    "property_auc_heatmap", "curves", "confusion_matrix", "per_class_metrics", "predicted_vs_true", "learning_curve",
]


def test_every_public_plot_function_is_exercised() -> None:
    public = {name for name, fn in vars(plots).items()
              if callable(fn) and not name.startswith("_") and getattr(fn, "__module__", "").startswith(plots.__name__)
              and fn.__annotations__.get("return") == "Figure"}
    assert public == set(FIGURES) - {"feature_distributions_regression", "target_distribution_regression"}
    assert set(build_all(2)) == set(FIGURES)


@pytest.mark.parametrize("name", FIGURES)
def test_figure_renders_and_reads(figures: dict[str, Figure], name: str) -> None:
    fig = figures[name]
    assert fig.get_suptitle(), "every figure has a title"
    render(fig)
    assert_readable(fig)


def test_every_category_bar_has_a_readable_label_at_100_classes() -> None:
    fig = plots.class_distribution({name: i + 1 for i, name in enumerate(class_names(100))})
    shown = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert len(shown) == 100 and min(t.get_fontsize() for t in fig.axes[0].get_yticklabels()) >= 5.5
    assert "imbalance 100.0:1" in fig.get_suptitle()


def test_beyond_max_bars_keeps_the_largest_and_smallest_with_a_note() -> None:
    fig = plots.class_distribution({name: i + 1 for i, name in enumerate(class_names(300))})
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[0] == "class_with_long_name_299" and labels[-1] == "class_with_long_name_0"
    assert "first 50 and last 50 of 300" in fig.get_suptitle()
    assert_readable(fig)
    everything = plots.class_distribution({name: i + 1 for i, name in enumerate(class_names(300))}, max_bars=300)
    assert re.search(r"1 name in 3\s+shown", everything.get_suptitle())  # too many rows even at 5.5 pt: thinned
    assert len(everything.axes[0].get_yticklabels()) == 100
    assert_readable(everything)


def test_sample_grid_caps_rows_and_says_so() -> None:
    rng = np.random.default_rng(RNG_SEED)
    fig = plots.sample_grid({c: [image(rng)] for c in class_names(30)}, per_class=3)
    assert len(fig.axes[0].get_yticklabels()) == 20
    assert "first 20 of 30 classes" in fig.get_suptitle()


@pytest.mark.parametrize("build", [
    lambda: plots.class_distribution({"only": 5}),
    lambda: plots.label_distribution_comparison({"only": 5}, {"only": 1}),
    lambda: plots.sample_grid({"only": [np.zeros((8, 8, 1), np.uint8)]}),
    lambda: plots.mean_images({"only": np.full((8, 8, 3), 0.5)}),
    lambda: plots.image_batch(np.zeros((1, 8, 8, 1), np.uint8)),
    lambda: plots.feature_distributions(pd.DataFrame({"x": [1.0, 2.0], "y": ["a", "a"]}), "y", classification=True),
], ids=["class_distribution", "label_comparison", "sample_grid", "mean_images", "image_batch", "features"])
def test_a_single_class_still_draws(build: Callable[[], Figure]) -> None:
    fig = build()
    render(fig)
    assert_readable(fig)


@pytest.mark.parametrize("build, message", [
    (lambda: plots.duplicate_groups([]), "No duplicate groups"),
    (lambda: plots.class_distribution({}), "No classes"),
    (lambda: plots.missingness(pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})), "No missing values in 2 columns"),
    (lambda: plots.correlation_heatmap(pd.DataFrame({"a": [1.0, 1.0], "b": ["x", "y"]})), "Fewer than two numeric"),
    (lambda: plots.distribution_comparison([], [1.0], "size"), "one side has no values"),
    (lambda: plots.feature_drift(pd.DataFrame(columns=["property", "statistic", "q_value"]), 0.2), "No numeric columns"),
    (lambda: plots.property_auc_heatmap(pd.DataFrame(), 0.97), "No class has enough items"),
])
def test_nothing_to_plot_gives_a_figure_that_says_why(build: Callable[[], Figure], message: str) -> None:
    fig = build()
    assert any(message in t.get_text() for t in fig.axes[0].texts)
    render(fig)


def test_duplicate_groups_put_conflicting_labels_first_and_mark_them() -> None:
    rng = np.random.default_rng(RNG_SEED)
    same = [(image(rng), "cat | a.png"), (image(rng), "cat | b.png")]
    conflict = [(image(rng), "cat | c.png"), (image(rng), "dog | d.png")]
    fig = plots.duplicate_groups([same, conflict])
    first, second = fig.axes[0].get_yticklabels()
    assert first.get_text() == "group 2 · conflict" and second.get_text() == "group 1"
    assert first.get_color() == plots.ALERT and "1 with conflicting labels" in fig.get_suptitle()


def test_nans_and_constant_columns_are_handled() -> None:
    frame = pd.DataFrame({"a": [1.0, np.nan, 3.0, 4.0], "b": [np.nan] * 4, "c": [2.0] * 4,
                          "d": [4.0, 3.0, np.nan, 1.0], "t": [0, 1, 0, 1]})
    corr = plots.correlation_heatmap(frame)
    assert "left out: b, c" in corr.get_suptitle()
    features = plots.feature_distributions(frame, "t", classification=False)
    assert {"all missing", "constant: 2.0"} <= {t.get_text() for ax in features.axes for t in ax.texts}
    missing = plots.missingness(frame)
    assert [t.get_text() for t in missing.axes[0].get_yticklabels()] == ["b", "a", "d"]
    for fig in (corr, features, missing):
        render(fig)


def test_user_text_never_becomes_mathtext() -> None:
    fig = plots.class_distribution({"$x^2$": 3, "a$b": 1})
    render(fig)  # an unescaped "$x^2$" would render as maths, an odd "$" count can fail to parse
    assert {t.get_text() for t in fig.axes[0].get_yticklabels()} == {r"\$x^2\$", r"a\$b"}


def test_ks_statistic_in_the_title() -> None:
    fig = plots.distribution_comparison([0.0, 1.0, 2.0, 3.0], [2.0, 3.0], "width")
    assert "0.500" in fig.get_suptitle()
    assert plots.ks_statistic([0, 1], [0, 1]) == 0.0


def test_bad_image_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        plots.image_batch(np.zeros((2, 8, 8, 2), np.uint8))


def test_figures_do_not_use_pyplot() -> None:
    # pyplot's global figure registry is neither thread-safe nor freed without plt.close
    fig = plots.class_distribution({"a": 1})
    assert type(fig.canvas).__name__ == "FigureCanvasAgg" and fig.canvas.manager is None


def test_wide_tables_show_their_highest_ranked_features_and_say_so() -> None:
    rng = np.random.default_rng(RNG_SEED)
    frame = pd.DataFrame(rng.normal(size=(300, 192)), columns=[f"f{i:03d}" for i in range(192)])
    frame["f150"] = frame["f007"] * 2 + rng.normal(scale=0.01, size=300)  # the strongest pair, outside the ranked 30
    frame["label"] = rng.choice(["a", "b"], 300)
    ranking = {f"f{i:03d}": float(i) for i in range(192)}  # the last columns rank highest
    panels = plots.feature_distributions(frame, "label", classification=True, ranking=ranking)
    assert [ax.get_title() for ax in panels.axes[:12]] == [f"f{i:03d}" for i in range(191, 179, -1)]
    assert "the 12 of 192 features with the highest mutual information" in panels.get_suptitle()
    heatmap = plots.correlation_heatmap(frame, ranking=ranking)
    shown = [t.get_text() for t in heatmap.axes[0].get_yticklabels()]
    assert shown[0] == "f191" and "f000" not in shown and len(shown) <= 30
    assert re.search(r"the 30 of 192 numeric columns with the highest\s+mutual information", heatmap.get_suptitle())
    assert re.search(r"strongest pair of all: f007 and f150,\s+\|r\| = 1.00", heatmap.get_suptitle())
    for fig in (panels, heatmap):
        render(fig)
        assert_readable(fig)


def test_feature_drift_marks_what_drifts_and_keeps_the_largest() -> None:
    drift = pd.DataFrame({"property": [f"c{i}" for i in range(60)], "statistic": np.linspace(0.01, 0.5, 60),
                          "q_value": [0.5] * 58 + [0.01, 0.01]})
    fig = plots.feature_drift(drift, 0.2)
    bars = fig.axes[0].containers[0]
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[0] == "c59" and len(bars) == 40 and "the 40 largest shown" in fig.get_suptitle()
    assert "2 columns drift" in fig.get_suptitle()
    colours = [bar.get_facecolor() for bar in bars]
    assert colours[0] == colours[1] != colours[2] and colours[2] != colours[-1]  # drifts, over only, neither
    assert any(line.get_xdata()[0] == 0.2 for line in fig.axes[0].lines)  # the threshold
