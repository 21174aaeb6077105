"""The check step's cost (issue 10 §4): every pipeline and label check timed, on digits and on photos.

Two projects, each run through ingest, sample, prepare and check against a fresh local tracking
server, in one process (as `trainwise run` would):

1. digits: the default project (projects/digits: 1,797 8x8 scans, a 300-item sample, simple_cnn).
   Target: the check step within 60 s.
2. photos: 500-item sample of 64-px colour photos with `resnet_small` (the model's defaults). The
   photos are real: Fashion-MNIST images (Debian's copy in /usr/share/datasets/fashion-mnist),
   upscaled to 64-100 px with a random colour tint and JPEG noise, 150 per class in
   data/train/<class>/*.jpg and 200 in an unlabelled data/test/. Target: the check step within 180 s
   on 2 cores.

It prints each check's seconds (the run's `check_seconds.<name>` metrics), the step's own wall
time, and ends with one line comparing both against their budgets. The figures are measured here,
on this machine and its load (shown with them), never assumed.

    .venv/bin/python bench/bench_check.py [--only digits|photos] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
BUDGETS = {"digits": 60.0, "photos": 180.0}

PHOTOS_YAML = """\
name: {name}
task: {{type: image_classification, target: label, metric: accuracy}}
data: {{source: {{kind: image_folder, root: data/train, test: data/test}}}}
image: {{size: 64, channels: 3}}
sample: {{size: 500}}
augment: {{flip: true, crop_padding: 4}}
model: {{name: resnet_small}}
train: {{epochs: 10, batch_size: 64}}
"""


def write_photos(folder: Path, *, per_class: int = 150, test: int = 200, seed: int = 0) -> Path:
    """Fashion-MNIST as a folder of colour JPEGs of 64-100 px (a project.yaml beside data/).

    Labelled images from its training file, the unlabelled test folder from its test file (drawing
    both from one file put near copies of 5 test images among the labelled ones).
    """
    from trainwise.data.records import read_idx

    rng = np.random.default_rng(seed)
    images, labels = read_idx(FASHION / "train-images-idx3-ubyte.gz"), read_idx(FASHION / "train-labels-idx1-ubyte.gz")
    chosen = np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)])
    tests = read_idx(FASHION / "t10k-images-idx3-ubyte.gz")
    unlabelled = tests[rng.choice(len(tests), test, replace=False)]
    pictures = [(images[i], folder / "data" / "train" / FASHION_CLASSES[labels[i]] / f"{i:05d}.jpg") for i in chosen]
    pictures += [(image, folder / "data" / "test" / f"t{k:04d}.jpg") for k, image in enumerate(unlabelled)]
    for pixels, path in pictures:
        side = int(rng.integers(64, 101))
        grey = np.asarray(Image.fromarray(pixels).resize((side, side), Image.Resampling.BICUBIC), dtype=np.float32) / 255
        # a colour cast per image, as lighting differs between photos, and a little sensor noise; a
        # stronger random cast (tint 0.4-1.0) made the thumbnail kNN of label_issues read 0.37 on clean labels
        tint, background = rng.uniform(0.75, 1.0, 3), rng.uniform(0.0, 0.15, 3)
        rgb = np.clip(background + grey[..., None] * (tint - background) + rng.normal(0, 0.02, (side, side, 3)), 0, 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rgb * 255).round().astype(np.uint8)).save(path, quality=int(rng.integers(80, 96)))
    (folder / "project.yaml").write_text(PHOTOS_YAML.format(name=folder.name))
    return folder


def run_check(project: Path, server: str) -> tuple[float, dict[str, float], str, str]:
    """ingest, sample, prepare, then check timed; the check run's seconds per row, its summary tag and plan."""
    from click.testing import CliRunner
    from mlflow import MlflowClient

    from trainwise.cli import cli
    from trainwise.config import load_config

    seconds = 0.0
    for step in ("ingest", "sample", "prepare", "check"):
        started = time.monotonic()
        result = CliRunner().invoke(cli, [step, "--project", str(project)])
        seconds = time.monotonic() - started
        if result.exit_code and not (step == "check" and "checks failed" in result.output):
            raise SystemExit(f"{project.name}: {step} failed:\n{result.output[-3000:]}")
    client = MlflowClient(server)
    experiment = client.get_experiment_by_name(load_config(project).name)
    (run,) = client.search_runs([experiment.experiment_id], "tags.`trainwise.step` = 'check'", max_results=1)
    costs = {k.removeprefix("check_seconds."): v for k, v in run.data.metrics.items() if k.startswith("check_seconds.")}
    plan = ", ".join(f"{k.removeprefix('check_plan.')}={v}" for k, v in sorted(run.data.params.items()) if k.startswith("check_plan."))
    failed = [k.removeprefix("check.") for k, v in run.data.metrics.items() if k.startswith("check.") and v == 0.0]
    verdict = run.data.tags.get("trainwise.checks", "?") + (f"; failed: {', '.join(sorted(failed))}" if failed else "")
    return seconds, costs, verdict, plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(BUDGETS))
    parser.add_argument("--keep", type=Path, help="write the projects and the tracking server here (default: a temporary folder)")
    args = parser.parse_args()

    from trainwise.server import LocalServer

    tmp = args.keep or Path(tempfile.mkdtemp(prefix="bench-check-"))
    os.environ["TRAINWISE_HOME"] = str(tmp / "home")  # digits are written here, once
    server = LocalServer(tmp / "mlflow", port=_free_port())
    status = server.start(timeout=120)
    os.environ["MLFLOW_TRACKING_URI"] = str(status.url)
    print(f"{os.cpu_count()} cores, load {_load()} at the start; {tmp}")
    measured: dict[str, float] = {}
    try:
        for case in [args.only] if args.only else list(BUDGETS):
            project = REPO / "projects" / "digits" if case == "digits" else write_photos(tmp / "photos64")
            seconds, costs, verdict, plan = run_check(project, str(status.url))
            measured[case] = seconds
            print(f"\n{case}: check step {seconds:.1f} s as a command ({verdict}), load {_load()}")
            print(f"  plan: {plan}")
            for name, value in sorted(costs.items(), key=lambda kv: -kv[1]):
                print(f"  {name:42s} {value:7.2f} s")
    finally:
        server.stop()
    parts = []
    if "digits" in measured:
        parts.append(f"digits {measured['digits']:.1f} s (budget {BUDGETS['digits']:.0f} s)")
    if "photos" in measured:
        parts.append(f"500 64-px photos resnet_small {measured['photos']:.0f} s (budget {BUDGETS['photos']:.0f} s)")
    print(f"check step: {'; '.join(parts)}")


def _load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":  # the data steps start worker processes that import this module
    main()
