"""The check step's compute budget: how many steps, items and epochs the training checks may use.

The checks' settings (checks.overfit_steps, checks.sample_epochs, checks.lr_range_steps, the
sample's training split at train.batch_size) were sized on 8x8 digits, where they cost seconds. A
64-px ResNet pays 100-1,000 times more per step, and the same settings ran for tens of minutes
(issue 10 §4). So the step first times a few training steps of the project's model at its image
size on this machine (`measure_step_cost`), then `plan_checks` keeps the configured settings when
they fit `checks.budget_seconds` and otherwise scales the costly knobs down together, never below
floors that keep each check meaningful. What was planned, and why, is in the check report.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

# Floors, chosen rather than measured at the floor itself: the unit tests' settings (40-step sweep),
# and what the 64-px photo case passed at when scaled to 49% (10 epochs on 296 items, 98 overfit
# steps, 70 sweep steps of 45; bench/bench_check.py). Below them a check's noise grows; a plan that
# needs less than the floors runs at the floors and says so by its estimate.
MIN_FIT_EPOCHS = 6  # the short fits' epochs (the onecycle schedule is fitted to however many there are)
MIN_FIT_ITEMS = 200  # training items of each short fit (a stratified prefix of the sample's training split)
MIN_OVERFIT_STEPS = 60  # at most; the check stops earlier once the batch is memorised
MIN_LR_RANGE_STEPS = 40  # points of the learning-rate sweep (the unit tests' setting)
MIN_LR_RANGE_BATCH = 32  # items per step of the sweep
PROBE_STEPS = 2  # timed steps per batch size after one warm-up step
FORWARD_SHARE = 1 / 3  # an evaluation (forward only) item costs about a third of a training item


@dataclass(frozen=True)
class StepCost:
    """Seconds of one training step (forward, backward, optimiser) of `batch` items: fixed + per_item * batch."""

    fixed: float
    per_item: float

    def step(self, batch: int) -> float:
        return self.fixed + self.per_item * batch

    def forward(self, items: int) -> float:
        return self.per_item * items * FORWARD_SHARE


@dataclass(frozen=True)
class CheckPlan:
    """What the training checks run: the configured settings, or fewer steps when those would not fit the budget."""

    overfit_steps: int
    overfit_batch: int
    fit_items: int  # training items of each short fit
    fit_epochs: int
    fit_batch: int
    lr_range_steps: int
    lr_range_batch: int
    scale: float  # 1.0: as configured; less: the share of the configured work planned
    budget: float | None  # checks.budget_seconds
    cost: StepCost | None  # None: not measured (no budget)
    threads: int | None = None  # torch threads the checks train with (None: as the process has them)
    estimates: dict[str, float] = field(default_factory=dict)  # expected seconds per check at this plan

    @property
    def estimated_seconds(self) -> float:
        return sum(self.estimates.values())

    def describe(self) -> str:
        """One sentence for the check report: what runs, and why."""
        work = (
            f"short fits on {self.fit_items} items for {self.fit_epochs} epochs, {self.overfit_steps} steps to overfit one batch, "
            f"a learning-rate sweep of {self.lr_range_steps} steps of {self.lr_range_batch}"
        )
        if self.cost is None:
            return f"as configured (no checks.budget_seconds): {work}"
        measured = f"one training step of {self.fit_batch} items measured at {self.cost.step(self.fit_batch) * 1e3:.0f} ms" + (
            f" with {self.threads} torch thread{'s' if self.threads != 1 else ''}" if self.threads else ""
        )
        if self.scale >= 1.0:
            return f"as configured, {work}: {measured}, about {self.estimated_seconds:.0f} s of {self.budget:g} s"
        return (
            f"scaled to {self.scale:.0%} of the configured work to fit checks.budget_seconds ({self.budget:g} s): {work}; "
            f"{measured}, about {self.estimated_seconds:.0f} s expected"
        )

    def to_params(self) -> dict[str, Any]:
        """Flat values for the run's params (so a reader sees what the checks trained)."""
        values = {k: v for k, v in asdict(self).items() if k not in ("cost", "estimates")}
        if self.cost is not None:
            values |= {"step_fixed_seconds": round(self.cost.fixed, 6), "step_item_seconds": round(self.cost.per_item, 6)}
        return {f"check_plan.{k}": v for k, v in values.items()}


@dataclass(frozen=True)
class Configured:
    """The configured work of the training checks, before any budget."""

    train_items: int
    val_items: int
    batch_size: int  # train.batch_size
    sample_epochs: int
    overfit_steps: int
    overfit_batch: int
    lr_range_steps: int
    fits: int  # short fits to run: real, zeroed, shuffled, and the plain one of destructive_augmentation


def estimates(work: Configured, cost: StepCost, *, fit_items: int, fit_epochs: int, overfit_steps: int,
              lr_range_steps: int, lr_range_batch: int) -> dict[str, float]:  # fmt: skip
    """Expected seconds of each costly check at these settings."""
    batch = min(work.batch_size, fit_items)
    steps = max(1, math.ceil(fit_items / batch))
    per_fit = fit_epochs * (steps * cost.step(batch) + cost.forward(work.val_items))
    small = cost.forward(work.train_items) + 6 * cost.step(min(64, work.train_items))  # loss at init, one step, five steps
    return {
        "first_steps": small,
        "overfit_one_batch": overfit_steps * cost.step(work.overfit_batch),
        "short_fits": work.fits * per_fit,
        "lr_range_test": lr_range_steps * cost.step(lr_range_batch),
    }


