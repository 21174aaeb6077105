"""The pipeline's steps, in order. Each step is a module here with `run(cfg, run, ctx)`.

A step's cache key is built by trainwise.identity from named parts: the config sections it reads
(`sections`), its upstream steps' keys, the source's content digest when it reads the source
itself, the user's model code and weights, the skipped gate, and the code version.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from trainwise.errors import ConfigError


@dataclass(frozen=True)
class StepSpec:
    name: str
    number: str
    title: str
    sections: tuple[str, ...]
    upstream: tuple[str, ...] = ()
    reads_source: bool = False
    reads_registry: tuple[str, ...] = ()  # aliases whose versions it depends on (part of its cache key)
    optional_upstream: tuple[str, ...] = ()  # used when present (promote judges hand-registered versions too)

    @property
    def command(self) -> str:
        return f"trainwise {self.name}"

    def load(self) -> ModuleType:
        return importlib.import_module(f"trainwise.steps.{self.name}")


STEPS: tuple[StepSpec, ...] = (
    StepSpec("understand", "1", "understand the problem", ("name", "task", "data", "image", "submission"), reads_source=True),
    StepSpec("ingest", "2A", "get the data and check its quality", ("data", "task", "image"), reads_source=True),
    StepSpec("explore", "2B", "explore it (plots, data card)", ("task", "image", "sample"), ("ingest",)),
    StepSpec("sample", "2C", "draw a small stratified sample", ("sample", "split", "checks", "task"), ("ingest",)),
    StepSpec("prepare", "3", "split, normalise, augment, cache", ("split", "augment", "image", "task", "checks"), ("ingest", "sample")),
    StepSpec("check", "4", "pipeline checks on the sample", ("model", "train", "checks", "task"), ("ingest", "sample", "prepare")),
    StepSpec("train", "5", "train on the full data", ("model", "train", "checks", "task", "augment", "image"), ("ingest", "sample", "prepare", "check")),
    StepSpec("tune", "6", "Optuna tuning", ("tune", "model", "train", "registry", "augment", "task", "checks"), ("ingest", "prepare", "check")),
    StepSpec("promote", "6b", "challenger vs champion", ("registry", "task"), ("ingest", "prepare", "tune"), reads_registry=("challenger",), optional_upstream=("tune",)),
    StepSpec("submit", "7", "make a submission file", ("submission", "registry", "task"), ("ingest", "prepare", "promote"), reads_registry=("champion",)),
)

STEP_NAMES: tuple[str, ...] = tuple(spec.name for spec in STEPS)


def get_step(name: str) -> StepSpec:
    for spec in STEPS:
        if spec.name == name:
            return spec
    raise ConfigError(f"no step named {name!r}; the steps are {', '.join(STEP_NAMES)}")
