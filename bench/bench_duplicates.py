"""Near-duplicate grouping on real images: recall on planted copies, and what else gets joined.

For each data set, copies of 400 random items are planted, a quarter each:
  resized   (x0.5, x0.75, x1.5, x2; small images only grow),
  jpeg      (re-encoded at quality 60-89),
  cropped   (1-4 px off each side; 1 px off one side of images under 32 px),
  brighter  (Pillow ImageEnhance.Brightness x0.8, 0.9, 1.1 or 1.2).
Then everything goes through trainwise's grouping (data/duplicates.py) and the bench prints
recall per kind, the verified pairs that are not planted, the largest group, and how many groups
span more than one label. With --pictures DIR it writes the unplanted pairs and the mixed-label
groups as PNG grids, to look at: a number alone cannot say whether two images look alike.

Data sets (only those present are run):
  digits8   scikit-learn's 1,797 8x8 digits
  digits16  the same upscaled to 16 px (the issue's case of one group spanning all ten digits)
  fashion   Fashion-MNIST, 70,000 28x28 photos of clothing (Debian: dataset-fashion-mnist)
  clipart   Open Clip Art (Debian: openclipart-png), --clipart N drawings of objects on white,
            their top folder as the label; the library files some drawings under two folders

    .venv/bin/python bench/bench_duplicates.py [--sets digits8,digits16,fashion,clipart] [--fashion 70000]
"""

from __future__ import annotations

import argparse
import gzip
import io
import logging
import random
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageEnhance

from trainwise.data.duplicates import groups_from_links, near_duplicate_pairs, signature
from trainwise.data.images import decode_image

KINDS = ["resized", "jpeg", "cropped", "brighter"]
FASHION = Path("/usr/share/datasets/fashion-mnist")
CLIPART = Path("/usr/share/openclipart/png")


def digits(side: int) -> tuple[list[np.ndarray], list[str]]:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images * 255 / 16).astype(np.uint8)
    if side != 8:
        images = np.stack([cv2.resize(x, (side, side), interpolation=cv2.INTER_LINEAR) for x in images])
    return [x[:, :, None] for x in images], [str(t) for t in data.target]


def fashion(limit: int) -> tuple[list[np.ndarray], list[str]]:
    def read(name: str, offset: int) -> np.ndarray:
        with gzip.open(FASHION / name) as handle:
            return np.frombuffer(handle.read(), np.uint8, offset=offset)

    images = np.concatenate([read(f"{p}-images-idx3-ubyte.gz", 16) for p in ("train", "t10k")]).reshape(-1, 28, 28)
    labels = np.concatenate([read(f"{p}-labels-idx1-ubyte.gz", 8) for p in ("train", "t10k")])
    return [x[:, :, None] for x in images[:limit]], [str(t) for t in labels[:limit]]


def clipart(limit: int) -> tuple[list[np.ndarray], list[str]]:
    files = sorted(CLIPART.rglob("*.png"))
    random.Random(0).shuffle(files)
    images, labels = [], []
    for path in files:
        try:
            pixels, _ = decode_image(path.read_bytes(), channels=3, max_pixels=4_000_000, name=str(path))
        except Exception:  # noqa: BLE001 - a few library files are broken; skip them
            continue
        images.append(pixels)
        labels.append(path.relative_to(CLIPART).parts[0])
        if len(images) >= limit:
            break
    return images, labels


