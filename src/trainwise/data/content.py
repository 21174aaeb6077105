"""Content hashes of source files, kept cheap on repeat by a cache keyed on what a rewrite changes.

A file's cached sha256 is reused only while its size, mtime, ctime and inode are all unchanged (git's
index uses the same stat data). ctime is set by the kernel on every write and cannot be set back
by `touch -d` or `os.utime`, so a rewrite that restores size and mtime is still seen; `touch`
alone misses the cache, rehashes, and finds the same content: the keys do not change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

Stat = tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, inode


def file_stat(path: Path) -> Stat | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class HashCache:
    """sha256 per file, reused while the file's stat is unchanged; saved atomically as JSON."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.entries: dict[str, list] = {}
        if file.is_file():
            try:
                self.entries = json.loads(file.read_text())
            except (OSError, ValueError) as exc:
                log.warning("ignoring the unreadable hash cache %s (%s)", file, exc)
        self.changed = False

    def sha256(self, path: Path) -> str | None:
        stat = file_stat(path)
        if stat is None:
            return None
        key = str(path)
        hit = self.entries.get(key)
        if hit is not None and tuple(hit[:4]) == stat:
            return str(hit[4])
        digest = sha256_file(path)
        self.entries[key] = [*stat, digest]
        self.changed = True
        return digest

    def save(self) -> None:
        if not self.changed:
            return
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_name(f".{self.file.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.entries))
        os.replace(tmp, self.file)  # atomic: a reader never sees half a cache
        self.changed = False


def tree_digest(roots: Iterable[tuple[str, Path]], cache: HashCache) -> str:
    """sha256 over (role, path relative to its root, content hash) of every file under each root.

    Locations are not part of it: the same files in another folder or on another machine give the
    same digest; a missing root is recorded as missing.
    """
    digest = hashlib.sha256()
    for role, root in roots:
        if not root.exists():
            digest.update(f"{role}\0absent\n".encode())
            continue
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for file in files:
            name = file.name if file == root else file.relative_to(root).as_posix()
            digest.update(f"{role}\0{name}\0{cache.sha256(file)}\n".encode())
    cache.save()
    return digest.hexdigest()[:32]
