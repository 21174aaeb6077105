"""One row of measurable properties per image, for the checks that compare images by them.

Pixel statistics (brightness, contrast, channel means and spreads) come from ingest's manifest,
recorded during its one decode of each file; size, aspect, format and bytes per pixel are the
file's own; sharpness is measured on the decoded cache, at the size the network sees, so images
decoded at different reduced scales are compared alike. Categorical properties (the file format)
become 0/1 indicator columns: the Kolmogorov-Smirnov statistic of an indicator is the difference
of the two shares, so every column compares with the same test.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from trainwise.data.manifest import PIXEL_STATS

FILE_PROPERTIES = ["width", "height", "aspect", "bytes_per_pixel"]
FORMAT_PREFIX = "format_"  # + the format's name: 1 where the file is in that format
SHARPNESS_CHUNK = 4096  # images per vectorised Laplacian pass: bounded memory on any cache size


def image_properties(items: pd.DataFrame, images: np.ndarray, positions: np.ndarray) -> pd.DataFrame:
    """Properties of the manifest rows `items` (index kept), whose pixels are `images[positions]`.

    Channel statistics of channels the images lack (grey images) are left out, not filled, and so are
    a grey image's channel mean and spread, equal to its brightness and contrast.
    """
    stats = [c for c in PIXEL_STATS if c in items and items[c].notna().any()]
    if "mean_c1" not in stats:  # grey: the one channel's mean and spread are the brightness and contrast
        stats = [c for c in stats if c not in ("mean_c0", "std_c0")]
    table = items[stats].astype(float).copy()
    width, height = items["width"].astype(float), items["height"].astype(float)
    table["width"], table["height"], table["aspect"] = width, height, width / height
    table["bytes_per_pixel"] = items["bytes"].astype(float) / (width * height)
    table["sharpness"] = sharpness(images, positions)
    formats = items["format"].fillna("unknown").astype(str).str.upper()
    for name in sorted(formats.unique()):
        table[f"{FORMAT_PREFIX}{name}"] = (formats == name).astype(float)
    return table


def sharpness(images: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Variance of the grey image's 4-neighbour Laplacian, on 0..1 pixel values (blur lowers it)."""
    out = np.empty(len(positions), dtype=np.float64)
    for start in range(0, len(positions), SHARPNESS_CHUNK):
        chunk = positions[start : start + SHARPNESS_CHUNK]
        grey = np.asarray(images[np.sort(chunk)], dtype=np.float32).mean(axis=3) / 255.0
        grey = grey[np.argsort(np.argsort(chunk))]  # back to the order asked for (memmaps read faster sorted)
        if grey.shape[1] < 3 or grey.shape[2] < 3:
            out[start : start + len(chunk)] = 0.0
            continue
        centre = grey[:, 1:-1, 1:-1]
        laplacian = grey[:, :-2, 1:-1] + grey[:, 2:, 1:-1] + grey[:, 1:-1, :-2] + grey[:, 1:-1, 2:] - 4 * centre
        out[start : start + len(chunk)] = laplacian.reshape(len(chunk), -1).var(axis=1)
    return out
