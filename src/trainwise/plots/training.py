"""Figures of training: loss and metric curves, the learning-rate range test, confusion matrices."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter
from sklearn.metrics import root_mean_squared_error

from trainwise.plots._base import ALERT, PALETTE, _figure, _head, _text


def curves(
    series: Mapping[str, Sequence[float]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    x: Sequence[float] | None = None,
    log_x: bool = False,
    log_y: bool = False,
    marks: Mapping[str, float] | None = None,
    note: str = "",
) -> Figure:
    """One line per named series (same x for all); `marks` draws labelled vertical lines."""
    fig = _figure(8.0, 4.8)
    ax = fig.add_subplot()
    for i, (name, raw) in enumerate(series.items()):
        values = np.asarray(raw, dtype=float)
        xs = np.asarray(x, dtype=float) if x is not None else np.arange(1, len(values) + 1)
        ax.plot(xs[: len(values)], values, color=PALETTE[i % len(PALETTE)], linewidth=1.8, label=_text(name, 40))
    for name, position in (marks or {}).items():
        ax.axvline(position, color=ALERT, linestyle="--", linewidth=1.2, label=_text(name, 40))
    if log_x:
        ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    _no_minor_labels(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if series or marks:
        ax.legend(fontsize=8)
    _head(fig, title, note)
    return fig


def confusion_matrix(matrix: np.ndarray, classes: Sequence[str], *, normalize: bool, title: str = "Confusion matrix",
                     xlabel: str = "predicted", ylabel: str = "true") -> Figure:
    """Counts (or row shares) of true class (rows) against predicted class (columns), or any other two labelings."""
    values = np.asarray(matrix, dtype=float)
    if normalize:
        values = values / np.clip(values.sum(axis=1, keepdims=True), 1, None)
    n = len(classes)
    side = float(np.clip(3.0 + 0.35 * n, 5.0, 12.0))
    fig = _figure(side + 1.2, side)
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else max(values.max(), 1))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=f"share of the {ylabel} class" if normalize else "items")
    ticks = np.arange(n)
    step = max(1, n // 30)  # past 30 classes, label every step-th tick so names stay legible
    ax.set_xticks(ticks[::step], [_text(c, 16) for c in classes][::step], rotation=90, fontsize=7 if n > 15 else 9)
    ax.set_yticks(ticks[::step], [_text(c, 16) for c in classes][::step], fontsize=7 if n > 15 else 9)
    if n <= 15:
        for i in range(n):
            for j in range(n):
                text = f"{values[i, j]:.2f}" if normalize else f"{int(values[i, j])}"
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if values[i, j] > 0.6 * (values.max() or 1) else "black")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    _head(fig, title + (" (normalised by row)" if normalize else ""), f"{int(np.asarray(matrix).sum()):,} items")
    return fig


def per_class_metrics(table: Mapping[str, Sequence[float]], classes: Sequence[str]) -> Figure:
    """Precision, recall and F1 per class as grouped horizontal bars (worst F1 first)."""
    from trainwise.plots._base import _hbars

    order = np.argsort(np.asarray(table["f1"], dtype=float))
    names = [str(classes[i]) for i in order]
    series = [(metric, np.asarray(table[metric], dtype=float)[order], PALETTE[i]) for i, metric in enumerate(("precision", "recall", "f1"))]
    return _hbars("Per-class precision, recall and F1 (worst F1 first)", names, series, xlabel="score", fmt="{:.2f}")


def predicted_vs_true(true: Sequence[float], predicted: Sequence[float], *, name: str = "target") -> Figure:
    """Regression: predictions against truth with the identity line, and residuals against predictions."""
    t, p = np.asarray(true, dtype=float), np.asarray(predicted, dtype=float)
    fig = _figure(12.0, 5.0)
    left, right = fig.subplots(1, 2)
    low, high = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
    left.scatter(t, p, s=10, alpha=0.6, color=PALETTE[0])
    left.plot([low, high], [low, high], color=ALERT, linestyle="--", linewidth=1.2, label="perfect")
    left.set_xlabel(f"true {_text(name, 30)}")
    left.set_ylabel("predicted")
    left.legend(fontsize=8)
    right.scatter(p, t - p, s=10, alpha=0.6, color=PALETTE[1])
    right.axhline(0, color=ALERT, linestyle="--", linewidth=1.2)
    right.set_xlabel("predicted")
    right.set_ylabel("residual (true - predicted)")
    rmse = float(root_mean_squared_error(t, p)) if len(t) else float("nan")
    _head(fig, "Predicted vs true, and residuals", f"{len(t):,} items, RMSE {rmse:.4g}")
    return fig


def learning_curve(sizes: Sequence[int], errors: Sequence[float], fit: tuple[float, float] | None, band: float, full: tuple[int, float], *, metric: str) -> Figure:
    """Validation error against training-set size (log-log) with the power-law fit, its band and the full run."""
    fig = _figure(8.0, 5.0)
    ax = fig.add_subplot()
    ax.scatter(sizes, errors, color=PALETTE[0], zorder=3, label="trained on a fraction")
    if fit is not None:
        a, b = fit
        xs = np.geomspace(min(sizes), full[0] * 1.2, 50)
        ys = a * xs ** (-b)
        ax.plot(xs, ys, color=PALETTE[0], linewidth=1.2, label=f"fit: {a:.3g} * n^-{b:.3g}")
        ax.fill_between(xs, ys / band, ys * band, color=PALETTE[0], alpha=0.15, label=f"band (x/÷ {band:.2f})")
    ax.scatter([full[0]], [full[1]], color=ALERT, marker="*", s=160, zorder=4, label="full run")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _no_minor_labels(ax)
    ax.set_xlabel("training items")
    ax.set_ylabel(f"validation {metric}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    _head(fig, "Learning curve")
    return fig


def _no_minor_labels(ax: Axes) -> None:
    """Log axes label minor ticks (2x10^-2, ...) where they collide or fall off the figure; decades suffice."""
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
