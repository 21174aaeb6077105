"""Train-vs-test drift and shortcut rows (issue 10 §2) on clean real data, and on the same data planted.

Each project is written as an image folder with an unlabelled test folder and run through ingest,
sample and prepare against a fresh local tracking server; the bench prints the prepare run's three
property rows: the largest significant KS statistic of an image property between the training split
and the test set (`test_property_drift`, fails above checks.max_test_drift), the domain
classifier's cross-validated AUC (`test_domain_classifier_auc`, fails above checks.max_domain_auc)
and the largest one-vs-rest AUC of one property for one class (`label_from_properties`, fails
above checks.max_property_label_auc). Clean sets must pass all three; planted ones must fail theirs.

Sets (only those whose data is installed are run):
  digits       projects/digits: scikit-learn's 1,797 8x8 digits, a random fifth as the test folder
  fashion      Fashion-MNIST (Debian: dataset-fashion-mnist): 3,000 photos from its training file,
               1,000 from its own test file (t10k) as the test folder: a real, independent test set
  clipart      Open Clip Art (Debian: openclipart-png): 1,500 drawings, 60-1,100 px, their top
               folder as the label, a random fifth as the test folder
  fashion_inverted   the fashion set with its test photos colour-inverted (planted drift)
  clipart_half       the clip art set with its test drawings at half size (planted drift)
  fashion_dark_bag   the fashion set with every bag at 40% brightness (planted shortcut)

    .venv/bin/python bench/bench_drift.py [--sets digits,fashion,...] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")
CLIPART = Path("/usr/share/openclipart/png")
FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
ROWS = ("test_property_drift", "test_domain_classifier_auc", "label_from_properties")
PLANTED = {"fashion_inverted": ROWS[:2], "clipart_half": ROWS[:2], "fashion_dark_bag": ROWS[2:]}  # the rows each must fail
SETS = ["digits", "fashion", "clipart", *PLANTED]

PROJECT_YAML = """\
name: {name}
task: {{type: image_classification, target: label, metric: accuracy}}
data: {{source: {{kind: image_folder, root: data/train, test: data/test}}}}
image: {{size: {size}, channels: {channels}}}
sample: {{size: 300}}
model: {{name: simple_cnn}}
"""


def write_fashion(folder: Path, *, train: int = 3000, test: int = 1000, planted: str = "") -> Path:
    from trainwise.data.records import read_idx

    rng = np.random.default_rng(0)
    images, labels = read_idx(FASHION / "train-images-idx3-ubyte.gz"), read_idx(FASHION / "train-labels-idx1-ubyte.gz")
    tests = read_idx(FASHION / "t10k-images-idx3-ubyte.gz")
    for k, i in enumerate(rng.choice(len(images), train, replace=False)):
        pixels = images[i]
        if planted == "dark_bag" and FASHION_CLASSES[labels[i]] == "bag":
            pixels = (pixels * 0.4).astype(np.uint8)
        _save(pixels, folder / "data" / "train" / FASHION_CLASSES[labels[i]] / f"{k:05d}.png")
    for k, i in enumerate(rng.choice(len(tests), test, replace=False)):
        _save(255 - tests[i] if planted == "inverted" else tests[i], folder / "data" / "test" / f"t{k:05d}.png")
    (folder / "project.yaml").write_text(PROJECT_YAML.format(name=folder.name, size=28, channels=1))
    return folder


def write_clipart(folder: Path, *, count: int = 1500, planted: str = "") -> Path:
    files = sorted(CLIPART.rglob("*.png"))
    random.Random(0).shuffle(files)
    for k, path in enumerate(files[:count]):
        if k % 5 == 0:  # a random fifth (the files are shuffled) is the unlabelled test folder
            target = folder / "data" / "test" / f"t{k:05d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            if planted == "half":
                with Image.open(path) as image:
                    image.resize((max(1, image.width // 2), max(1, image.height // 2))).save(target)
                continue
        else:
            target = folder / "data" / "train" / path.relative_to(CLIPART).parts[0] / f"{k:05d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    (folder / "project.yaml").write_text(PROJECT_YAML.format(name=folder.name, size=32, channels=3))
    return folder


def _save(pixels: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def property_rows(project: Path, server: str) -> tuple[dict[str, tuple[float, bool]], float]:
    """ingest, sample, prepare; the prepare run's (value, passed) per property row, and their seconds."""
    from click.testing import CliRunner
    from mlflow import MlflowClient

    from trainwise.cli import cli
    from trainwise.config import load_config

    started = time.monotonic()
    for step in ("ingest", "sample", "prepare"):
        result = CliRunner().invoke(cli, [step, "--project", str(project)])
        if result.exit_code:
            raise SystemExit(f"{project.name}: {step} failed:\n{result.output[-3000:]}")
    seconds = time.monotonic() - started
    client = MlflowClient(server)
    experiment = client.get_experiment_by_name(load_config(project).name)
    (run,) = client.search_runs([experiment.experiment_id], "tags.`trainwise.step` = 'prepare'", max_results=1)
    metrics = run.data.metrics
    return {row: (metrics[f"check_value.{row}"], metrics[f"check.{row}"] == 1.0) for row in ROWS if f"check_value.{row}" in metrics}, seconds


def build(name: str, tmp: Path) -> Path | None:
    if name == "digits":
        return REPO / "projects" / "digits"
    if name.startswith("fashion"):
        planted = name.removeprefix("fashion").strip("_")
        return write_fashion(tmp / name.replace("_", "-"), planted=planted) if FASHION.is_dir() else None
    return write_clipart(tmp / name.replace("_", "-"), planted=name.removeprefix("clipart").strip("_")) if CLIPART.is_dir() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--keep", type=Path, help="write the projects and the tracking server here (default: a temporary folder)")
    args = parser.parse_args()

    from trainwise.server import LocalServer

    tmp = args.keep or Path(tempfile.mkdtemp(prefix="bench-drift-"))
    os.environ["TRAINWISE_HOME"] = str(tmp / "home")
    server = LocalServer(tmp / "mlflow", port=_free_port())
    status = server.start(timeout=120)
    os.environ["MLFLOW_TRACKING_URI"] = str(status.url)
    print(f"{os.cpu_count()} cores; {tmp}")
    print(f"{'set':18s} " + " ".join(f"{row:>28s}" for row in ROWS) + "  seconds (ingest+sample+prepare)")
    right = judged = 0
    try:
        for name in args.sets.split(","):
            project = build(name, tmp)
            if project is None:
                print(f"{name:18s} skipped: its data is not installed")
                continue
            rows, seconds = property_rows(project, str(status.url))
            cells = [f"{rows[r][0]:.3f} {'pass' if rows[r][1] else 'FAIL'}" if r in rows else "not judged" for r in ROWS]
            print(f"{name:18s} " + " ".join(f"{c:>28s}" for c in cells) + f"  {seconds:.0f}")
            judged += 1
            if name in PLANTED:
                right += all(r in rows and not rows[r][1] for r in PLANTED[name])
            else:
                right += all(passed for _, passed in rows.values())
    finally:
        server.stop()
    print(f"property rows: {right} of {judged} sets judged right (clean sets pass, planted sets fail their rows)")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":  # the data steps start worker processes that import this module
    main()
