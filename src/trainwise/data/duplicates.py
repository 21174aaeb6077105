"""Exact and near duplicates: groups that must never straddle splits.

Exact duplicates share a sha256. Near duplicates have difference hashes within a small Hamming
distance. Comparing every pair is quadratic (70,000 images: 2.4 billion pairs), so candidates come
from the pigeonhole principle: split the 64 bits into d+1 chunks; two hashes within distance d
agree exactly on at least one chunk, so only hashes sharing a chunk value are compared.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np


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


def exact_groups(sha256: Sequence[str]) -> np.ndarray:
    """Group id per item (the index of the group's first item); unique items are their own group."""
    first: dict[str, int] = {}
    return np.array([first.setdefault(digest, i) for i, digest in enumerate(sha256)], dtype=np.int64)


def near_pairs(hashes: Sequence[int | None], max_distance: int) -> list[tuple[int, int]]:
    """Pairs of positions whose 64-bit hashes differ in at most `max_distance` bits (None: never near)."""
    if max_distance < 0 or len(hashes) < 2:
        return []
    # Identical hashes are trivially near; compare each distinct value once.
    positions: dict[int, list[int]] = defaultdict(list)
    for i, value in enumerate(hashes):
        if value is not None:
            positions[int(value)].append(i)
    pairs = [(members[0], other) for members in positions.values() for other in members[1:]]
    values = list(positions)
    if max_distance == 0:
        return pairs
    chunks = max_distance + 1
    bounds = [int(b) for b in np.linspace(0, 64, chunks + 1)]  # Python ints: hashes use all 64 bits
    seen: set[tuple[int, int]] = set()
    for c in range(chunks):
        width = bounds[c + 1] - bounds[c]
        mask = (1 << width) - 1
        buckets: dict[int, list[int]] = defaultdict(list)
        for j, value in enumerate(values):
            buckets[(value >> bounds[c]) & mask].append(j)
        for members in buckets.values():
            for x in range(len(members)):
                for y in range(x + 1, len(members)):
                    a, b = members[x], members[y]
                    if (a, b) in seen:
                        continue
                    seen.add((a, b))
                    if (values[a] ^ values[b]).bit_count() <= max_distance:
                        pairs.append((positions[values[a]][0], positions[values[b]][0]))
    return pairs


def duplicate_groups(sha256: Sequence[str], hashes: Sequence[int | None] | None, max_distance: int) -> np.ndarray:
    """One group id per item joining exact duplicates and (when hashes are given) near duplicates."""
    n = len(sha256)
    union = _UnionFind(n)
    for i, first in enumerate(exact_groups(sha256)):
        if first != i:
            union.union(i, int(first))
    if hashes is not None:
        for a, b in near_pairs(hashes, max_distance):
            union.union(a, b)
    return union.groups()
