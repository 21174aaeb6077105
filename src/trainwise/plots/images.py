"""Figures of image data: classes, samples, sizes, channels, duplicates, batches."""


from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from trainwise.plots._base import (
    _CELL,
    _GAP,
    ALERT,
    MAIN,
    PALETTE,
    SECOND,
    _columns,
    _figure,
    _grid,
    _hbars,
    _head,
    _hist,
    _message,
    _plural,
    _text,
    _top_bottom,
)

log = logging.getLogger(__name__)


def class_distribution(counts: Mapping[str, int], title: str = "Class distribution", *,
                       max_bars: int = 100) -> Figure:
    """Samples per class, largest first, with the imbalance ratio (largest/smallest) in the title."""
    if not counts:
        return _message(title, "No classes to show.")
    items = sorted(((str(k), int(v)) for k, v in counts.items()), key=lambda kv: (-kv[1], kv[0]))
    largest, smallest = items[0][1], items[-1][1]
    ratio = f"imbalance {largest / smallest:.1f}:1 (largest/smallest)" if smallest > 0 else "a class has no samples"
    shown, cut = _top_bottom(items, max_bars)
    note = f"{_plural(len(items), 'class')}, {_plural(sum(v for _, v in items), 'sample')}, {ratio}"
    note += f"; {cut}" if cut else ""
    return _hbars(title, [k for k, _ in shown], [("samples", np.array([v for _, v in shown]), MAIN)],
                  xlabel="samples", note=note, fmt="{:,.0f}", split_at=max_bars // 2 if cut else None)


def sample_grid(images_by_class: Mapping[str, Sequence[np.ndarray]], per_class: int = 8, *,
                max_classes: int = 20) -> Figure:
    """A row of example images per class, labelled with the class name; the first `max_classes` classes."""
    title = "Samples per class"
    names = list(images_by_class)[:max_classes]
    if not names:
        return _message(title, "No images to show.")
    note = f"first {len(names)} of {len(images_by_class)} classes" if len(images_by_class) > len(names) else ""
    rows = [list(images_by_class[n])[:per_class] for n in names]
    fig, _ = _grid(title, rows, row_labels=names, note=note)
    return fig


def size_histograms(widths: Sequence[int], heights: Sequence[int]) -> Figure:
    """Widths, heights and aspect ratios (width/height) of the images, one panel each."""
    w, h = np.asarray(widths, np.float64), np.asarray(heights, np.float64)
    if w.shape != h.shape:
        raise ValueError(f"widths and heights differ in length: {w.size} vs {h.size}")
    fig = _figure(13.0, 4.0)
    axes = fig.subplots(1, 3)
    _hist(axes[0], w, title="Width", xlabel="pixels")
    _hist(axes[1], h, title="Height", xlabel="pixels")
    _hist(axes[2], w / np.where(h > 0, h, np.nan), title="Aspect ratio", xlabel="width / height", colour=SECOND)
    _head(fig, "Image sizes", _plural(w.size, "image"))
    return fig


def channel_stats(means: np.ndarray, stds: np.ndarray, channel_names: Sequence[str] | None = None) -> Figure:
    """Per-image means and standard deviations of each channel (arrays shaped (N, C), values 0..1)."""
    m, s = np.atleast_2d(np.asarray(means, np.float64)), np.atleast_2d(np.asarray(stds, np.float64))
    if m.shape != s.shape:
        raise ValueError(f"means and stds differ in shape: {m.shape} vs {s.shape}")
    c = m.shape[1]
    names = list(channel_names) if channel_names is not None else (
        ["grey"] if c == 1 else ["R", "G", "B"] if c == 3 else [f"channel {i}" for i in range(c)])
    if len(names) != c:
        raise ValueError(f"{len(names)} channel names for {c} channels: {names}")
    # red, green and blue drawn as Okabe-Ito's vermillion, bluish green and blue: still told apart
    colours = ["0.3"] if c == 1 else [ALERT, PALETTE[2], MAIN] if c == 3 else list(PALETTE)
    fig = _figure(12.0, 4.5)
    for ax, values, what in zip(fig.subplots(1, 2), (m, s), ("mean", "standard deviation"), strict=True):
        upper = 1.0 if what == "mean" else max(0.5, float(np.nanmax(values, initial=0.0)))  # stds rarely pass 0.5
        for i in range(c):
            ax.hist(values[:, i], bins=40, range=(0.0, upper), histtype="step", linewidth=1.8,
                    color=colours[i % len(colours)], label=_text(names[i]))
        ax.set_title(f"Per-image {what}", fontsize=10)
        ax.set_xlabel(f"{what} (0..1)")
        ax.set_ylabel("images")
        ax.legend(fontsize=8)
    _head(fig, "Channel statistics", f"{_plural(m.shape[0], 'image')}, {_plural(c, 'channel')}")
    return fig


def brightness_contrast(brightness: Sequence[float], contrast: Sequence[float]) -> Figure:
    """Histograms of per-image brightness (mean intensity) and contrast (intensity std)."""
    fig = _figure(11.0, 4.0)
    left, right = fig.subplots(1, 2)
    _hist(left, brightness, title="Brightness", xlabel="mean intensity")
    _hist(right, contrast, title="Contrast", xlabel="intensity standard deviation", colour=SECOND)
    _head(fig, "Brightness and contrast", _plural(len(brightness), "image"))
    return fig


def mean_images(mean_by_class: Mapping[str, np.ndarray], *, max_classes: int = 100) -> Figure:
    """The mean image of each class (float (H, W, C) arrays in 0..1), captioned with the class name."""
    title = "Mean image per class"
    names = list(mean_by_class)[:max_classes]
    if not names:
        return _message(title, "No classes to show.")
    ncols = _columns(len(names), captioned=True)
    rows = [names[i:i + ncols] for i in range(0, len(names), ncols)]
    note = f"first {len(names)} of {len(mean_by_class)} classes" if len(mean_by_class) > len(names) else ""
    fig, _ = _grid(title, [[mean_by_class[n] for n in row] for row in rows], captions=rows, note=note)
    return fig


def duplicate_groups(groups: Sequence[Sequence[tuple[np.ndarray, str]]], max_groups: int = 10, *,
                     max_per_group: int = 6) -> Figure:
    """Each group of duplicates as a row of captioned images ("label | path"). Rows whose captions
    carry more than one label are framed in vermillion and listed first: those are the ones to fix."""
    title = "Duplicate groups"
    groups = [list(g) for g in groups if len(g)]
    if not groups:
        return _message(title, "No duplicate groups found.")
    labels = [{cap.split("|", 1)[0].strip() for _, cap in g if "|" in cap} for g in groups]
    order = sorted(range(len(groups)), key=lambda i: len(labels[i]) <= 1)  # stable: conflicts first
    shown = order[:max_groups]
    n_conflicts = sum(len(lab) > 1 for lab in labels)
    note = f"{len(groups)} groups, {n_conflicts} with conflicting labels" + (
        f"; first {len(shown)} shown" if len(groups) > len(shown) else "")
    rows = [groups[i][:max_per_group] for i in shown]
    row_labels = [f"group {i + 1}" + (" · conflict" if len(labels[i]) > 1 else "")
                  + (f" (+{len(groups[i]) - max_per_group})" if len(groups[i]) > max_per_group else "")
                  for i in shown]
    fig, ax = _grid(title, [[img for img, _ in r] for r in rows], captions=[[cap for _, cap in r] for r in rows],
                    row_labels=row_labels, note=note)
    pitch = _CELL + _CELL * 2 // 5 + _GAP
    for r, i in enumerate(shown):
        if len(labels[i]) > 1:
            ax.add_patch(Rectangle((_GAP / 2, _GAP / 2 + r * pitch), len(rows[r]) * (_CELL + _GAP), pitch,
                                   fill=False, edgecolor=ALERT, linewidth=2.5))
    for label in ax.get_yticklabels():
        if "conflict" in label.get_text():
            label.set_color(ALERT)
    return fig


def label_distribution_comparison(full: Mapping[str, int], sample: Mapping[str, int], *,
                                  max_bars: int = 100) -> Figure:
    """Each class's share (%) of the sample beside its share of the full data, by full share."""
    title = "Class shares: sample vs full"
    names = sorted(set(map(str, full)) | set(map(str, sample)), key=lambda k: (-full.get(k, 0), k))
    if not names:
        return _message(title, "No classes to compare.")
    tf, ts = max(sum(full.values()), 1), max(sum(sample.values()), 1)
    share_full = {k: 100 * full.get(k, 0) / tf for k in names}
    share_sample = {k: 100 * sample.get(k, 0) / ts for k in names}
    worst = max(names, key=lambda k: abs(share_sample[k] - share_full[k]))
    shown, cut = _top_bottom(names, max_bars)
    note = (f"{_plural(len(names), 'class')}; largest gap {abs(share_sample[worst] - share_full[worst]):.2f} points "
            f"({_text(worst)})" + (f"; {cut}" if cut else ""))
    return _hbars(title, shown, [("full", np.array([share_full[k] for k in shown]), MAIN),
                                 ("sample", np.array([share_sample[k] for k in shown]), SECOND)],
                  xlabel="share of samples (%)", note=note, fmt="{:.1f}", split_at=max_bars // 2 if cut else None)


def ks_statistic(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the two ECDFs."""
    x, y = np.sort(np.asarray(a, np.float64)), np.sort(np.asarray(b, np.float64))
    if x.size == 0 or y.size == 0:
        return float("nan")
    grid = np.concatenate([x, y])
    gaps = np.searchsorted(x, grid, "right") / x.size - np.searchsorted(y, grid, "right") / y.size
    return float(np.max(np.abs(gaps)))


def distribution_comparison(full: Sequence[float], sample: Sequence[float], name: str,
                            statistic: float | None = None) -> Figure:
    """The ECDFs of one property in the full data and in the sample, overlaid; KS statistic in the title."""
    f = np.asarray(full, np.float64)
    s = np.asarray(sample, np.float64)
    f, s = f[np.isfinite(f)], s[np.isfinite(s)]
    title = f"{name}: sample vs full"
    if f.size == 0 or s.size == 0:
        return _message(title, "Nothing to compare: one side has no values.")
    ks = ks_statistic(f, s) if statistic is None else statistic
    fig = _figure(8.0, 5.0)
    ax = fig.add_subplot()
    ax.ecdf(f, color=MAIN, linewidth=2, label=f"full (n={f.size:,})")
    ax.ecdf(s, color=SECOND, linewidth=2, linestyle="--", label=f"sample (n={s.size:,})")
    ax.set_xlabel(_text(name, 60))
    ax.set_ylabel("fraction of items ≤ x")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    _head(fig, title, f"Kolmogorov-Smirnov statistic {ks:.3f}")
    return fig


def image_batch(images: np.ndarray, labels: Sequence[str] | None = None, title: str = "Augmented batch", *,
                max_images: int = 64) -> Figure:
    """A batch (N, H, W, C uint8, or floats 0..1) as a grid, captioned with `labels` when given."""
    batch = list(np.asarray(images)[:max_images])
    if not batch:
        return _message(title, "Empty batch.")
    ncols = _columns(len(batch), captioned=labels is not None)
    rows = [batch[i:i + ncols] for i in range(0, len(batch), ncols)]
    captions = None if labels is None else [list(map(str, labels[i:i + ncols])) for i in range(0, len(batch), ncols)]
    note = f"first {len(batch)} of {len(images)}" if len(images) > len(batch) else ""
    fig, _ = _grid(title, rows, captions=captions, note=note)
    return fig


def property_auc_heatmap(aucs: pd.DataFrame, threshold: float, *, max_classes: int = 30) -> Figure:
    """Classes (rows) by image properties (columns): how well each property alone picks out the class
    (one-vs-rest AUC, 0.5..1); cells over the threshold are outlined. Past `max_classes` rows, the
    classes with the highest AUC are shown, with a note."""
    title = "Classes picked out by one image property (one-vs-rest AUC)"
    if aucs.empty:
        return _message(title, "No class has enough items to judge.")
    order = aucs.max(axis=1).sort_values(ascending=False, kind="stable").index
    shown = aucs.loc[order[:max_classes]]
    rows, cols = shown.shape
    fig = _figure(2.5 + 0.55 * cols, 2.0 + 0.3 * rows)
    ax = fig.add_subplot()
    image = ax.imshow(shown.to_numpy(float), cmap="Oranges", vmin=0.5, vmax=1.0, aspect="auto")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="one-vs-rest AUC")
    ax.set_xticks(np.arange(cols), [_text(c, 16) for c in shown.columns], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(np.arange(rows), [_text(c, 16) for c in shown.index], fontsize=8 if rows > 15 else 9)
    for i, j in zip(*np.nonzero(shown.to_numpy(float) > threshold), strict=True):
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor=ALERT, linewidth=2.5))
    ax.set_xlabel("property")
    ax.set_ylabel("class")
    note = f"outlined: over {threshold:g}" + (f"; the {rows} of {len(aucs)} classes with the highest AUC" if rows < len(aucs) else "")
    _head(fig, title, note)
    return fig
