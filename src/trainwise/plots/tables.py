"""Figures of tables: feature distributions, missing values, correlations, importance."""


from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from trainwise.plots._base import (
    ALERT,
    MAIN,
    MAX_H,
    OTHER,
    PALETTE,
    SECOND,
    _clamp,
    _figure,
    _fit_labels,
    _hbars,
    _head,
    _hist,
    _message,
    _text,
)
from trainwise.plots.images import class_distribution

log = logging.getLogger(__name__)


def _is_numeric(col: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)


def _ranked(columns: list, ranking: Mapping[str, float] | None, limit: int, method: str, noun: str) -> tuple[list, str]:
    """The first `limit` columns, or with a ranking the `limit` highest-ranked ones (in rank order),
    and a note saying which were kept when some were left out."""
    if len(columns) <= limit:
        return columns, ""
    if not ranking:
        return columns[:limit], f"first {limit} of {len(columns)} {noun}"
    order = sorted(columns, key=lambda c: -ranking.get(str(c), -math.inf))
    return order[:limit], f"the {limit} of {len(columns)} {noun} with the highest {method}"


def feature_distributions(frame: pd.DataFrame, target: str, *, classification: bool,
                          max_features: int = 12, ranking: Mapping[str, float] | None = None,
                          method: str = "mutual information") -> Figure:
    """One panel per feature: histograms coloured by class (classification) or feature-vs-target
    scatter (regression, hexbin past 2,000 rows); categorical features as bars of their top categories.
    Past `max_features`, the highest by `ranking` (e.g. importance, called `method`), else the first."""
    title = "Feature distributions"
    features = [c for c in frame.columns if c != target]
    if not features:
        return _message(title, "No features besides the target.")
    shown, kept = _ranked(features, ranking, max_features, method, "features")
    y = frame[target]
    notes = [kept] if kept else []
    groups: list[tuple[str, pd.Series, str]] = []
    if classification:
        top = y.value_counts().index
        groups = [(_text(c), y == c, PALETTE[i]) for i, c in enumerate(top[:7])]
        if len(top) > 7:  # more colours than this cannot be told apart; the rest share grey
            groups.append(("other", y.isin(top[7:]), OTHER))
            notes.append(f"coloured: the 7 largest of {len(top)} classes")
    ncols = min(4, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    fig = _figure(3.4 * ncols + 0.5, 2.6 * nrows + 1.0)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, name in zip(axes, shown, strict=False):  # the grid may have spare panels
        col = frame[name]
        ax.set_title(_text(name, 32), fontsize=9)
        ax.tick_params(labelsize=7)
        if col.nunique(dropna=True) < 2:  # nothing to draw: say what the column holds instead
            what = "all missing" if col.notna().sum() == 0 else f"constant: {_text(col.dropna().iloc[0], 20)}"
            ax.text(0.5, 0.5, what, transform=ax.transAxes, ha="center", va="center", color="0.4")
            ax.set_xticks([])
            ax.set_yticks([])
        elif not _is_numeric(col):
            top_cats = col.astype(str).value_counts().head(10)
            ax.barh(np.arange(len(top_cats)), top_cats.to_numpy(), color=MAIN)
            _fit_labels(ax, "y", list(top_cats.index), 2.6 * 72 * 0.6, largest=7.0, limit=16)
            ax.invert_yaxis()
            ax.set_xlabel("count", fontsize=8)
        elif classification:
            # bins for the rows a class has, not the whole frame: a class's outline stays smooth
            n_bins = int(_clamp(2 * math.sqrt(len(col) / max(len(groups), 1)), 8, 30))
            bins = np.histogram_bin_edges(col.dropna().to_numpy(np.float64), bins=n_bins)
            for label, mask, colour in groups:
                # density, so a small class's shape is not flattened by a large one
                ax.hist(col[mask].dropna().to_numpy(np.float64), bins=bins, density=True, histtype="step",
                        linewidth=1.4, color=colour, label=label)
            ax.set_ylabel("density", fontsize=8)
        elif col.notna().sum() > 2000:
            ok = col.notna() & y.notna()
            ax.hexbin(col[ok].to_numpy(np.float64), y[ok].to_numpy(np.float64), gridsize=30, cmap="viridis",
                      mincnt=1)
        else:
            ax.scatter(col, y, s=6, alpha=0.5, color=MAIN)
        if _is_numeric(col) and not classification:
            ax.set_ylabel(_text(target), fontsize=8)
    for ax in axes[len(shown):]:
        ax.axis("off")
    if groups:
        handles = [Rectangle((0, 0), 1, 1, fill=False, edgecolor=c, linewidth=1.4) for _, _, c in groups]
        fig.legend(handles, [g[0] for g in groups], loc="outside lower center", ncols=min(4, len(groups)),
                   fontsize=8)
    _head(fig, title, "; ".join(notes))
    return fig


def missingness(frame: pd.DataFrame, *, max_columns: int = 40) -> Figure:
    """The share of missing values per column, largest first; a plain statement when there are none."""
    title = "Missing values"
    share = (frame.isna().mean() * 100).sort_values(ascending=False, kind="stable")
    share = share[share > 0]
    if share.empty:
        return _message(title, f"No missing values in {frame.shape[1]} columns x {frame.shape[0]:,} rows.")
    note = f"{len(share)} of {frame.shape[1]} columns have missing values; {frame.shape[0]:,} rows"
    if len(share) > max_columns:
        note += f"; the {max_columns} worst shown"
    share = share.iloc[:max_columns]
    fig = _hbars(title, [str(c) for c in share.index], [("missing", share.to_numpy(), ALERT)],
                 xlabel="missing (%)", note=note, fmt="{:.1f}%")
    fig.axes[0].set_xlim(0, 110)  # a fixed scale: 5 % must look small
    return fig


def correlation_heatmap(frame: pd.DataFrame, max_features: int = 30, *, ranking: Mapping[str, float] | None = None,
                        method: str = "mutual information") -> Figure:
    """Pearson correlations of the numeric columns, numbers written in when there are few. Past
    `max_features`, the highest by `ranking` (else the first), and the strongest pair of all in the note."""
    title = "Correlations"
    numeric = frame[[c for c in frame.columns if _is_numeric(frame[c])]]
    constant = [str(c) for c in numeric.columns if numeric[c].nunique(dropna=True) < 2]
    numeric = numeric.drop(columns=constant)
    notes = []
    if constant:  # their correlations are undefined (NaN): a blank row would only puzzle
        notes.append("constant or empty, left out: " + ", ".join(_text(c) for c in constant[:5])
                     + ("…" if len(constant) > 5 else ""))
    if numeric.shape[1] < 2:
        return _message(title, "Fewer than two numeric columns that vary: nothing to correlate.")
    if numeric.shape[1] > max_features:
        # all pairs are cheap to compute (192 columns: 18,336 pairs in milliseconds); only drawing them is not
        everything = numeric.corr().abs().to_numpy(copy=True)
        np.fill_diagonal(everything, np.nan)
        shown, kept = _ranked(list(numeric.columns), ranking, max_features, method, "numeric columns")
        notes.append(kept)
        if not np.isnan(everything).all():  # columns with no rows in common have no correlation at all
            i, j = np.unravel_index(np.nanargmax(everything), everything.shape)
            notes[-1] += (f"; the strongest pair of all: {_text(numeric.columns[i])} and {_text(numeric.columns[j])}, "
                          f"|r| = {everything[i, j]:.2f}")
        numeric = numeric[shown]
    corr = numeric.corr().to_numpy()
    n = corr.shape[0]
    side = _clamp(3.5 + 0.3 * n, 6.0, MAX_H)
    fig = _figure(side + 1.5, side)
    ax = fig.add_subplot()
    image = ax.imshow(corr, cmap="RdBu_r", vmin=-1, vmax=1)  # ColorBrewer's diverging map, colour-blind safe
    fig.colorbar(image, ax=ax, shrink=0.8, label="Pearson r")
    names = [str(c) for c in numeric.columns]
    span = (side - 3.0) * 72  # the room left for the matrix once the labels and title are placed
    _fit_labels(ax, "x", names, span, rotation=90)
    _fit_labels(ax, "y", names, span)
    if n <= 12:
        for (i, j), r in np.ndenumerate(corr):
            ax.text(j, i, f"{r:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if abs(r) > 0.6 else "black")  # stays legible on the dark ends
    _head(fig, title, "; ".join(notes))
    return fig


def target_distribution(values: pd.Series, *, classification: bool) -> Figure:
    """Class counts (classification) or a histogram of the target (regression)."""
    name = str(values.name) if values.name is not None else "target"
    if classification:
        return class_distribution(values.dropna().astype(str).value_counts().to_dict(), title=f"Target: {name}")
    fig = _figure(8.0, 4.5)
    ax = fig.add_subplot()
    _hist(ax, values.to_numpy(np.float64, na_value=np.nan), title="", xlabel=_text(name, 60))
    missing = int(values.isna().sum())
    _head(fig, f"Target: {name}", f"{values.size - missing:,} values" + (f", {missing:,} missing" if missing else ""))
    return fig


def feature_importance(scores: Mapping[str, float], method: str = "mutual information", *,
                       top: int = 30) -> Figure:
    """Features by importance score, highest first, the top `top` of them."""
    title = f"Feature importance ({method})"
    if not scores:
        return _message(title, "No features scored.")
    items = sorted(((str(k), float(v)) for k, v in scores.items()), key=lambda kv: -kv[1])
    note = f"top {top} of {len(items)} features" if len(items) > top else f"{len(items)} features"
    return _hbars(title, [k for k, _ in items[:top]], [("score", np.array([v for _, v in items[:top]]), MAIN)],
                  xlabel=method, note=note, fmt="{:.3g}")


def feature_drift(drift: pd.DataFrame, threshold: float, *, fdr: float = 0.05, max_bars: int = 40,
                  title: str = "Sample vs full: KS statistic per column",
                  xlabel: str = "Kolmogorov-Smirnov statistic (sample vs full)") -> Figure:
    """Kolmogorov-Smirnov statistic per column (sample vs full, or any two sets), largest first, with the threshold.

    `drift` has columns property, statistic and q_value (Benjamini-Hochberg adjusted p). A column
    drifts when both its statistic is over the threshold and its q-value under `fdr`: red; one of
    the two: orange; neither: blue. Past `max_bars` columns the largest are shown, with a note.
    """
    if drift.empty:
        return _message(title, "No numeric columns to compare.")
    ordered = drift.sort_values("statistic", ascending=False, kind="stable")
    shown = ordered.head(max_bars)
    over = shown["statistic"].to_numpy() > threshold
    significant = shown["q_value"].to_numpy() < fdr
    drifted = int(((ordered["statistic"] > threshold) & (ordered["q_value"] < fdr)).sum())
    verdict = {0: "none drifts", 1: "1 column drifts"}.get(drifted, f"{drifted} columns drift")
    note = (f"{len(ordered)} numeric columns, largest first; {verdict} (KS over {threshold:g} and "
            f"Benjamini-Hochberg q < {fdr:g})" + (f"; the {len(shown)} largest shown" if len(shown) < len(ordered) else ""))
    fig = _hbars(title, [str(name) for name in shown["property"]], [("KS", shown["statistic"].to_numpy(np.float64), MAIN)],
                 xlabel=xlabel, note=note, fmt="{:.3f}")
    ax = fig.axes[0]
    colours = np.where(over & significant, ALERT, np.where(over | significant, SECOND, MAIN))
    for bar, colour in zip(ax.containers[0], colours, strict=True):
        bar.set_color(colour)
    ax.axvline(threshold, color="0.2", linestyle="--", linewidth=1.2)  # counts in the autoscaled x range: always in view
    handles = [Rectangle((0, 0), 1, 1, color=c) for c in (ALERT, SECOND, MAIN)]
    handles.append(ax.lines[-1])
    labels = [f"drifts: over the threshold, q < {fdr:g}", f"over the threshold or q < {fdr:g}, not both", "neither",
              f"threshold {threshold:g}"]
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=8)  # never over a bar or the line
    fig.set_size_inches(fig.get_figwidth(), min(fig.get_figheight() + 0.6, MAX_H))  # the legend's two rows
    return fig
