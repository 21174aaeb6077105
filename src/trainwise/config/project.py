"""The whole project config: every section, checked against each other."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, PrivateAttr, model_validator

from trainwise.config.base import Section
from trainwise.config.sections import (
    AugmentConfig,
    ChecksConfig,
    ImageConfig,
    ModelConfig,
    RegistryConfig,
    SampleConfig,
    SplitConfig,
    SubmissionConfig,
    TaskConfig,
    TrainConfig,
)
from trainwise.config.sources import IMAGE_SOURCE_KINDS, DataConfig
from trainwise.config.tune import CategoricalParam, FloatParam, IntParam, TuneConfig
from trainwise.provenance import canonical_json, short_hash

# The default search space of a table project with the default model: the rate, the weight decay
# (small tables overfit; the baseline's strength is its L2 penalty), dropout and the MLP's depth
# from 0 (a linear model, the classical baseline's kind) to 3, and its width.
TABLE_SPACE = {
    "train.lr": FloatParam(type="float", low=1e-4, high=3e-2, log=True),
    "train.weight_decay": FloatParam(type="float", low=1e-6, high=1e-1, log=True),
    "model.params.depth": IntParam(type="int", low=0, high=3),
    "model.params.width": CategoricalParam(type="categorical", choices=[32, 64, 128, 256]),
    "model.params.dropout": FloatParam(type="float", low=0.0, high=0.5),
}

# --- the project --------------------------------------------------------------------------------


class ProjectConfig(Section):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="lower-case slug; names the experiment")
    description: str = ""
    task: TaskConfig
    data: DataConfig
    image: ImageConfig = Field(default_factory=ImageConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    checks: ChecksConfig = Field(default_factory=ChecksConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    submission: SubmissionConfig = Field(default_factory=SubmissionConfig)

    _source_file: Path | None = PrivateAttr(None)
    _dry_run: bool = PrivateAttr(False)

    @model_validator(mode="after")
    def _consistent(self) -> ProjectConfig:
        kind = self.data.source.kind
        if self.task.is_image != (kind in IMAGE_SOURCE_KINDS):
            raise ValueError(f"data.source.kind {kind!r} does not fit task.type {self.task.type!r}")
        if self.submission.tta == "flip" and not self.task.is_image:
            raise ValueError(f"submission.tta 'flip' mirrors images; task.type {self.task.type!r} predicts table rows")
        if not self.task.is_classification:
            for key, default in (("class_weight", "none"), ("sampler", "shuffle")):
                if getattr(self.train, key) != default:
                    raise ValueError(f"train.{key} {getattr(self.train, key)!r} needs classes; task.type {self.task.type!r} has none")
        if self.registry.model_name is None:
            self.registry.model_name = f"trainwise-{self.name}"
        self._table_defaults()
        return self

    def _table_defaults(self) -> None:
        """A table project that names no model gets the MLP, and with it a search space (the image
        default, simple_cnn, cannot read table rows; an empty space could not be tuned)."""
        if self.task.is_image or "name" in self.model.model_fields_set:
            return
        self.model.name = "mlp"
        if not self.tune.space:
            # layer sizes the user gave stay: depth and width would conflict with them
            fixed = {"model.params.depth", "model.params.width"} if "hidden" in self.model.params else set()
            self.tune.space = {key: param for key, param in TABLE_SPACE.items() if key not in fixed}

    @property
    def source_file(self) -> Path | None:
        """The project.yaml this config was loaded from."""
        return self._source_file

    @property
    def project_dir(self) -> Path | None:
        return self._source_file.parent if self._source_file else None

    @property
    def project_ref(self) -> str:
        """How to name this project on the command line: relative to the working directory if inside it."""
        if self.project_dir is None:
            return self.name
        try:
            return self.project_dir.relative_to(Path.cwd()).as_posix()
        except ValueError:
            return str(self.project_dir)

    @property
    def dry_run(self) -> bool:
        return self._dry_run

    def section(self, name: str) -> Any:
        """One section as plain JSON-able data with portable paths (what cache keys hash)."""
        return self.portable_dict()[name]

    def to_dict(self) -> dict[str, Any]:
        """The resolved config with absolute paths (what derived configs are validated from)."""
        return self.model_dump(mode="json")

    def portable_dict(self) -> dict[str, Any]:
        """The resolved config with every path as `portable_path` writes it: the same on any machine."""
        return _portable(self.model_dump(mode="python"), self.model_dump(mode="json"), self.project_dir)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.portable_dict(), sort_keys=False)

    def config_hash(self) -> str:
        return short_hash(self.portable_dict(), 12)

    def flat_params(self) -> dict[str, str]:
        """The resolved config as flat `section.key` params, each a canonical string."""
        return flatten(self.portable_dict())


def portable_path(path: Path, project_dir: Path | None) -> str:
    """A path as keys and logged configs hold it: relative to the project folder when inside it,
    `$TRAINWISE_HOME/...` when generated there (the digits folder), else absolute (a system copy)."""
    from trainwise.paths import HOME_ENV, trainwise_home

    for base, prefix in ((project_dir, ""), (trainwise_home(), f"${HOME_ENV}/")):
        if base is not None and path.is_relative_to(base):
            return prefix + (path.relative_to(base).as_posix() or ".")
    return path.as_posix()


def _portable(python: Any, plain: Any, project_dir: Path | None) -> Any:
    """`plain` (a JSON dump) with each value that is a Path in `python` (the same dump, unconverted) made portable.

    Model references hold paths too (`/abs/model.py:Class`): their file part is made portable as well.
    """
    if isinstance(python, Path):
        return portable_path(python, project_dir)
    if isinstance(python, dict):
        return {key: _portable(python[key], plain[key], project_dir) for key in plain}
    if isinstance(python, list | tuple):
        return [_portable(a, b, project_dir) for a, b in zip(python, plain, strict=True)]
    if isinstance(python, str) and python.startswith("/") and (".py:" in python or python.endswith(".safetensors")):
        location, sep, rest = python.partition(".py:") if ".py:" in python else (python, "", "")
        return portable_path(Path(location + (".py" if sep else "")), project_dir) + (":" + rest if sep else "")
    return plain


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{'a': {'b': 1}} -> {'a.b': '1'}; lists and empty mappings become canonical JSON."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{path}."))
        elif isinstance(value, str):
            flat[path] = value
        else:
            flat[path] = canonical_json(value)
    return flat
