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


def wait_for_checkpoint(process: subprocess.Popen, folders: Path, before: set[Path], epoch: int) -> Path:
    """The new run's checkpoint folder, once it holds epoch `epoch`; read only when it changes, so the run keeps the CPU."""
    deadline = time.monotonic() + 180
    seen = None
    while process.poll() is None and time.monotonic() < deadline:
        for folder in set(folders.iterdir()) - before:
            stamp = (folder / "last.pt").stat().st_mtime_ns if (folder / "last.pt").exists() else None
            if stamp != seen and (seen := stamp) is not None and epoch_of(folder / "last.pt") >= epoch:
                return folder
        time.sleep(0.05)  # an epoch takes a second or more: SIGTERM lands well inside the next one
    raise AssertionError(f"the run ended or stalled before its checkpoint of epoch {epoch} was seen")


def without_timings(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in history]


def test_a_sigterm_at_a_random_epoch_then_resume_ends_like_an_uninterrupted_run(
    tracking_server: str, unique_name: str, session_home: Path
) -> None:
    # 10x the default LR, held (the step schedule first drops it at epoch 10): validation accuracy
    # reaches ~0.97 in 4-6 epochs and then bounces, so patience 2 runs out well before 30 epochs
    # (here: best at 6, stopped after 8). Dropout and random crops stay on: their draws must resume
    # too. fp32, so the trajectory does not depend on whether the CPU has native bf16.
    settings = (
        f"name={unique_name} train.epochs={EPOCHS} train.lr=0.03 train.schedule=step train.early_stopping_patience=2 "
        "train.precision=fp32 model.params.dropout=0.2 augment.rotation=0 checks.learning_curve_fractions=[]"
    )
    args = ["--project", DIGITS, "--set", settings, "--dry-run"]
    for step in ("ingest", "sample", "prepare"):
        invoke(step, *args)
    train = ["train", *args, "--skip-checks"]  # the checks and their gate are tested elsewhere
    invoke(*train)  # the uninterrupted reference
    (reference,) = step_runs(tracking_server, unique_name, "train")
    expected = load_checkpoint(checkpoint_dir(reference.info.run_id) / "last.pt")
    epochs, best_epoch = int(expected["epoch"]), int(expected["best"]["epoch"])
    assert epochs < EPOCHS, "early stopping never triggered: this test could not tell a resumed patience from a fresh one"

    # Killed after the best epoch, while the patience counter is counting, before it runs out
    # (with patience 2 that is one epoch; a larger patience costs more epochs than this test is worth).
    at = random.Random(5).choice(range(best_epoch + 1, epochs))
    before = set((session_home / "checkpoints").iterdir())  # the reference's folder is there already
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_server, "TRAINWISE_HOME": str(session_home)}
    process = subprocess.Popen([sys.executable, "-m", "trainwise", *train, "--force"], env=env, cwd=REPO)
    folder = wait_for_checkpoint(process, session_home / "checkpoints", before, at)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143
    (killed,) = (r for r in step_runs(tracking_server, unique_name, "train") if r.info.run_id != reference.info.run_id)
    assert killed.info.status == "KILLED" and folder == checkpoint_dir(killed.info.run_id)
    killed_at = epoch_of(folder / "last.pt")
    assert at <= killed_at < epochs  # interrupted before early stopping triggered
    checkpoints = MlflowClient(tracking_server).list_artifacts(killed.info.run_id, "checkpoints")
    assert [a.path for a in checkpoints] == ["checkpoints/last.pt"]  # the checkpoint is in the run, not only on this disk

    invoke(*train, "--resume")
    resumed = MlflowClient(tracking_server).get_run(killed.info.run_id)
    assert resumed.info.status == "FINISHED" and resumed.data.tags["trainwise.resumed"] == "true"
    assert len(step_runs(tracking_server, unique_name, "train")) == 2  # the same run resumed, not a third
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
