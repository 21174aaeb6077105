"""What a step's identity leaves out (StepSpec.ignores), and `trainwise run --from/--to`'s choice of steps.

A setting only training reads must not make the sample, prepare and check steps stale, and
train.epochs (which the check's short fits replace with checks.sample_epochs) must not rerun the
check; every setting a step does read still changes its key. That a step really never reads what
it ignores is checked against the running code in tests/integration/test_upstream.py.
"""

from __future__ import annotations

import pytest

from tests.conftest import REPO
from trainwise.config import load_config
from trainwise.errors import TrackingError
from trainwise.steps.pipeline import selected_steps
from trainwise.steps.runner import cache_keys

WINE = REPO / "projects" / "wine"


def keys_with(*overrides: str) -> dict[str, str]:
    return cache_keys(load_config(WINE, overrides))


def changed(*overrides: str) -> set[str]:
    base, now = keys_with(), keys_with(*overrides)
    return {step for step in base if base[step] != now[step]}


def test_a_setting_read_only_after_training_reruns_only_what_trains() -> None:
    # tune's trials and its refit do not run the learning curve: only train's refits read these
    assert changed("checks.learning_curve_fractions=[0.2,0.4]") == {"train"}
    assert changed("checks.learning_curve_budget=1") == {"train"}


def test_train_epochs_does_not_rerun_the_check() -> None:
    assert changed("train.epochs=7") == {"train", "tune", "promote", "submit"}
    assert changed("train.early_stopping_patience=2") == {"train", "tune", "promote", "submit"}


@pytest.mark.parametrize(
    ("override", "first"),
    [
        ("checks.max_property_drift=0.3", "sample"),  # sample's own drift row
        ("checks.max_test_drift=0.3", "prepare"),  # prepare's drift row: the sample stays
        ("checks.min_class_items=3", "prepare"),
        ("checks.overfit_steps=90", "check"),
        ("checks.sample_epochs=4", "check"),
        ("train.lr=0.01", "check"),  # the check's short fits train with it
        ("train.class_weight=balanced", "understand"),  # the problem card's advice on unbalanced classes, and check's fits
    ],
)
def test_a_setting_a_step_reads_reruns_it_and_what_follows(override: str, first: str) -> None:
    order = ["understand", "ingest", "explore", "sample", "prepare", "check", "train", "tune", "promote", "submit"]
    rerun = changed(override)
    assert first in rerun, rerun
    assert not {s for s in rerun if order.index(s) < order.index(first)}, rerun  # nothing upstream of it
    assert {"check", "train", "tune"} <= rerun


def test_run_to_takes_only_what_the_step_needs_and_from_starts_there() -> None:
    assert selected_steps(last="check") == ["ingest", "sample", "prepare", "check"]
    assert selected_steps(last="submit") == ["ingest", "sample", "prepare", "check", "tune", "promote", "submit"]
    assert selected_steps(first="train") == ["train", "tune", "promote", "submit"]
    assert selected_steps(first="prepare", last="check") == ["prepare", "check"]
    assert selected_steps() == ["understand", "ingest", "explore", "sample", "prepare", "check", "train", "tune", "promote", "submit"]
    with pytest.raises(TrackingError, match="no step lies between them"):
        selected_steps(first="train", last="check")


def test_run_step_refuses_an_option_the_step_does_not_take() -> None:
    from trainwise import api
    from trainwise.errors import ConfigError

    project = api.Project(load_config(WINE), tracker=None)  # type: ignore[arg-type]  # refused before any server is needed
    with pytest.raises(ConfigError, match=r"run_step\('submit'\): unknown option model_url; its options: model_uri"):
        api.run_step(project, "submit", model_url="models:/x/1")