def plant(image: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[:2]
    small = min(h, w) < 32
    if kind == "resized":
        scale = float(rng.choice([1.5, 2.0] if small else [0.5, 0.75, 1.5, 2.0]))
        out = cv2.resize(image, (max(4, round(w * scale)), max(4, round(h * scale))), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    elif kind == "jpeg":
        buffer = io.BytesIO()
        Image.fromarray(image.squeeze()).save(buffer, "JPEG", quality=int(rng.integers(60, 90)))
        out = np.asarray(Image.open(buffer))
    elif kind == "cropped":
        if small:
            side = int(rng.integers(4))
            top, left, bottom, right = (int(i == side) for i in range(4))
        else:
            top, left, bottom, right = (int(rng.integers(0, 5)) for _ in range(4))
            top = max(top, int(top + left + bottom + right == 0))
        out = image[top : h - bottom, left : w - right]
    else:
        factor = float(rng.choice([0.8, 0.9, 1.1, 1.2]))
        out = np.asarray(ImageEnhance.Brightness(Image.fromarray(image.squeeze())).enhance(factor))
    return out[:, :, None] if out.ndim == 2 else np.ascontiguousarray(out)


def grid(pairs: list[list[np.ndarray]], path: Path, side: int = 64) -> None:
    rows = []
    for images in pairs:
        tiles = [cv2.resize(np.repeat(x, 3, 2) if x.shape[2] == 1 else x, (side, side), interpolation=cv2.INTER_NEAREST) for x in images[:8]]
        tiles += [np.full((side, side, 3), 255, np.uint8)] * (8 - len(tiles))
        rows.append(np.pad(np.concatenate(tiles, 1), ((2, 2), (0, 0), (0, 0)), constant_values=90))
    if rows:
        Image.fromarray(np.concatenate(rows)).save(path)


def run(name: str, images: list[np.ndarray], labels: list[str], args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(0)
    n = len(images)
    sources = rng.choice(n, min(400, n), replace=False)
    planted = [plant(images[i], KINDS[k % 4], rng) for k, i in enumerate(sources)]
    every = images + planted
    label = labels + [labels[i] for i in sources]
    start = time.perf_counter()
    sigs = [signature(x) for x in every]
    sizes = [(x.shape[1], x.shape[0]) for x in every]
    links = near_duplicate_pairs(sigs, sizes, min_similarity=args.similarity)
    groups = groups_from_links([str(i) for i in range(len(every))], links)
    seconds = time.perf_counter() - start
    recall = {kind: float(np.mean([groups[i] == groups[n + k] for k, i in enumerate(sources) if k % 4 == j])) for j, kind in enumerate(KINDS)}
    overall = float(np.mean([groups[i] == groups[n + k] for k, i in enumerate(sources)]))
    known = {(int(i), n + k) for k, i in enumerate(sources)}
    unplanted = [(a, b) for a, b, _ in links if (a, b) not in known]
    counts = np.bincount(groups)
    multi = np.flatnonzero(counts > 1)
    mixed = [g for g in multi if len({label[i] for i in np.flatnonzero(groups == g)}) > 1]
    if args.pictures:
        args.pictures.mkdir(parents=True, exist_ok=True)
        grid([[every[a], every[b]] for a, b in unplanted[:40]], args.pictures / f"{name}_unplanted_pairs.png")
        grid([[every[i] for i in np.flatnonzero(groups == g)] for g in mixed[:20]], args.pictures / f"{name}_mixed_label_groups.png")
        grid([[every[i] for i in np.flatnonzero(groups == np.argmax(counts))][:8]], args.pictures / f"{name}_largest_group.png")
    result = {
        "set": name, "items": n, "recall": overall, **recall, "unplanted_links": len(unplanted),
        "unplanted_links_across_labels": sum(label[a] != label[b] for a, b in unplanted),
        "groups": len(multi), "largest_group": int(counts.max()), "mixed_label_groups": len(mixed), "seconds": seconds,
    }  # fmt: skip
    print(
        f"{name:9s} {n:6d} items  recall {overall:.3f} (resized {recall['resized']:.2f}, jpeg {recall['jpeg']:.2f}, "
        f"cropped {recall['cropped']:.2f}, brighter {recall['brighter']:.2f})  unplanted links {len(unplanted)} "
        f"({result['unplanted_links_across_labels']} across labels)  groups {len(multi)}, largest {counts.max()}, "
        f"spanning labels {len(mixed)}  {seconds:.1f} s",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="digits8,digits16,fashion,clipart")
    parser.add_argument("--fashion", type=int, default=70_000, help="Fashion-MNIST items to use")
    parser.add_argument("--clipart", type=int, default=3_000, help="clip-art drawings to use")
    parser.add_argument("--similarity", type=float, default=0.97, help="data.near_duplicate_similarity")
    parser.add_argument("--pictures", type=Path, help="write PNG grids of what was joined here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    loaders = {
        "digits8": lambda: digits(8),
        "digits16": lambda: digits(16),
        "fashion": lambda: fashion(args.fashion) if FASHION.is_dir() else None,
        "clipart": lambda: clipart(args.clipart) if CLIPART.is_dir() else None,
    }
    results = []
    for name in args.sets.split(","):
        loaded = loaders[name]()
        if loaded is None:
            print(f"{name:9s} skipped: not installed (see the docstring)")
            continue
        results.append(run(name, *loaded, args))
    worst = min(r["recall"] for r in results)
    mixed = sum(r["mixed_label_groups"] for r in results)
    print(f"near duplicates: planted-copy recall >= {worst:.3f} on {len(results)} sets; largest group {max(r['largest_group'] for r in results)}; groups spanning labels {mixed}")


if __name__ == "__main__":
    main()
