"""Data checks and pipeline checks. Each returns CheckResult rows: pass/fail with value and threshold."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class CheckResult:
    """One row of a check report: what was measured, against what, and what to do if it failed."""

    name: str
    passed: bool
    value: float
    threshold: float
    meaning: str  # what the check tells, in one sentence
    advice: str  # what to do when it fails
    figure: Figure | None = field(default=None, repr=False)
    extra: dict[str, float] = field(default_factory=dict)  # side results, e.g. the suggested learning rate
    seconds: float = 0.0  # what the row cost to compute; work several rows share is counted once, on the row that ran it

    def __post_init__(self) -> None:
        # numpy's bool_ and float64 come out of comparisons on arrays; json (MLflow's log_dict)
        # writes a bool_ as the string "False", which every reader of checks.json takes as true
        self.passed = bool(self.passed)
        self.value, self.threshold, self.seconds = float(self.value), float(self.threshold), float(self.seconds)
        self.extra = {k: float(v) for k, v in self.extra.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "value": self.value,
            "threshold": self.threshold,
            "meaning": self.meaning,
            "advice": self.advice,
            "seconds": round(self.seconds, 3),
            **({"extra": self.extra} if self.extra else {}),
        }


def summary(results: list[CheckResult]) -> str:
    """'3/4 passed' (the tag the MLflow UI shows in the runs table)."""
    return f"{sum(r.passed for r in results)}/{len(results)} passed"
