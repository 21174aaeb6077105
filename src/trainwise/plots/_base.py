"""Shared pieces of the figures: palette, sizes, text fitting, grids, histograms."""


from __future__ import annotations

import io
import logging
import math
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

log = logging.getLogger(__name__)
# Okabe & Ito's palette: told apart under the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442", "#000000")
MAIN, SECOND, ALERT, OTHER = PALETTE[0], PALETTE[1], PALETTE[3], "#999999"
DPI = 100  # save_png's resolution; figures are sized in inches against it
MAX_W, MAX_H = 16.0, 12.0
_NAME = 24  # longest class or column name drawn in full
_CELL, _GAP = 64, 4  # pixels per image cell in a mosaic, and between cells


def save_png(fig: Figure) -> bytes:
    """The figure as PNG bytes at a fixed dpi, so the data card's images have predictable sizes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return buf.getvalue()


# --- helpers ---------------------------------------------------------------------------------

def _clamp(x: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, x))


def _text(s: object, limit: int = _NAME) -> str:
    """User text made safe to draw: cut to `limit` keeping both ends, and `$` escaped so a class
    name never switches matplotlib into mathtext (where `a$b$` would render as maths or fail)."""
    s = str(s)
    if len(s) > limit:
        head = (limit - 1) // 2
        s = s[:head] + "…" + s[len(s) - (limit - 1 - head):]
    return s.replace("$", r"\$")


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "es" if noun.endswith("s") else "s")


def _figure(width: float, height: float, *, constrained: bool = True) -> Figure:
    fig = Figure(figsize=(_clamp(width, 4.0, MAX_W), _clamp(height, 2.5, MAX_H)), dpi=DPI,
                 layout="constrained" if constrained else None)
    FigureCanvasAgg(fig)  # its own canvas: draws and measures text without any global backend
    return fig


def _head(fig: Figure, title: str, note: str = "") -> None:
    # the note wrapped to the figure's width (~0.62 em per character at 12 pt), never cut off
    width = max(30, int(fig.get_figwidth() * 72 / (0.62 * 12) * 0.92))
    fig.suptitle(textwrap.fill(_text(title, 120), width) + (f"\n{textwrap.fill(note, width)}" if note else ""),
                 fontsize=12)


def _message(title: str, message: str) -> Figure:
    """A figure that says why there is nothing to plot, so a data card never has a hole."""
    fig = _figure(7.0, 2.5)
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=12, color="0.3", wrap=True)
    _head(fig, title)
    return fig


def _fit_labels(ax: Axes, axis: str, labels: Sequence[object], span_pt: float,
                positions: Sequence[float] | None = None, *, largest: float = 9.0, limit: int = _NAME,
                **kwargs: Any) -> int:
    """Category tick labels sized to the room each gets; when even 5.5 pt would collide, only every
    `step`-th is shown. Returns the step. A DejaVu Sans label is ~1.17 sizes tall: 1.25 leaves a gap."""
    n = len(labels)
    pos = np.arange(n) if positions is None else np.asarray(positions)
    room = span_pt / max(n, 1)
    size = _clamp(room / 1.25, 5.5, largest)
    step = max(1, math.ceil(size * 1.25 / room))
    if step > 1:
        log.debug("%d labels in %.0f pt: showing 1 in %d", n, span_pt, step)
    setter = ax.set_yticks if axis == "y" else ax.set_xticks
    setter(pos[::step], [_text(lab, limit) for lab in labels[::step]], fontsize=size, **kwargs)
    return step


def _top_bottom(items: list, limit: int) -> tuple[list, str]:
    """Past `limit` items, the first and last limit//2 and a note saying what was left out."""
    if len(items) <= limit:
        return items, ""
    half = limit // 2
    return items[:half] + items[-half:], f"showing the first {half} and last {half} of {len(items)}"


def _hbars(title: str, names: Sequence[str], series: Sequence[tuple[str, np.ndarray, str]], *,
           xlabel: str, note: str = "", fmt: str | None = None, split_at: int | None = None) -> Figure:
    """Horizontal bars, one row per name (top to bottom); several series are grouped side by side.
    Horizontal because long names then read level, whatever their number."""
    n, k = len(names), len(series)
    fig = _figure(9.0, 1.6 + n * (0.14 + 0.06 * k))
    ax = fig.add_subplot()
    y, h = np.arange(n), 0.8 / k
    for j, (label, values, colour) in enumerate(series):
        bars = ax.barh(y + (j - (k - 1) / 2) * h, values, height=h, color=colour, label=label)
        if fmt and n * k <= 60:  # numbers on the bars only while rows are tall enough to hold them
            ax.bar_label(bars, fmt=fmt, fontsize=7, padding=2)
    # constrained layout spends ~1.2 in on titles and the x axis; the rest is shared by the rows
    step = _fit_labels(ax, "y", names, (fig.get_figheight() - 1.2) * 72)
    if step > 1:
        note = "; ".join(filter(None, [note, f"1 name in {step} shown"]))
    if split_at is not None:
        ax.axhline(split_at - 0.5, color="0.4", linestyle="--", linewidth=1)
    ax.set_ylim(n - 0.5, -0.5)
    ax.margins(x=0.12)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    if k > 1:
        ax.legend(loc="lower right")
    _head(fig, title, note)
    return fig


