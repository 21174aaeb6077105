"""Loading a project: find its project.yaml, apply `--set` overrides, validate, explain errors.

Loading never shows a pydantic traceback: problems come back as one ConfigError listing each bad
key path, as the user wrote it, with the file it came from.
"""

from __future__ import annotations

import difflib
import re
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from trainwise.config.project import ProjectConfig
from trainwise.config.sources import SOURCE_KINDS
from trainwise.errors import ConfigError

CONFIG_FILENAME = "project.yaml"

# Overrides applied by --dry-run: every step finishes in seconds, on the same code path.
DRY_RUN_OVERRIDES: dict[str, Any] = {
    "sample.size": 100,
    "sample.fraction": None,
    "train.epochs": 1,
    "train.early_stopping_patience": None,
    "tune.trials": 2,
    "tune.timeout": None,
    "tune.epochs": 1,
    "checks.learning_curve_fractions": [0.5],
    "checks.learning_curve_budget": 1.0,  # one refit on half the data fits in one main training's compute
}

# --- loading ------------------------------------------------------------------------------------


def find_project_file(project: str | Path) -> Path:
    """`projects/digits`, `projects/digits/project.yaml` or a name under ./projects."""
    candidate = Path(project).expanduser()
    options = [candidate / CONFIG_FILENAME, candidate]
    if not candidate.is_absolute() and len(candidate.parts) == 1:
        options.append(Path("projects") / candidate / CONFIG_FILENAME)
    for path in options:
        if path.is_file():
            return path.resolve()
    known = sorted(p.parent.name for p in Path("projects").glob(f"*/{CONFIG_FILENAME}"))
    hint = f" Projects here: {', '.join(known)}." if known else ""
    raise ConfigError(f"no project at {project}: expected a folder holding {CONFIG_FILENAME} (or the file itself).{hint}")


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """`["train.epochs=3 sample.size=200", "model.name=resnet"]` -> {'train.epochs': 3, ...}.

    Each item may hold several space-separated assignments (an MLproject parameter is one string);
    a word that does not start with `key=` continues the previous value, so
    `tune.space.lr={type: float, low: 0.001, high: 0.1}` stays one assignment. Values are parsed as
    YAML: 3 is an int, true a bool, [1, 2] a list and null None.
    """
    assignments: list[str] = []
    for item in items:
        for word in shlex.split(item or ""):
            if _ASSIGNMENT.match(word) or not assignments:
                assignments.append(word)
            else:
                assignments[-1] += " " + word
    overrides: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep or not _ASSIGNMENT.match(assignment):
            raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE with a dotted key, like train.epochs=3")
        try:
            overrides[key] = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {assignment!r}: the value is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    return overrides


_ASSIGNMENT = re.compile(r"^[A-Za-z_][\w-]*(\.[\w-]+)*=")


def apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set each dotted key in a nested dict, creating sections as needed.

    Search-space keys are themselves dotted config paths, so everything after `tune.space.` is one
    key: `tune.space.train.lr={...}` sets the space entry 'train.lr'.
    """
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        if parts[:2] == ["tune", "space"] and len(parts) > 2:
            parts = [*parts[:2], ".".join(parts[2:])]
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {dotted}: {'.'.join(parts[: i + 1])} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return raw


def load_config(
    project: str | Path,
    overrides: Iterable[str] = (),
    *,
    dry_run: bool = False,
) -> ProjectConfig:
    """Load, override and validate a project's config; every problem is a ConfigError."""
    path = find_project_file(project)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (name, task, data, ...), got {type(raw).__name__}")
    parsed = parse_overrides(overrides)
    if dry_run:
        parsed = {**DRY_RUN_OVERRIDES, **parsed}
    apply_overrides(raw, parsed)
    try:
        config = ProjectConfig.model_validate(raw, context={"project_dir": path.parent})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, path, from_overrides=bool(parsed))) from None
    config._source_file = path
    config._dry_run = dry_run
    return config


def format_validation_error(exc: ValidationError, path: Path, *, from_overrides: bool) -> str:
    """One line per problem: the dotted key path as the user wrote it, and what is wrong."""
    lines = []
    for error in exc.errors(include_url=False):
        loc = _user_loc(error["loc"])
        key = ".".join(str(part) for part in loc) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key" + _suggestion(loc)
        elif error["type"] == "missing":
            message = "required key is missing"
        elif error["type"] == "union_tag_invalid":
            message = f"unknown kind {error['input'].get('kind')!r}; choose one of {', '.join(SOURCE_KINDS)}" if key.endswith("source") else message
        elif "input" in error and not isinstance(error["input"], dict | list):
            message += f" (got {error['input']!r})"
        lines.append(f"  - {key}: {message}")
    origin = f"{path} (with --set overrides)" if from_overrides else str(path)
    noun = "problem" if len(lines) == 1 else "problems"
    return f"{origin}: {len(lines)} {noun}:\n" + "\n".join(lines)


def _user_loc(loc: tuple[Any, ...]) -> list[Any]:
    """Drop the tags pydantic adds for discriminated unions (data.source.image_folder.root -> data.source.root)."""
    tags = set(SOURCE_KINDS) | {"float", "int", "categorical"}
    out: list[Any] = []
    for i, part in enumerate(loc):
        parent = loc[i - 1] if i else None
        grandparent = loc[i - 2] if i > 1 else None
        if part in tags and (parent == "source" or grandparent == "space"):
            continue
        out.append(part)
    return out


def _suggestion(loc: list[Any]) -> str:
    """' (did you mean 'train'?)' for a misspelt key, from the names its section allows."""
    model: Any = ProjectConfig
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) and hasattr(model, "model_fields") else None
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (allowed: {', '.join(model.model_fields)})"


def with_overrides(cfg: ProjectConfig, overrides: Mapping[str, Any]) -> ProjectConfig:
    """A copy of a loaded config with dotted-key overrides (a tuning trial's parameters), validated."""
    raw = apply_overrides(cfg.to_dict(), dict(overrides))
    base = cfg.source_file or Path("project.yaml")
    try:
        derived = ProjectConfig.model_validate(raw, context={"project_dir": base.parent})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, base, from_overrides=True)) from None
    derived._source_file = cfg.source_file
    derived._dry_run = cfg.dry_run
    return derived
