"""The Optuna study's identity and its baseline trial (issue 8, item 2), on a real SQLite storage.

Before: the study name hashed only the space, dataset, epochs and prepare run, so a study made for
`accuracy` (MAXIMIZE) was reopened for `log_loss`, and the project's own configuration was never a trial.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from trainwise.config import load_config
from trainwise.errors import ConfigError
from trainwise.steps.tune import DEFINITION_ATTR, enqueue_baseline, open_study, suggest

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "projects" / "digits"


def test_a_study_is_its_whole_objective(tmp_path: Path, session_home: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    cfg = load_config(DIGITS)
    first = open_study(cfg, storage, data_identity="prepare-key-1")
    assert first.user_attrs[DEFINITION_ATTR]["study.metric"] == "accuracy"
    assert open_study(cfg, storage, data_identity="prepare-key-1").study_name == first.study_name  # resumes

    other = open_study(load_config(DIGITS, ["task.metric=log_loss", "model.name=resnet_small"]), storage, data_identity="prepare-key-1")
    assert other.study_name != first.study_name and other.direction.name == "MINIMIZE"
    for change in (["train.epochs=3"], ["augment.flip=true"], ["tune.sampler=random"], ["split.seed=1"]):
        assert open_study(load_config(DIGITS, change), storage, data_identity="prepare-key-1").study_name != first.study_name, change
    assert open_study(cfg, storage, data_identity="prepare-key-2").study_name != first.study_name  # other data
    # A tuned setting is the trials' to choose: its project value is not part of the objective.
    assert open_study(load_config(DIGITS, ["train.lr=0.01"]), storage, data_identity="prepare-key-1").study_name == first.study_name

    # A study whose stored definition differs from what its name promises is refused, naming the keys.
    stored = dict(first.user_attrs[DEFINITION_ATTR], **{"study.metric": "log_loss"})
    first.set_user_attr(DEFINITION_ATTR, stored)
    with pytest.raises(ConfigError, match=r"study\.metric"):
        open_study(cfg, storage, data_identity="prepare-key-1")


def test_trial_zero_is_the_projects_own_configuration(tmp_path: Path, session_home: Path) -> None:
    cfg = load_config(DIGITS)
    study = open_study(cfg, f"sqlite:///{tmp_path / 'optuna.db'}", data_identity="k")
    enqueue_baseline(study, cfg)
    enqueue_baseline(study, cfg)  # a second worker: still one baseline
    assert len(study.trials) == 1
    trial = study.ask()
    baseline = trial.user_attrs["trainwise.baseline"]
    params = suggest(trial, {k: v for k, v in cfg.tune.space.items() if k in baseline})
    assert params == {
        "train.lr": 0.003, "train.weight_decay": 0.0005, "train.batch_size": 64, "train.optimizer": "adamw",
        "train.label_smoothing": 0.05, "model.name": "simple_cnn", "model.params.width": 32, "augment.rotation": 8.0,
    }  # fmt: skip
