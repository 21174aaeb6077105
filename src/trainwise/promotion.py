"""Whether the challenger replaces the champion, from their holdout scores alone (no MLflow here).

The rule (DESIGN.md, step 6b: "moves the `champion` alias only on a real win"): a challenger is
promoted only when it passed its pipeline checks and beats the champion on the selection metric,
in the metric's direction, by at least the configured margin; a tie is not a win, whatever the
margin. With no champion yet, a challenger that passed its checks becomes the first champion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from trainwise.errors import TrainwiseError

PROMOTED, KEPT, FIRST_CHAMPION, ROLLBACK = "promoted", "kept", "first-champion", "rollback"
MAXIMIZE, MINIMIZE = "maximize", "minimize"

# Holdout scores are averages of a few hundred items; a gain equal to the margin can come out of the
# subtraction a few ulps short (0.815 - 0.805 = 0.00999...), which must still count as "at least".
_ROUNDING = 1e-12


class PromotionError(TrainwiseError):
    """The registry is not in a state the promotion or rollback can start from (no challenger, no previous champion)."""


@dataclass(frozen=True)
class Candidate:
    """A registered model version as the decision sees it."""

    version: str
    score: float  # the selection metric on the holdout
    checks_passed: bool


@dataclass(frozen=True)
class Decision:
    outcome: str  # PROMOTED, KEPT or FIRST_CHAMPION
    reason: str  # one sentence with both numbers, for the run's tags and description
    gain: float | None  # the challenger's improvement in the metric's direction; None without a champion

    @property
    def promote(self) -> bool:
        return self.outcome in (PROMOTED, FIRST_CHAMPION)


def gain(challenger: float, champion: float, direction: str) -> float:
    """How much better the challenger is (positive: better), whichever way the metric points."""
    if direction not in (MAXIMIZE, MINIMIZE):
        raise ValueError(f"direction must be {MAXIMIZE!r} or {MINIMIZE!r}, not {direction!r}")
    return challenger - champion if direction == MAXIMIZE else champion - challenger


def decide(challenger: Candidate, champion: Candidate | None, *, metric: str, direction: str, margin: float) -> Decision:
    """Promote, keep, or crown the first champion; the reason names the versions and their scores."""
    if margin < 0:
        raise ValueError(f"the promotion margin must be >= 0, not {margin}")
    c = f"challenger v{challenger.version} ({metric} {challenger.score:.4f})"
    if not challenger.checks_passed:
        stays = f"champion v{champion.version} stays" if champion else "there is still no champion"
        return Decision(KEPT, f"{c} did not pass its pipeline checks, so it is not promoted; {stays}", None)
    if math.isnan(challenger.score):
        return Decision(KEPT, f"challenger v{challenger.version} has no {metric} on the holdout (NaN); it is not promoted", None)
    if champion is None:
        return Decision(FIRST_CHAMPION, f"no champion yet: {c} passed its checks and becomes the first champion", None)
    if champion.version == challenger.version:
        return Decision(KEPT, f"{c} is already the champion", 0.0)
    k = f"champion v{champion.version} ({champion.score:.4f})"
    better = gain(challenger.score, champion.score, direction)
    if math.isnan(better):
        return Decision(KEPT, f"{c} cannot be compared with {k}; the champion stays", None)
    if better > 0 and better + _ROUNDING >= margin:
        return Decision(PROMOTED, f"{c} beats {k} by {better:.4f} (margin {margin:g})", better)
    if better > 0:
        return Decision(KEPT, f"{c} beats {k} by only {better:.4f}, less than the margin {margin:g}; the champion stays", better)
    return Decision(KEPT, f"{c} does not beat {k} ({direction} {metric}); the champion stays", better)
