"""Exact and near duplicates: groups that must never straddle splits.

Exact duplicates share a sha256 and are always reported as such, whatever else they join.

Near duplicates are found in two stages, because a cheap similarity alone chains unrelated images:
on photos of objects on plain backgrounds a 64-bit hash within a few bits joined a skirt, a cap
and white shoes into one group of 84, and the union of such links swallowed whole classes.

1. *Candidates*: each image's nearest neighbours by cosine similarity of a small (8x8, zero-mean)
   grey thumbnail, found by blocked matrix products (k per image, so the cost is linear in memory
   and quadratic only in arithmetic that BLAS does fast).
2. *Verification*: a candidate pair joins only if the normalised cross-correlation of the two 32x32
   grey signatures reaches `min_similarity` (the copy rescaled, re-encoded or brightness-shifted
   keeps it above 0.98; distinct items of one class rarely reach it), under either of two framings:
   the same picture at any scale, or one image a crop of the other by a few pixels at the same
   pixel scale. Colour images must also agree on a coarse chroma map, so a recoloured variant of
   a drawing is not taken for a copy.

Groups are the connected components of verified links only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from itertools import pairwise

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter
from tqdm.auto import tqdm

from trainwise.data.images import Extent, area_resize

log = logging.getLogger(__name__)

SIDE = 32  # the signature's grey thumbnail
_COARSE = 16  # candidate search runs on this thumbnail
_CHROMA = 4  # colour agreement is checked on this grid
GREY_BYTES = SIDE * SIDE
CHROMA_BYTES = _CHROMA * _CHROMA * 3
MAX_CHROMA_DIFFERENCE = 12.0  # mean |difference| of colour-minus-grey cells, on 0..255
MAX_CROP_FRACTION = 0.1  # the crop framing is tried when sides differ by at most this share
_FLAT_STD = 1.0  # a signature this flat has no pattern to correlate; flat ones compare by level
_CANDIDATE_FLOOR = 0.5  # coarse similarity below this is never verified
_BLOCK = 1024
_CROP_BLUR = 0.8
_CROP_GATE = 0.3
_DETAIL_BLUR = 1.0
DETAIL_SLACK = 0.03
CROP_DETAIL_SLACK = 0.07  # the resampled window keeps less detail: true crops 0.93 at the 5th percentile on Fashion-MNIST
_MIN_DETAIL_STD = 2.0  # grey levels
SEED_SLACK = 0.03  # a group's seeds may be this much less alike than a verified pair


def signature(image: np.ndarray, extent: Extent | None = None) -> bytes:
    """What near-duplicate verification needs of one (H, W, C) uint8 image: 1,024 or 1,072 bytes.

    The 32x32 grey thumbnail (area averaging to shrink, bilinear to grow, so 8-px images keep their
    detail), then for colour images a 4x4 map of each channel minus grey. `extent`: the picture's
    part of a reduced decode (data/images.py), so a reduced decode gives the thumbnail of the full one.
    """
    grey = image[:, :, 0] if image.shape[2] == 1 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    thumb = area_resize(grey, (SIDE, SIDE), extent)
    if image.shape[2] == 1:
        return thumb.tobytes()
    colour = area_resize(image, (_CHROMA, _CHROMA), extent).astype(np.int16)
    chroma = colour - area_resize(grey, (_CHROMA, _CHROMA), extent).astype(np.int16)[:, :, None]
    return thumb.tobytes() + np.clip(chroma + 128, 0, 255).astype(np.uint8).tobytes()


def exact_groups(sha256: Sequence[str]) -> np.ndarray:
    """Group id per item (the index of the group's first item); unique items are their own group."""
    first: dict[str, int] = {}
    return np.array([first.setdefault(digest, i) for i, digest in enumerate(sha256)], dtype=np.int64)


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:  # path compression
            self.parent[i], i = root, self.parent[i]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)


