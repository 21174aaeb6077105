"""Engine benchmarks, measured side by side in one run; prints ratios, asserts nothing.

1. Our Trainer with tracking on (per-epoch metrics plus every step's loss, logged in batches to a
   real local MLflow server) vs a plain hand-written PyTorch loop: same model, batch size, dtype
   and in-memory data, interleaved epochs, median of --epochs. Target: at least 0.97x the plain
   loop's images/s.
2. The simple CNN's training images/s as a fraction of this machine's measured matmul FLOP/s.
3. The check step's wall time on the digits sample (the issue's budget: 60 s on 2 CPU cores).

    .venv/bin/python bench/bench_engine.py [--epochs 7] [--size 32] [--skip-check-step]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def plain_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, *, batch: int, dtype: torch.dtype | None) -> float:
    """The loop anyone would write: shuffle, slice, forward, loss, backward, step."""
    model.train()
    started = time.perf_counter()
    order = torch.randperm(len(x))
    for start in range(0, len(x), batch):
        index = order[start : start + batch]
        with torch.autocast("cpu", dtype=dtype) if dtype else torch.autocast("cpu", enabled=False):
            loss = nn.functional.cross_entropy(model(x[index].float() / 255.0), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def matmul_flops(dtype: torch.dtype, n: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=7)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--items", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--skip-check-step", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TRAINWISE_HOME"] = str(Path(tmp) / "home")
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        from trainwise.callbacks import TrackingCallback
        from trainwise.engine import Callback, EngineConfig, TensorData, Trainer
        from trainwise.models import create_model
        from trainwise.server import LocalServer
        from trainwise.tracking import Tracker

        server = LocalServer(Path(tmp) / "server", port=_free_port())
        url = server.start().url
        assert url is not None
        try:
            dtype = torch.bfloat16 if args.precision == "bf16" else None
            shape = (3, args.size, args.size)
            generator = torch.Generator().manual_seed(0)
            x = torch.randint(0, 256, (args.items, *shape), dtype=torch.uint8, generator=generator)
            y = torch.randint(0, 10, (args.items,), generator=generator)

            torch.manual_seed(0)
            plain_model = create_model("simple_cnn", input_shape=shape, num_outputs=10, params={})
            plain_optimizer = torch.optim.AdamW(plain_model.parameters(), lr=1e-3)
            config = EngineConfig(
                task="classification", num_outputs=10, epochs=args.epochs, batch_size=args.batch, lr=1e-3,
                schedule="none", device="cpu", precision=args.precision, channels_last=False,
            )  # fmt: skip
            ours, plain = [], []

            class Interleave(Callback):
                """Last callback: our epoch ends here (tracking included); then one plain epoch runs."""

                def on_fit_start(self, trainer: Trainer) -> None:
                    self.resumed = time.perf_counter()

                def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
                    ours.append(time.perf_counter() - self.resumed)
                    plain.append(plain_epoch(plain_model, plain_optimizer, x, y, batch=args.batch, dtype=dtype))
                    self.resumed = time.perf_counter()

            with Tracker("bench", url).run("train") as run:
                torch.manual_seed(0)
                ours_model = create_model("simple_cnn", input_shape=shape, num_outputs=10, params={})
                Trainer(ours_model, config, callbacks=[TrackingCallback(run), Interleave()]).fit(TensorData(x, y))
            ours_ips, plain_ips = args.items / statistics.median(ours[1:]), args.items / statistics.median(plain[1:])

            with FlopCounterMode(display=False) as counter:
                loss = nn.functional.cross_entropy(plain_model(x[: args.batch].float() / 255.0), y[: args.batch])
                loss.backward()
            flops_per_image = counter.get_total_flops() / args.batch
            peak = matmul_flops(torch.bfloat16 if dtype else torch.float32)

            print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
            print(f"simple_cnn on {args.items} random {args.size}x{args.size}x3 images, batch {args.batch}, {args.precision}, median of {args.epochs - 1} epochs after a warm-up")
            print(f"plain PyTorch loop:                {plain_ips:9.0f} images/s")
            print(f"trainwise Trainer + tracking:      {ours_ips:9.0f} images/s  (per-epoch metrics + {len(x) // args.batch} step losses/epoch to MLflow)")
            print(f"ratio trainwise / plain: {ours_ips / plain_ips:.3f}x (target >= 0.97x: {'met' if ours_ips / plain_ips >= 0.97 else 'NOT met'})")
            achieved = plain_ips * flops_per_image
            print(f"training FLOPs per image (forward+backward): {flops_per_image / 1e6:.1f} MFLOP")
            print(f"matmul throughput ({'bf16' if dtype else 'fp32'} 1024^2): {peak / 1e9:.1f} GFLOP/s; CNN training achieves {achieved / 1e9:.1f} GFLOP/s = {achieved / peak:.1%} of it")

            if not args.skip_check_step:
                print(f"check step on the digits sample: {_check_step_seconds(url):.1f} s wall time (budget: 60 s on 2 cores)")
        finally:
            server.stop()


def _check_step_seconds(url: str) -> float:
    from click.testing import CliRunner
    from mlflow import MlflowClient

    from trainwise.cli import cli

    os.environ["MLFLOW_TRACKING_URI"] = url
    project = str(Path(__file__).resolve().parents[1] / "projects" / "digits")
    for step in ("ingest", "sample", "prepare", "check"):
        result = CliRunner().invoke(cli, ["-q", step, "--project", project, "--set", "name=bench-digits"])
        assert result.exit_code == 0, result.output
    client = MlflowClient(url)
    experiment = client.get_experiment_by_name("bench-digits")
    (run,) = client.search_runs([experiment.experiment_id], "tags.`trainwise.step` = 'check'")
    return (run.info.end_time - run.info.start_time) / 1000


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    main()
