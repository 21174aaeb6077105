"""What produced a run: code version, git commit, package versions, canonical hashes."""

import functools
import hashlib
import json
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

_PACKAGE_DIR = Path(__file__).resolve().parent
_REPORTED_PACKAGES = ("trainwise", "torch", "torchvision", "mlflow", "optuna", "numpy", "pandas", "scikit-learn")


def canonical_json(obj: Any) -> str:
    """One string per value: sorted keys, no spaces. Hashes and cache keys are built on this."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def short_hash(obj: Any, length: int = 16) -> str:
    """sha256 of the canonical JSON of `obj`, cut to `length` hex characters."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


@functools.cache
def code_version() -> str:
    """A hash of trainwise's own source files.

    Part of every step's cache key, so editing the code (committed or not) invalidates cached runs;
    a git commit alone would miss uncommitted edits and be absent in an installed wheel.
    """
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE_DIR.rglob("*.py")):
        digest.update(path.relative_to(_PACKAGE_DIR).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


@functools.cache
def git_commit(start: Path | None = None) -> str | None:
    """The commit of the git checkout trainwise runs from, or None outside one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=start or _PACKAGE_DIR,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.cache
def package_versions() -> dict[str, str]:
    """Versions of the packages that decide a run's result, plus Python's."""
    versions = {"python": platform.python_version()}
    for name in _REPORTED_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions
