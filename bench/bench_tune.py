"""Tuning and pipeline benchmarks, measured side by side in one run; prints ratios, asserts nothing.

1. Pruning: epochs run and best validation accuracy with no pruner, Median and Hyperband, on the
   same study setup (digits, simple_cnn, trainwise's digits search space), over 3 seeds.
2. The default pipeline (`trainwise run --project projects/digits`) end to end against a fresh
   local server, then again with nothing changed, and the submission's accuracy on the digits
   test set. Target: at least 98%, within 3 minutes on 2 cores.

    .venv/bin/python bench/bench_tune.py [--trials 12] [--epochs 10] [--seeds 3] [--skip-pipeline]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import torch
from sklearn.datasets import load_digits

REPO = Path(__file__).resolve().parents[1]


def pruning(trials: int, epochs: int, seeds: int) -> None:
    from trainwise.config import load_config, with_overrides
    from trainwise.data.transforms import normalize
    from trainwise.engine import EngineConfig, TensorData, Trainer
    from trainwise.models import create_model
    from trainwise.steps.tune import PRUNERS, PruningCallback, suggest

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = load_config(REPO / "projects" / "digits")
    digits = load_digits()
    x = torch.from_numpy((digits.images * 255 / 16).astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(digits.target).long()
    train, val = TensorData(x[:1400], y[:1400]), TensorData(x[1400:], y[1400:])
    transform = lambda batch: normalize(batch.float() / 255.0, [0.3], [0.37])  # noqa: E731

    def objective(trial: optuna.Trial, counter: list[int]) -> float:
        trial_cfg = with_overrides(cfg, suggest(trial, cfg.tune.space))
        torch.manual_seed(0)
        model = create_model(trial_cfg.model.name, input_shape=(1, 8, 8), num_outputs=10, params=trial_cfg.model.params)
        t = trial_cfg.train
        config = EngineConfig(
            task="classification", num_outputs=10, epochs=epochs, batch_size=t.batch_size, optimizer=t.optimizer, lr=t.lr,
            weight_decay=t.weight_decay, label_smoothing=t.label_smoothing, device="cpu", precision="fp32",
        )  # fmt: skip

        class Count(PruningCallback):
            def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
                counter[0] += 1
                super().on_epoch_end(trainer, epoch, metrics)

        return Trainer(model, config, train_transform=transform, eval_transform=transform, callbacks=[Count(trial, "accuracy")]).fit(train, val).best_value

    results: dict[str, list[tuple[int, float]]] = {}
    for name in ("none", "median", "hyperband"):
        for seed in range(seeds):
            pruner = PRUNERS[name]() if name in ("none",) else (PRUNERS[name](n_warmup_steps=2, n_startup_trials=2) if name == "median" else PRUNERS[name](min_resource=1))
            study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner)
            counter = [0]
            study.optimize(lambda trial: objective(trial, counter), n_trials=trials)  # noqa: B023 - used within the iteration
            results.setdefault(name, []).append((counter[0], study.best_value))
    base_epochs = statistics.mean(e for e, _ in results["none"])
    print(f"pruning: {trials} trials x up to {epochs} epochs, {seeds} seeds (TPE seeded per seed)")
    for name, rows in results.items():
        epochs_run = statistics.mean(e for e, _ in rows)
        best = statistics.mean(b for _, b in rows)
        print(f"  {name:10s} epochs run {epochs_run:7.1f} ({epochs_run / base_epochs:5.1%} of no pruning)  best val accuracy {best:.4f}  per seed {[round(b, 4) for _, b in rows]}")


def pipeline() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "TRAINWISE_HOME": str(Path(tmp) / "home"), "TRAINWISE_PORT": str(_free_port())}
        env.pop("MLFLOW_TRACKING_URI", None)
        trainwise = [sys.executable, "-m", "trainwise", "-q"]
        subprocess.run([*trainwise, "server", "start"], env=env, check=True, capture_output=True)
        try:
            times = []
            for _ in range(2):
                started = time.monotonic()
                subprocess.run([*trainwise, "run", "--project", str(REPO / "projects" / "digits")], env=env, check=True, capture_output=True)
                times.append(time.monotonic() - started)
            from mlflow import MlflowClient

            client = MlflowClient(f"http://127.0.0.1:{env['TRAINWISE_PORT']}")
            experiment = client.get_experiment_by_name("digits")
            (submit,) = client.search_runs([experiment.experiment_id], "tags.`trainwise.step` = 'submit'")
            score = submit.data.metrics["submission_accuracy"]
        finally:
            subprocess.run([*trainwise, "server", "stop"], env=env, check=False, capture_output=True)
    print(f"default pipeline (projects/digits, {os.cpu_count()} cores): {times[0]:.0f} s end to end; {times[1]:.1f} s again, all cached ({times[0] / times[1]:.0f}x)")
    print(f"submission accuracy on the digits test set: {score:.4f} (target >= 0.98: {'met' if score >= 0.98 else 'NOT met'}; within 180 s: {'met' if times[0] <= 180 else 'NOT met'})")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--skip-pipeline", action="store_true")
    parser.add_argument("--skip-pruning", action="store_true")
    args = parser.parse_args()
    if not args.skip_pruning:
        pruning(args.trials, args.epochs, args.seeds)
    if not args.skip_pipeline:
        pipeline()


if __name__ == "__main__":
    main()
