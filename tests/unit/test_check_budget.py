"""The check step's compute budget: a measured step cost decides how much work each training check gets."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.unit.test_pipeline_checks import setup
from trainwise.checks import budget
from trainwise.checks.budget import (
    MIN_FIT_EPOCHS,
    MIN_FIT_ITEMS,
    MIN_LR_RANGE_STEPS,
    MIN_OVERFIT_STEPS,
    CheckPlan,
    Configured,
    StepCost,
    measure_step_cost,
    plan_checks,
)
from trainwise.checks.pipeline import CheckSetup, check_lr_range, check_overfit_one_batch, plan_for, short_fit
from trainwise.config import ChecksConfig

# A 500-item sample (350 to train on) at the defaults: 200 overfit steps, 15 epochs, a 100-step sweep.
WORK = Configured(
    train_items=350, val_items=75, batch_size=64, sample_epochs=15, overfit_steps=200, overfit_batch=16, lr_range_steps=100, fits=4
)
DIGITS_8PX = StepCost(fixed=0.004, per_item=0.0002)  # simple_cnn on 8-px digits: about 17 ms a step of 64
RESNET_64PX = StepCost(fixed=0.02, per_item=0.006)  # resnet_small on 64-px photos: about 0.4 s a step of 64
RESNET_32PX_WIDE = StepCost(fixed=0.05, per_item=0.03)  # width 64 at 32 px (no downsampling stem): 5x that

KNOBS = ("overfit_steps", "fit_items", "fit_epochs", "lr_range_steps", "lr_range_batch")


def knobs(plan: CheckPlan) -> dict[str, int]:
    return {name: getattr(plan, name) for name in KNOBS}


def test_a_cheap_model_runs_the_checks_as_configured() -> None:
    plan = plan_checks(WORK, DIGITS_8PX, 100.0)
    assert plan.scale == 1.0
    assert knobs(plan) == {"overfit_steps": 200, "fit_items": 350, "fit_epochs": 15, "lr_range_steps": 100, "lr_range_batch": 64}
    assert 0 < plan.estimated_seconds <= 100.0 and "as configured" in plan.describe()


def test_a_costlier_model_or_image_size_gets_fewer_steps_items_and_epochs() -> None:
    cheap, photos, wide = (plan_checks(WORK, cost, 120.0) for cost in (DIGITS_8PX, RESNET_64PX, RESNET_32PX_WIDE))
    assert photos.scale < 1.0 and wide.scale < photos.scale
    for name in KNOBS:  # never more work for a costlier step
        assert getattr(wide, name) <= getattr(photos, name) <= getattr(cheap, name), name
    assert photos.fit_epochs < 15 and photos.overfit_steps < 200 and photos.lr_range_steps < 100
    assert photos.estimated_seconds <= 120.0  # scaled to fit, not past it
    assert "scaled to" in photos.describe() and "checks.budget_seconds (120 s)" in photos.describe()


def test_floors_hold_when_even_they_do_not_fit_the_budget() -> None:
    plan = plan_checks(WORK, StepCost(fixed=1.0, per_item=1.0), 10.0)
    assert plan.fit_epochs == MIN_FIT_EPOCHS and plan.fit_items == MIN_FIT_ITEMS
    assert plan.overfit_steps == MIN_OVERFIT_STEPS and plan.lr_range_steps == MIN_LR_RANGE_STEPS
    assert plan.estimated_seconds > 10.0  # says honestly that it will take longer


def test_a_larger_budget_buys_more_work() -> None:
    small, large = plan_checks(WORK, RESNET_64PX, 60.0), plan_checks(WORK, RESNET_64PX, 150.0)
    assert small.scale < large.scale
    assert all(getattr(small, name) <= getattr(large, name) for name in KNOBS)


def test_no_budget_runs_as_configured_without_measuring() -> None:
    plan = plan_checks(WORK, None, None)
    assert plan.scale == 1.0 and plan.cost is None and plan.estimates == {}
    assert "no checks.budget_seconds" in plan.describe()


class FakeClock:
    """perf_counter for measure_step_cost: each step advances it by fixed + per_item * size."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def step(self, size: int) -> None:
        self.now += 0.03 + 0.002 * size


def test_the_step_cost_is_fitted_through_two_batch_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(budget.time, "perf_counter", clock)
    cost, threads = measure_step_cost(clock.step, (16, 64))
    assert cost.fixed == pytest.approx(0.03) and cost.per_item == pytest.approx(0.002)
    assert cost.step(64) == pytest.approx(0.158) and threads >= 1


def test_the_plan_sets_what_the_training_checks_run() -> None:
    sound = setup()
    plan = replace(plan_checks(plan_work(sound), None, None), fit_items=120, fit_epochs=3, overfit_steps=30, lr_range_steps=12)
    planned = replace(sound, plan=plan)
    assert len(planned.fit_train) == 120 and set(planned.fit_train.y.tolist()) == set(range(10))  # a stratified prefix
    fit = short_fit(planned, "real")
    assert len(fit.result.history) == 3 and fit.seconds > 0
    assert "at most 30 steps" in check_overfit_one_batch(planned).meaning
    assert "12 steps" in plan.describe()
    lr = check_lr_range(planned)
    assert lr.figure is not None and len(lr.figure.axes[0].lines[0].get_xdata()) <= 12


def plan_work(checked: CheckSetup) -> Configured:
    return Configured(len(checked.train), len(checked.val), checked.engine.batch_size, checked.engine.epochs, 150, 16, 40, 3)


def test_plan_for_measures_the_model_and_scales_to_a_tight_budget() -> None:
    sound = setup()
    tight = plan_for(replace(sound, thresholds=ChecksConfig(overfit_steps=150, lr_range_steps=40, budget_seconds=0.5)))
    assert tight.cost is not None and tight.cost.per_item > 0 and tight.threads is not None
    assert tight.scale < 1.0 and tight.fit_epochs < sound.engine.epochs
    unbudgeted = plan_for(replace(sound, thresholds=ChecksConfig(budget_seconds=None)))
    assert unbudgeted.cost is None and unbudgeted.fit_epochs == sound.engine.epochs