def plan_checks(work: Configured, cost: StepCost | None, budget: float | None, *, threads: int | None = None) -> CheckPlan:
    """The configured settings when they fit `budget` seconds (or there is no budget), else the largest
    share of them that fits, every knob scaled by the same factor and held at its floor.

    The floors can exceed a small budget: the plan then stays at the floors (a check that cannot
    tell a bug from noise is worse than a slow one), and the report says so by its estimate.
    """
    full = {
        "fit_items": work.train_items,
        "fit_epochs": work.sample_epochs,
        "overfit_steps": work.overfit_steps,
        "lr_range_steps": work.lr_range_steps,
        "lr_range_batch": min(work.batch_size, work.train_items),
    }
    scale, settings = 1.0, full
    if cost is not None and budget is not None and sum(estimates(work, cost, **full).values()) > budget:
        low, high = 0.0, 1.0  # bisect on the scale: every knob, and so the estimate, grows with it
        for _ in range(30):
            middle = (low + high) / 2
            if sum(estimates(work, cost, **_scaled(full, middle)).values()) <= budget:
                low = middle
            else:
                high = middle
        scale, settings = low, _scaled(full, low)
    return CheckPlan(
        overfit_steps=settings["overfit_steps"],
        overfit_batch=work.overfit_batch,
        fit_items=settings["fit_items"],
        fit_epochs=settings["fit_epochs"],
        fit_batch=min(work.batch_size, settings["fit_items"]),
        lr_range_steps=settings["lr_range_steps"],
        lr_range_batch=settings["lr_range_batch"],
        scale=scale,
        budget=budget,
        cost=cost,
        threads=threads,
        estimates=estimates(work, cost, **settings) if cost is not None else {},
    )


def _scaled(full: dict[str, int], scale: float) -> dict[str, int]:
    """Each knob at `scale` of its configured value, held at its floor (never above the configured value)."""

    def knob(value: int, floor: int, share: float) -> int:
        return min(value, max(floor, round(value * share)))

    # A short fit's work is epochs x items, and the sweep's is steps x batch: each factor takes
    # the square root of the scale, so neither is cut to its floor first.
    root = math.sqrt(scale)
    return {
        "fit_items": knob(full["fit_items"], MIN_FIT_ITEMS, root),
        "fit_epochs": knob(full["fit_epochs"], MIN_FIT_EPOCHS, root),
        "overfit_steps": knob(full["overfit_steps"], MIN_OVERFIT_STEPS, scale),
        "lr_range_steps": knob(full["lr_range_steps"], MIN_LR_RANGE_STEPS, root),
        "lr_range_batch": knob(full["lr_range_batch"], MIN_LR_RANGE_BATCH, root),
    }


def measure_step_cost(
    step: Callable[[int], None],
    sizes: tuple[int, int],
    *,
    threads: tuple[int, ...] = (),
) -> tuple[StepCost, int]:
    """Time training steps (`step(batch_size)` runs one: batch, augmentation, forward, backward,
    optimiser) and fit fixed + per_item * size through the two sizes; with several `threads`
    counts, the fastest count at the larger size is chosen first. Returns the cost and that count.

    Each timing is the fastest of PROBE_STEPS after a warm-up step (the first allocates and picks
    kernels). The fastest, not the mean: a step slowed by another process's burst says little
    about the next one, and a machine loaded all along is slow in every step.
    """
    small, large = sizes
    previous = torch.get_num_threads()
    try:
        chosen, t_large = fastest_threads(step, large, threads or (previous,))
        torch.set_num_threads(chosen)
        t_small = _fastest(step, small) if small < large else t_large
    finally:
        torch.set_num_threads(previous)
    per_item = (t_large - t_small) / (large - small) if large > small else 0.0
    fixed = t_small - per_item * small
    if per_item <= 0.0 or fixed < 0.0:  # noise made the larger batch no slower (or cheaper per step): all per item, the safe side
        per_item, fixed = t_large / large, 0.0
    return StepCost(fixed=fixed, per_item=per_item), chosen


def fastest_threads(step: Callable[[int], None], size: int, candidates: tuple[int, ...]) -> tuple[int, float]:
    """The torch thread count among `candidates` whose steps of `size` items run fastest now, and
    that step's seconds; leaves torch's thread count as it found it."""
    previous = torch.get_num_threads()
    timings = {}
    try:
        for count in candidates:
            torch.set_num_threads(count)
            timings[count] = _fastest(step, size)
    finally:
        torch.set_num_threads(previous)
    chosen = min(timings, key=timings.__getitem__)
    return chosen, timings[chosen]


def _fastest(step: Callable[[int], None], size: int) -> float:
    best = math.inf
    for attempt in range(PROBE_STEPS + 1):
        started = time.perf_counter()
        step(size)
        if attempt:
            best = min(best, time.perf_counter() - started)
    return best
