"""The base of every config section and the path rule they share."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationInfo


class Section(BaseModel):
    """A config section: unknown keys are errors (a typo must not silently fall back to a default)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def resolve_path(value: Path | None, info: ValidationInfo, *, must_exist: bool = True) -> Path | None:
    """Resolve a path against the project folder and, if asked, require it to exist."""
    if value is None:
        return None
    base = (info.context or {}).get("project_dir")
    path = Path(value).expanduser()
    if base is not None and not path.is_absolute():
        path = Path(base) / path
    path = path.resolve()
    if must_exist and not path.exists():
        raise ValueError(f"{path} does not exist")
    return path