def _rgb(image: np.ndarray) -> np.ndarray:
    """An (H, W, C) image with C in {1, 3}, uint8 or float 0..1, as uint8 RGB (grey repeated)."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3) or 0 in a.shape:
        raise ValueError(f"expected an image shaped (H, W, C) with C in {{1, 3}}, got {a.shape}")
    if a.dtype != np.uint8:
        a = (np.clip(np.nan_to_num(a.astype(np.float64)), 0.0, 1.0) * 255).round().astype(np.uint8)
    return np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a


def _fit_cell(image: np.ndarray) -> np.ndarray:
    """The image scaled into a square cell, centred on light grey: nearest-neighbour up (8x8
    digits stay crisp blocks), box filter down (big photos do not alias)."""
    a = _rgb(image)
    h, w = a.shape[:2]
    scale = _CELL / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BOX
    small = np.asarray(Image.fromarray(a).resize((nw, nh), resample))
    cell = np.full((_CELL, _CELL, 3), 230, np.uint8)
    top, left = (_CELL - nh) // 2, (_CELL - nw) // 2
    cell[top:top + nh, left:left + nw] = small
    return cell


def _two_lines(s: object, chars: int) -> str:
    """A caption in at most two lines of `chars`, broken after a separator where one is near;
    an over-long tail keeps its end, where a path keeps its file name."""
    s = str(s)
    if len(s) > chars:
        cut = max((i + 1 for i, ch in enumerate(s[:chars]) if ch in " _-/|."), default=chars)
        cut = cut if cut > chars // 2 else chars
        rest = s[cut:].lstrip()
        s = s[:cut].rstrip() + "\n" + (rest if len(rest) <= chars else "…" + rest[1 - chars:])
    return s.replace("$", r"\$")


def _columns(n: int, captioned: bool) -> int:
    """Columns for n cells that give the largest cells within the size bound; ties go to the
    fewest columns, but at least a square's worth so a handful of images do not stack up."""
    px, py = _CELL + _GAP, _CELL + (_CELL * 2 // 5 if captioned else 0) + _GAP

    def inches_per_pixel(c: int) -> float:
        return min(1.3 / _CELL, (MAX_W - 0.4) / (c * px), (MAX_H - 1.1) / (math.ceil(n / c) * py))

    return max(max(range(1, n + 1), key=inches_per_pixel), math.ceil(math.sqrt(n)))


def _grid(title: str, rows: Sequence[Sequence[np.ndarray]], *, captions: Sequence[Sequence[str]] | None = None,
          row_labels: Sequence[str] | None = None, note: str = "") -> tuple[Figure, Axes]:
    """Images laid out row by row as one mosaic drawn by one imshow: hundreds of small axes would
    be slow to lay out. Captions go in a band under each image, wrapped to two lines to fit."""
    ncols = max(1, max((len(r) for r in rows), default=1))
    band = _CELL * 2 // 5 if captions else 0
    px, py = _CELL + _GAP, _CELL + band + _GAP
    mosaic = np.full((len(rows) * py + _GAP, ncols * px + _GAP, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            mosaic[_GAP + r * py:_GAP + r * py + _CELL, _GAP + c * px:_GAP + c * px + _CELL] = _fit_cell(image)
    left, top, rest = (2.2 if row_labels else 0.2), (1.0 if note else 0.7), 0.2
    height, width = mosaic.shape[:2]
    inch = min(1.3 / _CELL, (MAX_W - left - rest) / width, (MAX_H - top - rest) / height)  # inches per pixel
    fig = _figure(max(left + width * inch + rest, 6.0), top + height * inch + rest, constrained=False)
    fw, fh = fig.get_size_inches()
    ax = fig.add_axes((left / fw, rest / fh, (fw - left - rest) / fw, (fh - top - rest) / fh))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    # the displayed scale: aspect is equal, so the tighter of the two directions wins
    pt = min((fw - left - rest) / width, (fh - top - rest) / height) * 72
    if row_labels:
        centres = [_GAP + r * py + _CELL / 2 for r in range(len(rows))]
        _fit_labels(ax, "y", row_labels, len(rows) * py * pt, positions=centres)
    if captions:
        cell_pt, longest = _CELL * pt, max(1, max((len(c) for line in captions for c in line), default=1))
        # one line when it reads at 6.5 pt or more, else two lines of half the length (DejaVu Sans
        # averages ~0.62 em per character); the band under the image holds two lines up to 8 pt
        one, two = (0.9 * cell_pt / (0.62 * k) for k in (longest, math.ceil(longest / 2)))
        size = _clamp(one if one >= 6.5 else two, 6.0, min(8.0, band * pt / 2.8))
        chars = max(4, int(0.92 * cell_pt / (0.62 * size)))
        for r, line in enumerate(captions):
            for c, caption in enumerate(line):
                ax.text(_GAP + c * px + _CELL / 2, _GAP + r * py + _CELL + band / 2, _two_lines(caption, chars),
                        ha="center", va="center", fontsize=size, linespacing=1.1)
    _head(fig, title, note)
    return fig, ax


def _hist(ax: Axes, values: Sequence[float] | np.ndarray, *, title: str, xlabel: str, colour: str = MAIN) -> None:
    """One histogram panel with its median marked; says so when there is nothing to count."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    ax.set_title(_text(title, 60), fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    if v.size == 0:
        ax.text(0.5, 0.5, "no values", transform=ax.transAxes, ha="center", va="center", color="0.4")
        return
    ax.hist(v, bins=min(40, max(5, int(np.sqrt(v.size)))), color=colour, alpha=0.85)
    median = float(np.median(v))
    ax.axvline(median, color="black", linestyle="--", linewidth=1, label=f"median {median:.3g}")
    ax.legend(fontsize=8)
