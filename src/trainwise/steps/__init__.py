"""The pipeline's steps, in order. Each step is a module here with `run(cfg, run, ctx)`.

A step's cache key is built by trainwise.identity from named parts: the config sections it reads
(`sections`), its upstream steps' keys, the source's content digest when it reads the source
itself, the user's model code and weights, the skipped gate, and the code version.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection
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
    # Dotted keys of its sections that the step never reads: left out of its identity, so changing
    # one does not rerun it. tests/unit/test_identity_ignores.py checks each against the code.
    ignores: tuple[str, ...] = ()

    @property
    def command(self) -> str:
        return f"trainwise {self.name}"

    def load(self) -> ModuleType:
        return importlib.import_module(f"trainwise.steps.{self.name}")


def _checks_except(*reads: str) -> tuple[str, ...]:
    """Every `checks.<field>` but those the step reads (the thresholds of the rows it judges)."""
    from trainwise.config import ChecksConfig

    return tuple(f"checks.{name}" for name in ChecksConfig.model_fields if name not in reads)


def _train_except(*reads: str) -> tuple[str, ...]:
    """Every `train.<field>` but those the step reads."""
    from trainwise.config.sections import TrainConfig

    return tuple(f"train.{name}" for name in TrainConfig.model_fields if name not in reads)


SAMPLE_CHECKS = ("max_label_distance", "max_property_drift")
PREPARE_CHECKS = ("max_leaked_duplicates", "max_near_copies_of_test", "min_class_items", "max_test_drift", "max_domain_auc", "max_property_label_auc")
# The settings only training reads after its model is logged (the learning-curve refits), and those
# the check's short fits replace with their own (checks.sample_epochs, no early stopping).
AFTER_TRAINING = ("checks.learning_curve_fractions", "checks.learning_curve_budget")
CHECK_IGNORES = (*AFTER_TRAINING, *(f"checks.{n}" for n in (*SAMPLE_CHECKS, *PREPARE_CHECKS)), "train.epochs", "train.early_stopping_patience")

STEPS: tuple[StepSpec, ...] = (
    StepSpec("understand", "1", "understand the problem", ("name", "task", "data", "image", "submission", "train"), reads_source=True,
             ignores=_train_except("class_weight", "sampler")),  # the card's advice on unbalanced classes
    StepSpec("ingest", "2A", "get the data and check its quality", ("data", "task", "image"), reads_source=True),
    StepSpec("explore", "2B", "explore it (plots, data card)", ("task", "image", "sample"), ("ingest",)),
    StepSpec("sample", "2C", "draw a small stratified sample", ("sample", "split", "checks", "task"), ("ingest",), ignores=_checks_except(*SAMPLE_CHECKS)),
    StepSpec("prepare", "3", "split, normalise, augment, cache", ("split", "augment", "image", "task", "checks"), ("ingest", "sample"), ignores=_checks_except(*PREPARE_CHECKS)),
    StepSpec("check", "4", "pipeline checks on the sample", ("model", "train", "checks", "task"), ("ingest", "sample", "prepare"), ignores=CHECK_IGNORES),
    StepSpec("train", "5", "train on the full data", ("model", "train", "checks", "task", "augment", "image"), ("ingest", "sample", "prepare", "check")),
    StepSpec("tune", "6", "Optuna tuning", ("tune", "model", "train", "registry", "augment", "task", "checks"), ("ingest", "prepare", "check"), ignores=AFTER_TRAINING),
    StepSpec("promote", "6b", "challenger vs champion", ("registry", "task"), ("ingest", "prepare", "tune"), reads_registry=("challenger",), optional_upstream=("tune",)),
    StepSpec("submit", "7", "make a submission file", ("submission", "registry", "task"), ("ingest", "prepare", "promote"), reads_registry=("champion",)),
)

STEP_NAMES: tuple[str, ...] = tuple(spec.name for spec in STEPS)


def get_step(name: str) -> StepSpec:
    for spec in STEPS:
        if spec.name == name:
            return spec
    raise ConfigError(f"no step named {name!r}; the steps are {', '.join(STEP_NAMES)}")


def upstream_closure(name: str, without: Callable[[str], Collection[str]] = lambda step: ()) -> tuple[str, ...]:
    """Every step `name` reads from, directly or through others, in pipeline order.

    `without(step)`: upstream steps that `step` does without (none by default: optional upstream
    included, as the pipeline runs it; promote judges tune's challenger when there is one).
    """
    needed: set[str] = set()
    pending = [u for u in get_step(name).upstream if u not in without(name)]
    while pending:
        step = pending.pop()
        if step not in needed:
            needed.add(step)
            pending += [u for u in get_step(step).upstream if u not in without(step)]
    return tuple(s for s in STEP_NAMES if s in needed)
