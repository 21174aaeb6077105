"""Exact resume through the CLI: `trainwise train` killed by a real SIGTERM, then `--resume`, with early stopping on.

The resumed run must stop at the same epoch as an uninterrupted one, with bit-identical weights
(CPU), so the patience counter and the best epoch's weights must survive the kill.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from tests.helpers import invoke, step_runs
from trainwise.checkpoints import CheckpointError, load_checkpoint
from trainwise.steps.runner import checkpoint_dir

REPO = Path(__file__).resolve().parents[2]
DIGITS = str(REPO / "projects" / "digits")
EPOCHS = 30
TIMINGS = {"epoch_seconds", "images_per_second"}  # wall-clock: never equal between two runs

pytestmark = pytest.mark.slow


def epoch_of(path: Path) -> int:
    """The epoch of the checkpoint at `path`, 0 while there is none (it is replaced atomically: never half-written)."""
    try:
        return int(load_checkpoint(path)["epoch"])
    except CheckpointError:
        return 0


def without_timings(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in history]


def test_a_sigterm_at_a_random_epoch_then_resume_ends_like_an_uninterrupted_run(
    tracking_server: str, unique_name: str, session_home: Path
) -> None:
    # A high peak LR makes validation accuracy bounce, so patience 3 runs out well before 30 epochs.
    settings = f"name={unique_name} train.epochs={EPOCHS} train.lr=0.3 train.early_stopping_patience=3 checks.learning_curve_fractions=[]"
    args = ["--project", DIGITS, "--set", settings, "--dry-run"]
    for step in ("ingest", "sample", "prepare", "check", "train"):
        invoke(step, *args)  # the uninterrupted reference, and every step it needs
    (reference,) = step_runs(tracking_server, unique_name, "train")
    expected = load_checkpoint(checkpoint_dir(reference.info.run_id) / "last.pt")
    epochs, best_epoch = int(expected["epoch"]), int(expected["best"]["epoch"])
    assert epochs < EPOCHS, "early stopping never triggered: this test could not tell a resumed patience from a fresh one"

    # Killed after the best epoch, while the patience counter is counting, before it runs out.
    at = random.Random(5).choice(range(best_epoch + 1, epochs))
    before = set((session_home / "checkpoints").iterdir())  # the reference's folder is there already
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_server, "TRAINWISE_HOME": str(session_home)}
    process = subprocess.Popen([sys.executable, "-m", "trainwise", "train", *args, "--force"], env=env, cwd=REPO)
    deadline = time.monotonic() + 180
    folder = None
    while process.poll() is None and time.monotonic() < deadline:
        new = set((session_home / "checkpoints").iterdir()) - before
        folder = next(iter(new), None)
        if folder is not None and epoch_of(folder / "last.pt") >= at:
            break
        time.sleep(0.2)
    assert process.poll() is None, f"the run ended before its checkpoint of epoch {at} was seen"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143
    (killed,) = (r for r in step_runs(tracking_server, unique_name, "train") if r.info.run_id != reference.info.run_id)
    assert killed.info.status == "KILLED" and folder == checkpoint_dir(killed.info.run_id)
    killed_at = epoch_of(folder / "last.pt")
    assert at <= killed_at < epochs  # interrupted before early stopping triggered

    invoke("train", *args, "--resume")
    resumed = MlflowClient(tracking_server).get_run(killed.info.run_id)
    assert resumed.info.status == "FINISHED" and resumed.data.tags["trainwise.resumed"] == "true"
    got = load_checkpoint(folder / "last.pt")
    assert got["epoch"] == epochs, f"uninterrupted {epochs} epochs, resumed from epoch {killed_at} ran {got['epoch']}"
    assert without_timings(got["history"]) == without_timings(expected["history"])
    assert got["best"]["epoch"] == best_epoch and got["best"]["value"] == expected["best"]["value"]
    weights = {"last": (got["model"], expected["model"]), "best": (got["best"]["state"], expected["best"]["state"])}
    for which, (final, reference_weights) in weights.items():
        assert final.keys() == reference_weights.keys()
        for name, tensor in reference_weights.items():
            assert torch.equal(final[name], tensor), f"{which} {name}"
    assert resumed.data.metrics["test_accuracy"] == reference.data.metrics["test_accuracy"]
