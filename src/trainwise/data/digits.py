"""The embedded default dataset: scikit-learn's 1,797 real 8x8 handwritten digits.

Written once as a Kaggle-style folder so the default project takes the same image-folder path a
user's own data takes:

    root/train/<digit>/<index>.png   labelled training images
    root/test/<id>.png               unlabelled test images
    root/sample_submission.csv       id,label for every test image
    root/answers.csv                 the test labels, kept apart for scoring submissions
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

MARKER = ".trainwise-digits.json"
_LAYOUT_VERSION = 1


def materialize_digits(root: Path, *, test_fraction: float = 0.2, seed: int = 0) -> Path:
    """Write the digits folder under `root` unless an identical one is already there."""
    wanted = {"layout": _LAYOUT_VERSION, "test_fraction": test_fraction, "seed": seed}
    marker = root / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return root

    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # The 0..16 intensities become 0..255 grey levels: an ordinary 8-bit image like a user's own.
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    labels = digits.target.astype(int)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=seed
    )

    # Build beside the target and swap in with one rename, so an interrupted write leaves no half folder.
    tmp = root.with_name(f"{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for index in train_idx:
        path = tmp / "train" / str(labels[index]) / f"{index:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[index]).save(path)
    (tmp / "test").mkdir(parents=True)
    rows = []
    for position, index in enumerate(np.random.default_rng(seed).permutation(test_idx)):
        test_id = f"t{position:04d}"  # ids carry no hint of the label
        Image.fromarray(pixels[index]).save(tmp / "test" / f"{test_id}.png")
        rows.append((test_id, int(labels[index])))
    rows.sort()
    (tmp / "sample_submission.csv").write_text("id,label\n" + "".join(f"{i},0\n" for i, _ in rows))
    (tmp / "answers.csv").write_text("id,label\n" + "".join(f"{i},{label}\n" for i, label in rows))
    (tmp / MARKER).write_text(json.dumps(wanted))

    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(root)
    log.info("wrote the digits dataset to %s (%d train, %d test images)", root, len(train_idx), len(test_idx))
    return root