class _Signatures:
    """Decoded signatures of the items that have one, with the derived arrays both stages use."""

    def __init__(self, signatures: Sequence[bytes | None], sizes: Sequence[tuple[int, int]]) -> None:
        self.items = np.array([i for i, s in enumerate(signatures) if s is not None], dtype=np.int64)
        grey = [np.frombuffer(signatures[i], np.uint8, GREY_BYTES) for i in self.items]  # type: ignore[arg-type]
        self.grey = np.stack(grey).reshape(-1, SIDE, SIDE) if grey else np.zeros((0, SIDE, SIDE), np.uint8)
        self.chroma = [
            np.frombuffer(signatures[i], np.uint8, offset=GREY_BYTES).astype(np.float32) if len(signatures[i]) > GREY_BYTES else None  # type: ignore[arg-type]
            for i in self.items
        ]
        self.sizes = [sizes[i] for i in self.items]
        flat = self.grey.reshape(len(self.items), -1).astype(np.float32)
        self.level = flat.mean(axis=1)
        self.flat = flat.std(axis=1) < _FLAT_STD
        self.coarse = np.concatenate([_coarse(self.grey[i : i + _BLOCK]) for i in range(0, len(self.grey), _BLOCK)] or [_coarse(self.grey)])

    def plain(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Same-framing correlations of pairs (a[i], b[i]): of the thumbnails, and of their fine
        detail (thumbnail minus its blur), which must reach min_similarity - DETAIL_SLACK.

        The thumbnails alone mostly compare silhouettes: two different shirts on black correlate
        above 0.97. A copy keeps the detail too (Fashion-MNIST: re-encoded and rescaled copies
        above 0.95, distinct items within 0.05 of the thumbnail test at the 99th percentile 0.93).
        """
        raw, detail = np.empty(len(a), np.float32), np.empty(len(a), np.float32)
        for start in range(0, len(a), 8 * _BLOCK):
            ga, gb = (self.grey[x[start : start + 8 * _BLOCK]].astype(np.float32) for x in (a, b))
            raw[start : start + len(ga)], detail[start : start + len(ga)] = _correlations(ga, gb)
        return raw, detail


def _correlations(ga: np.ndarray, gb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Correlations of (N, 32, 32) thumbnails pairwise: of the thumbnails, and of their detail."""
    da, db = (g - gaussian_filter(g, (0, _DETAIL_BLUR, _DETAIL_BLUR), mode="nearest") for g in (ga, gb))
    # Where both images have next to no fine detail (sky, a smooth gradient) what is left is
    # quantisation noise, which re-encoding changes: the test would reject true copies. One
    # faint and one detailed image is no copy (a plain coat and a patterned one).
    faint = np.maximum(da.reshape(len(da), -1).std(axis=1), db.reshape(len(db), -1).std(axis=1)) < _MIN_DETAIL_STD
    return _rowdot(ga, gb), np.where(faint, 1.0, _rowdot(da, db))


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    n = len(a)
    return np.einsum("ij,ij->i", _unit_rows(a.reshape(n, -1)), _unit_rows(b.reshape(n, -1)))


def _coarse(grey: np.ndarray) -> np.ndarray:
    """Unit vectors of (N, 32, 32) thumbnails blurred and shrunk to 16x16: what candidates are ranked by.

    Blurred before it is shrunk, so a copy shifted by a pixel still ranks near its source.
    """
    if not len(grey):
        return np.zeros((0, _COARSE * _COARSE), np.float32)
    blurred = gaussian_filter(grey.astype(np.float32), (0, 1.5, 1.5), mode="nearest")
    step = SIDE // _COARSE
    return _unit_rows(blurred.reshape(-1, _COARSE, step, _COARSE, step).mean(axis=(2, 4)).reshape(len(grey), -1))


def _unit_rows(rows: np.ndarray) -> np.ndarray:
    centred = rows - rows.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    return np.divide(centred, norms, out=np.zeros_like(centred), where=norms > 1e-6).astype(np.float32)


def candidate_pairs(sig: _Signatures, neighbours: int) -> np.ndarray:
    """(a, b) positions with a < b: each patterned item's nearest neighbours by the coarse thumbnail."""
    patterned = np.flatnonzero(~sig.flat)
    found: list[np.ndarray] = []
    k = min(neighbours, len(patterned) - 1)
    if k > 0:
        vectors = sig.coarse[patterned]
        blocks = range(0, len(patterned), _BLOCK)
        for start in tqdm(blocks, desc="near duplicates", unit="block", disable=len(blocks) < 8, mininterval=1.0):
            sims = vectors[start : start + _BLOCK] @ vectors.T
            rows = np.arange(sims.shape[0])
            sims[rows, start + rows] = -2.0  # not its own neighbour
            top = np.argpartition(-sims, k, axis=1)[:, :k]
            keep = sims[rows[:, None], top] >= _CANDIDATE_FLOOR
            a = np.repeat(start + rows, k).reshape(-1, k)[keep]
            found.append(np.stack([patterned[a], patterned[top[keep]]], axis=1))
    found += _crop_candidates(sig, neighbours)
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.sort(np.concatenate(found), axis=1)
    return np.unique(pairs[pairs[:, 0] != pairs[:, 1]], axis=0)


def _crop_candidates(sig: _Signatures, neighbours: int, max_sizes: int = 3) -> list[np.ndarray]:
    """Candidates for the crop framing: a copy cropped by a pixel of an 8-px image is stretched
    by 14% in its thumbnail and ranks behind dozens of lookalikes, so each image is also put back
    into the frame of the (up to 3 most common) slightly larger sizes at the corners and centre of
    where it may have been cut, and ranked among the images of that size."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for p, size in enumerate(sig.sizes):
        if not sig.flat[p]:
            by_size.setdefault(size, []).append(p)
    common = sorted(by_size, key=lambda size: -len(by_size[size]))
    found = []
    for (ws, hs), smaller in by_size.items():
        larger = [(wb, hb) for wb, hb in common if _crop_compatible((wb, hb), (ws, hs))][:max_sizes]
        for wb, hb in larger:
            targets = np.array(by_size[(wb, hb)])
            k = min(neighbours, len(targets))
            queries, owners = [], []
            sx, sy = ws / wb, hs / hb
            for p in smaller:
                for left in {0.0, (wb - ws) / 2, float(wb - ws)}:
                    for top in {0.0, (hb - hs) / 2, float(hb - hs)}:
                        matrix = _crop_matrix(sx, sy, left * SIDE / wb, top * SIDE / hb)
                        queries.append(cv2.warpAffine(sig.grey[p], matrix, (SIDE, SIDE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))
                        owners.append(p)
            vectors, owners_arr = _coarse(np.stack(queries)), np.array(owners)
            for start in range(0, len(vectors), _BLOCK):
                sims = vectors[start : start + _BLOCK] @ sig.coarse[targets].T
                top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
                keep = np.take_along_axis(sims, top, axis=1) >= _CANDIDATE_FLOOR
                a = np.repeat(owners_arr[start : start + _BLOCK], k).reshape(-1, k)[keep]
                found.append(np.stack([a, targets[top[keep]]], axis=1))
    return found


def _crop_compatible(big: tuple[int, int], small: tuple[int, int]) -> bool:
    """Whether `small` can be `big` cut by a few pixels (at most MAX_CROP_FRACTION of each side, or 1 px)."""
    (wb, hb), (ws, hs) = big, small
    if (ws, hs) == (wb, hb) or ws > wb or hs > hb:
        return False
    return wb - ws <= MAX_CROP_FRACTION * wb + 1 and hb - hs <= MAX_CROP_FRACTION * hb + 1


def verify(sig: _Signatures, a: int, b: int, min_similarity: float, plain: tuple[float, float] | None = None) -> float | None:
    """The similarity of a verified pair, or None: flat images by level; patterned ones by both
    correlations in the same framing, or by the thumbnail in the crop framing; colours must agree."""
    if not _same_colours(sig, a, b):
        return None
    if sig.flat[a] or sig.flat[b]:
        return 1.0 if sig.flat[a] and sig.flat[b] and abs(sig.level[a] - sig.level[b]) <= 4 else None
    needed = required_similarity(min_similarity, sig.sizes[a], sig.sizes[b])
    if plain is None:
        raws, details = sig.plain(np.array([a]), np.array([b]))
        plain = float(raws[0]), float(details[0])
    raw, detail = plain
    # Detail is comparable when both thumbnails were made alike: shrunk by area averaging, or
    # grown from the same size. An 8-px image and its 16-px upscale differ in interpolation detail.
    alike = sig.sizes[a] == sig.sizes[b] or min(*sig.sizes[a], *sig.sizes[b]) >= SIDE
    if raw >= needed and (detail >= min_similarity - DETAIL_SLACK or not alike):
        return raw
    if raw < _CROP_GATE:  # a crop of a few pixels keeps at least this much without realignment
        return None
    crop, crop_detail = max(_crop_similarity(sig, a, b), _crop_similarity(sig, b, a))
    # Small images (signatures grown from under 32 px) are placed at whole native pixels, so their
    # detail must agree too: without it a cropped coat joined a plain one of the same cut. Photos
    # shrunk to the signature are placed at fractions of a pixel, which blurs detail even for a
    # true crop (0.76-0.89 on scikit-learn's photos), so there the thumbnail decides.
    detailed = min(*sig.sizes[a], *sig.sizes[b]) >= SIDE or crop_detail >= min_similarity - CROP_DETAIL_SLACK
    return crop if crop >= needed and detailed else None


def _crop_similarity(sig: _Signatures, big: int, small: int) -> tuple[float, float]:
    """(thumbnail, detail) correlations if `small` is `big` cropped by a few pixels on some sides,
    at the same pixel scale, at the best of a grid of placements; (-1, -1) if the sizes rule it out."""
    (wb, hb), (ws, hs) = sig.sizes[big], sig.sizes[small]
    if not _crop_compatible((wb, hb), (ws, hs)):
        return -1.0, -1.0
    # The small image covers [left, left + ws) x [top, top + hs) of the big one; in signature
    # coordinates that window is mapped onto the whole 32x32 grid.
    sx, sy = ws / wb, hs / hb
    windows = np.stack([
        cv2.warpAffine(
            sig.grey[big].astype(np.float32), _crop_matrix(sx, sy, left * SIDE / wb, top * SIDE / hb), (SIDE, SIDE),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE,
        )
        for left in np.linspace(0, wb - ws, min(wb - ws, 4) + 1)
        for top in np.linspace(0, hb - hs, min(hb - hs, 4) + 1)
    ])  # fmt: skip
    target = sig.grey[small].astype(np.float32)[None]
    # Both sides are smoothed a little for the thumbnail test: the window is resampled from a
    # 32x32 thumbnail, and without this a crop of sharp line art correlates worse with its source
    # than the resampling deserves.
    smooth = gaussian_filter(windows, (0, _CROP_BLUR, _CROP_BLUR), mode="nearest")
    scores = _unit_rows(smooth.reshape(len(windows), -1)) @ _unit_rows(gaussian_filter(target, (0, _CROP_BLUR, _CROP_BLUR), mode="nearest").reshape(1, -1))[0]
    best = int(np.argmax(scores))
    _, detail = _correlations(windows[best : best + 1], target)
    return float(scores[best]), float(detail[0])


def _crop_matrix(sx: float, sy: float, left: float, top: float) -> np.ndarray:
    """Maps the small image's signature grid into the big one's, the small image's top-left corner
    at (left, top) in the big signature's coordinates (pixel centres at +0.5)."""
    return np.array([[sx, 0, left + (sx - 1) / 2], [0, sy, top + (sy - 1) / 2]], np.float32)


def _same_colours(sig: _Signatures, a: int, b: int) -> bool:
    ca, cb = sig.chroma[a], sig.chroma[b]
    if ca is None or cb is None:
        return True
    return float(np.abs(ca - cb).mean()) <= MAX_CHROMA_DIFFERENCE


def near_duplicate_pairs(
    signatures: Sequence[bytes | None], sizes: Sequence[tuple[int, int]], *, min_similarity: float, neighbours: int = 16
) -> list[tuple[int, int, float]]:
    """Verified near-duplicate pairs (item a, item b, similarity) among items with a signature."""
    sig = _Signatures(signatures, sizes)
    if len(sig.items) < 2:
        return []
    pairs = candidate_pairs(sig, neighbours)
    # Flat images (blank, or a single colour) have no pattern: neighbours in level are copies.
    flat = np.flatnonzero(sig.flat)
    flat = flat[np.argsort(sig.level[flat], kind="stable")]
    found = [
        (int(sig.items[a]), int(sig.items[b]), 1.0)
        for a, b in pairwise(flat)
        if sig.level[b] - sig.level[a] <= 4 and _same_colours(sig, a, b)
    ]
    pairs = pairs[~(sig.flat[pairs[:, 0]] | sig.flat[pairs[:, 1]])]
    raws, details = sig.plain(pairs[:, 0], pairs[:, 1])
    for (a, b), raw, detail in zip(pairs.tolist(), raws.tolist(), details.tolist(), strict=True):
        score = verify(sig, a, b, min_similarity, (raw, detail))
        if score is not None:
            found.append((int(sig.items[a]), int(sig.items[b]), score))
    links = _coherent_links(sig, found, min_similarity)
    log.info(
        "near duplicates: %d candidate pairs, %d verified at similarity >= %.3f, %d kept as links",
        len(pairs), len(found), min_similarity, len(links),
    )  # fmt: skip
    return links


def required_similarity(min_similarity: float, size_a: tuple[int, int], size_b: tuple[int, int]) -> float:
    """The similarity a pair must reach: `min_similarity` from 32 px up, stricter below.

    Small images carry less evidence: distinct 8x8 digits of one class correlate above 0.97 by
    the dozen, while a re-encoded or rescaled copy of one stays above 0.99. The allowed shortfall
    from 1 shrinks in proportion to the smaller side.
    """
    side = min(*size_a, *size_b)
    return 1.0 - (1.0 - min_similarity) * min(1.0, side / SIDE)


def _coherent_links(sig: _Signatures, verified: list[tuple[int, int, float]], min_similarity: float) -> list[tuple[int, int, float]]:
    """The verified pairs that may join their groups: strongest first, and only when the two groups'
    seeds (each group's first member) are near duplicates themselves.

    Without the seed test a family of similar drawings chains: a thin ring, a thicker ring, a ring
    with rays, each close to the last, ended in one group of 310 whose ends look nothing alike.
    """
    position = {int(item): p for p, item in enumerate(sig.items)}
    union = _UnionFind(len(sig.items))
    seed = np.arange(len(sig.items))
    size = np.ones(len(sig.items), dtype=np.int64)
    links = []
    for a, b, score in sorted(verified, key=lambda link: -link[2]):
        ra, rb = union.find(position[a]), union.find(position[b])
        if ra == rb:
            continue
        sa, sb = int(seed[ra]), int(seed[rb])
        if (sa, sb) != (position[a], position[b]) and verify(sig, sa, sb, min_similarity - SEED_SLACK) is None:
            continue
        union.union(ra, rb)
        root = union.find(ra)
        seed[root] = sa if size[ra] >= size[rb] else sb
        size[root] = size[ra] + size[rb]
        links.append((a, b, score))
    return links


def duplicate_groups(
    sha256: Sequence[str],
    signatures: Sequence[bytes | None] | None = None,
    sizes: Sequence[tuple[int, int]] | None = None,
    *,
    min_similarity: float = 0.97,
) -> np.ndarray:
    """One group id per item joining exact duplicates and (with signatures) verified near duplicates."""
    links = near_duplicate_pairs(signatures, sizes, min_similarity=min_similarity) if signatures is not None and sizes is not None else []
    return groups_from_links(sha256, links)


def groups_from_links(sha256: Sequence[str], links: Sequence[tuple[int, int, float]]) -> np.ndarray:
    """Group ids (each group's smallest item index) from exact copies plus near-duplicate links."""
    union = _UnionFind(len(sha256))
    for i, first in enumerate(exact_groups(sha256)):
        if first != i:
            union.union(i, int(first))
    for a, b, _ in links:
        union.union(a, b)
    return union.groups()
