"""Progress of a fit: a log line at least every `every` seconds (bars only on a terminal), on real digits."""

from __future__ import annotations

import logging

import pytest

from tests.unit.test_engine import cnn, config, digits
from trainwise.engine import Trainer
from trainwise.progress import ProgressCallback


def test_a_long_fit_logs_its_progress_and_shows_no_bar_off_a_terminal(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    train, val = digits()
    with caplog.at_level(logging.INFO, logger="trainwise.progress"):
        Trainer(cnn(), config(epochs=2), callbacks=[ProgressCallback("train", every=0.0)]).fit(train, val)
    lines = [r.getMessage() for r in caplog.records if r.name == "trainwise.progress"]
    steps = -(-len(train) // 64)
    assert f"train: epoch 1/2, batch 1/{steps}, loss" in lines[0]
    assert any(line.startswith("train: epoch 2/2, batch") for line in lines)
    assert any(line.startswith("train: epoch 2/2, train_loss") and "accuracy" in line for line in lines)  # the epoch's summary
    err = capsys.readouterr().err
    assert "epoch/s" not in err and "batch/s" not in err and "it/s" not in err  # pytest's output is no terminal: no bars


def test_a_short_fit_stays_quiet(caplog: pytest.LogCaptureFixture) -> None:
    train, val = digits()
    with caplog.at_level(logging.INFO, logger="trainwise.progress"):
        Trainer(cnn(), config(epochs=1), callbacks=[ProgressCallback("train")]).fit(train, val)  # well under 30 s
    assert not [r for r in caplog.records if r.name == "trainwise.progress"]
