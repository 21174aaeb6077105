"""The tuning section: study budget, sampler, pruner and the search space."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from trainwise.config.base import Section

# --- tuning -------------------------------------------------------------------------------------

TUNABLE_SECTIONS = ("train", "model", "augment")


class _SpaceParam(Section):
    when: dict[str, Any] | None = Field(None, description="only suggested when these other parameters have these values")


class FloatParam(_SpaceParam):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = None

    @model_validator(mode="after")
    def _bounds(self) -> FloatParam:
        _check_bounds(self.low, self.high, self.log)
        return self


class IntParam(_SpaceParam):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = 1

    @model_validator(mode="after")
    def _bounds(self) -> IntParam:
        _check_bounds(self.low, self.high, self.log)
        return self


class CategoricalParam(_SpaceParam):
    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)


def _check_bounds(low: float, high: float, log: bool) -> None:
    if low >= high:
        raise ValueError(f"low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise ValueError(f"a log-scaled range needs low > 0 (got {low})")


SpaceParam = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


class TuneConfig(Section):
    trials: int | None = Field(20, ge=1, description="trials per study (this worker's share); null: until timeout")
    timeout: float | None = Field(None, gt=0, description="seconds; the study stops after this")
    sampler: str = Field("tpe", description="tpe, random, cmaes, qmc, gp, or any optuna.samplers class name")
    pruner: str = Field("median", description="median, hyperband, successive_halving, none")
    warmup_epochs: int = Field(1, ge=0, description="epochs before a trial may be pruned")
    # Not `on:` - YAML 1.1 reads that key as the boolean True.
    dataset: Literal["sample", "full"] = Field("sample", description="tune on the sample or the full training data")
    epochs: int | None = Field(None, ge=1, description="epochs per trial; default train.epochs")
    seed: int = 0
    storage: str | None = Field(None, description="Optuna storage URL; default SQLite under .trainwise/")
    heartbeat_s: int = Field(10, ge=1, description="RDB storages: a running trial's heartbeat interval")
    grace_s: int = Field(60, ge=2, description="a trial whose heartbeat is older than this is failed and retried")
    retrain: bool = Field(
        True,
        description="register the best configuration as challenger: the best trial's own model when tuning ran on the "
        "full data, else retrained on the full training data; false: only the study",
    )
    space: dict[str, SpaceParam] = Field(default_factory=dict, description="config path -> distribution")

    @field_validator("space")
    @classmethod
    def _tunable_paths(cls, space: dict[str, Any]) -> dict[str, Any]:
        for key, param in space.items():
            if key.split(".")[0] not in TUNABLE_SECTIONS:
                raise ValueError(f"{key!r}: only keys under {', '.join(TUNABLE_SECTIONS)} can be tuned")
            for other in (param.when or {}):
                if other not in space:
                    raise ValueError(f"{key!r}: 'when' names {other!r}, which is not in the search space")
        return space

    @model_validator(mode="after")
    def _budget(self) -> TuneConfig:
        if self.trials is None and self.timeout is None:
            raise ValueError("give tune.trials or tune.timeout (or both); with neither the study never ends")
        return self
