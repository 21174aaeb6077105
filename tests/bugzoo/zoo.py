"""The bug zoo: planted bugs of data, code and config, each with the check rows that must catch it.

Every case is a small project written into a folder (scikit-learn's digits as an image folder,
or the wine table as a CSV), optionally with a user model file; `run_case` runs it through
ingest, sample, prepare and check against a tracking server and returns the failed rows. Clean
controls list no rows: every row must pass on them. `python -m tests.bugzoo.report` prints the
README's table from the JSON lines `test_bugzoo.py` writes when TRAINWISE_ZOO_REPORT is set.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from click.testing import CliRunner
from mlflow import MlflowClient
from PIL import Image
from sklearn.datasets import load_wine

from tests.helpers import step_runs
from trainwise.cli import cli
from trainwise.data.digits import materialize_digits

DIGITS_YAML = """\
name: {name}
task: {{type: image_classification, target: label, metric: accuracy}}
data: {{source: {{kind: image_folder, root: data/train, test: data/test}}}}
image: {{size: 8, channels: 1}}
sample: {{size: 300}}
split: {{val: 0.15, test: 0.15, seed: 0}}
augment: {{flip: false, crop_padding: 1, rotation: 8}}
model: {{name: {model}, params: {params}}}
train: {{epochs: 5, batch_size: 64, optimizer: adamw, lr: {lr}, weight_decay: 0.0005}}
"""

WINE_YAML = """\
name: {name}
task: {{type: tabular_classification, target: target, metric: accuracy}}
data: {{source: {{kind: tabular, path: train.csv, test_path: test.csv}}}}
sample: {{fraction: 0.6}}
split: {{val: 0.2, test: 0.2, seed: 0}}
model: {{name: mlp}}
train: {{epochs: 5, batch_size: 32}}
"""

# A user's CNN as people write it; the code bugs are one-line edits of it (the `{...}` slots).
USER_CNN = '''\
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Linear(128, {outputs})
{init}
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features({input})
        h = {flatten}
        return {output}
'''
CLEAN_CNN = {"outputs": "num_classes", "init": "", "input": "x", "flatten": "h.flatten(1)", "output": "self.head(h)"}


@dataclass
class Case:
    name: str
    category: str  # data, code, config, or control
    catches: tuple[str, ...]  # check rows that must fail (none for a control)
    build: Callable[[Path], None]  # writes the project into the folder (data/, project.yaml, model files)
    what: str = ""
    known_miss: str = ""  # why the checks miss it today (the test expects the miss, so a fix shows up)
    refusal: str = ""  # for a "<step> refused" catch: words its error line must hold


@dataclass
class Outcome:
    failed: list[str]
    seconds: float
    meanings: dict[str, str] = field(default_factory=dict)


# -- writers ------------------------------------------------------------------------------------------


def digits_folder(folder: Path) -> Path:
    """scikit-learn's digits as train/<class>/*.png and an unlabelled test/ (as the default project)."""
    materialize_digits(folder / "data", test_fraction=0.2, seed=0)
    return folder / "data"


def digits_project(folder: Path, name: str, *, model: str = "simple_cnn", params: str = "{width: 16}", lr: float = 0.003) -> Path:
    if not (folder / "data").is_dir():
        digits_folder(folder)
    (folder / "project.yaml").write_text(DIGITS_YAML.format(name=name, model=model, params=params, lr=lr))
    return folder


def user_model(folder: Path, **edits: str) -> None:
    (folder / "net.py").write_text(USER_CNN.format(**(CLEAN_CNN | edits)))


def wine_project(folder: Path, name: str, frame: pd.DataFrame | None = None, test_change: Callable[[pd.DataFrame], pd.DataFrame] | None = None) -> Path:
    """The wine table as train.csv, and a fifth of it (at random, without the target) as the unlabelled test.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    wine = load_wine(as_frame=True).frame if frame is None else frame
    test = wine.sample(frac=0.2, random_state=0)
    wine.drop(test.index).to_csv(folder / "train.csv", index=False)
    test = test.drop(columns="target")
    (test_change(test) if test_change else test).to_csv(folder / "test.csv", index=False)
    (folder / "project.yaml").write_text(WINE_YAML.format(name=name))
    return folder


def move_labels(train: Path, share: float, seed: int = 0) -> None:
    """`share` of the files moved into another class's folder, at random (labels changed)."""
    rng = np.random.default_rng(seed)
    classes = sorted(p.name for p in train.iterdir())
    for path in sorted(train.glob("*/*.png")):
        if rng.random() < share:
            other = [c for c in classes if c != path.parent.name][rng.integers(len(classes) - 1)]
            path.rename(train / other / f"moved_{path.name}")


def flipped_table(share: float, seed: int = 0) -> pd.DataFrame:
    wine = load_wine(as_frame=True).frame
    rng = np.random.default_rng(seed)
    chosen = rng.random(len(wine)) < share
    wine.loc[chosen, "target"] = (wine.loc[chosen, "target"] + rng.integers(1, 3, chosen.sum())) % 3
    return wine


# -- the cases ------------------------------------------------------------------------------------------


def _case_flipped_images(folder: Path) -> None:
    digits_project(folder, folder.name)
    move_labels(folder / "data" / "train", 0.3)


def _case_mixed_folder(folder: Path) -> None:
    """Folder 0 holds 20 zeros and 60 images of ones; folder 1 keeps the other ones."""
    digits_project(folder, folder.name)
    train = folder / "data" / "train"
    for path in sorted((train / "0").glob("*.png"))[20:]:
        path.unlink()
    for path in sorted((train / "1").glob("*.png"))[:60]:
        path.rename(train / "0" / f"one_{path.name}")


def _case_tiny_class(folder: Path) -> None:
    digits_project(folder, folder.name)
    train = folder / "data" / "train"
    (train / "x").mkdir()
    for i, path in enumerate(sorted((train / "7").glob("*.png"))[:2]):
        image = np.asarray(Image.open(path))
        Image.fromarray(255 - image).save(train / "x" / f"x{i}.png")  # new content, not copies


def _case_copies_in_test(folder: Path) -> None:
    """30 images of the unlabelled test set also in the training folders (exact copies)."""
    digits_project(folder, folder.name)
    data = folder / "data"
    answers = pd.read_csv(data / "answers.csv")
    for row in answers.head(30).itertuples():
        shutil.copy(data / "test" / f"{row.id}.png", data / "train" / str(row.label) / f"leak_{row.id}.png")


def _case_near_copies_in_test(folder: Path) -> None:
    """30 images of the unlabelled test set in the training folders, 10% darker (near copies)."""
    digits_project(folder, folder.name)
    data = folder / "data"
    answers = pd.read_csv(data / "answers.csv")
    for row in answers.head(30).itertuples():
        pixels = np.asarray(Image.open(data / "test" / f"{row.id}.png"), dtype=np.float64)
        Image.fromarray((pixels * 0.9).round().astype(np.uint8)).save(data / "train" / str(row.label) / f"near_{row.id}.png")


def _rewrite(paths: list[Path], change: Callable[[Image.Image], Image.Image], suffix: str | None = None) -> None:
    for path in paths:
        changed = change(Image.open(path))
        changed.save(path.with_suffix(suffix) if suffix else path)
        if suffix:
            path.unlink()


def _case_inverted_test(folder: Path) -> None:
    """The unlabelled test images colour-inverted (white digits on black in training, black on white to predict)."""
    digits_project(folder, folder.name)
    _rewrite(sorted((folder / "data" / "test").glob("*.png")), lambda im: Image.fromarray(255 - np.asarray(im)))


def _case_resized_test(folder: Path) -> None:
    """The unlabelled test images at 32 px, the training images at 8 px (another camera or export)."""
    digits_project(folder, folder.name)
    _rewrite(sorted((folder / "data" / "test").glob("*.png")), lambda im: im.resize((32, 32), Image.BILINEAR))


def _case_dark_class(folder: Path) -> None:
    """Class 3's images at 40% brightness (photographed in another light)."""
    digits_project(folder, folder.name)
    _rewrite(sorted((folder / "data" / "train" / "3").glob("*.png")), lambda im: Image.fromarray((np.asarray(im) * 0.4).astype(np.uint8)))


def _case_png_class(folder: Path) -> None:
    """Every class but 3 re-saved as JPEG: class 3 holds the only PNGs."""
    digits_project(folder, folder.name)
    others = [p for p in sorted((folder / "data" / "train").glob("*/*.png")) if p.parent.name != "3"]
    _rewrite(others, lambda im: im, suffix=".jpg")


def _case_corrupt_files(folder: Path) -> None:
    digits_project(folder, folder.name)
    for path in sorted((folder / "data" / "train").glob("*/*.png"))[::20]:
        path.write_bytes(path.read_bytes()[:30])  # truncated


def _case_flipped_table(folder: Path) -> None:
    wine_project(folder, folder.name, flipped_table(0.3))


def _case_unit_change_test_table(folder: Path) -> None:
    """The test rows exported in other units: magnesium in g/L instead of mg/L, proline per 10 mL."""
    wine_project(folder, folder.name, test_change=lambda t: t.assign(magnesium=t.magnesium / 1000, proline=t.proline / 100))


def _case_tiny_class_table(folder: Path) -> None:
    wine = load_wine(as_frame=True).frame
    extra = wine.sample(2, random_state=0).assign(target=3)
    extra[wine.columns[:-1]] *= 1.5
    wine_project(folder, folder.name, pd.concat([wine, extra], ignore_index=True))


def _user(edits: dict[str, str] | None = None) -> Callable[[Path], None]:
    """A case of the user-CNN experiment: every code case shares its ingest, sample and prepare runs."""

    def build(folder: Path) -> None:
        digits_project(folder, "zoo-user-cnn", model="net.py:Net", params="{}", lr=0.01)  # the range test suggests about 0.01 for it
        user_model(folder, **(edits or {}))

    return build


def _config() -> Callable[[Path], None]:
    """A case of the config experiment: the clean digits project, changed by OVERRIDES on the command line."""

    def build(folder: Path) -> None:
        digits_project(folder, "zoo-digits-config")

    return build


CASES = [
    Case("digits", "control", (), lambda f: digits_project(f, f.name), "the default digits project as an image folder"),
    Case("wine", "control", (), lambda f: wine_project(f, f.name), "scikit-learn's wine table"),
    Case("user_cnn", "control", (), _user(), "a user's own CNN file"),
    Case("flipped_labels_images", "data", ("label_issues",), _case_flipped_images, "30% of the image files moved into another class's folder"),
    Case("flipped_labels_table", "data", ("label_issues",), _case_flipped_table, "30% of the wine labels changed"),
    Case("mixed_up_folder", "data", ("label_issues_by_class",), _case_mixed_folder, "folder '0' holds 20 zeros and 60 ones",
         known_miss="the 300-item sample holds about 13 items of folder '0', and a third of all ones are labelled 0: "
         "the cross-validated kNN learns the mix-up (worst pair 0.28, threshold 0.45)"),
    Case("tiny_class_images", "data", ("data_class_sizes",), _case_tiny_class, "a class folder with 2 images"),
    Case("tiny_class_table", "data", ("data_class_sizes",), _case_tiny_class_table, "a class with 2 rows"),
    Case("test_copies_in_train", "data", ("data_pool_images_in_provided_test",), _case_copies_in_test, "30 unlabelled test images copied into the training folders"),
    Case("test_near_copies_in_train", "data", ("data_near_copies_of_provided_test",), _case_near_copies_in_test, "30 unlabelled test images, 10% darker, in the training folders"),
    Case("inverted_test_set", "data", ("data_test_property_drift", "data_test_domain_classifier_auc"), _case_inverted_test,
         "the unlabelled test images colour-inverted"),
    Case("resized_test_set", "data", ("data_test_property_drift", "data_test_domain_classifier_auc"), _case_resized_test,
         "the unlabelled test images at 32 px, training at 8 px"),
    Case("unit_change_test_table", "data", ("data_test_property_drift", "data_test_domain_classifier_auc"), _case_unit_change_test_table,
         "the wine test rows with two columns in other units"),
    Case("dark_class", "data", ("data_label_from_properties",), _case_dark_class, "class 3's images at 40% brightness"),
    Case("png_only_class", "data", ("data_label_from_properties",), _case_png_class, "class 3 the only PNGs, the rest JPEG"),
    Case("corrupt_files", "data", ("ingest refused",), _case_corrupt_files, "every 20th file truncated", refusal="are unusable, over data.max_bad_fraction"),
    Case("softmaxed_output", "code", ("output_is_logits",), _user({"output": "self.head(h).softmax(dim=1)"}), "the model returns probabilities, not logits"),
    Case("detached_features", "code", ("parameters_update", "batch_independence"), _user({"flatten": "h.detach().flatten(1)"}), "the features are detached from the graph"),
    Case("frozen_features", "code", ("parameters_update",), _user({"init": "        for p in self.features.parameters():\n            p.requires_grad_(False)\n"}), "the convolutions are frozen"),
    Case("batch_mixing_reshape", "code", ("batch_independence",), _user({"flatten": "h.permute(1, 0, 2, 3).reshape(len(x), -1)"}), "a reshape that mixes the examples of a batch"),
    Case("batch_stats_at_inference", "code", ("batch_independence",), _user({"flatten": "nn.functional.batch_norm(h.flatten(1), None, None, training=True)"}), "batch statistics used in eval mode"),
    Case("ignores_input", "code", ("input_independent_baseline", "batch_independence"), _user({"input": "torch.zeros_like(x)"}), "the model never looks at its input"),
    Case("exploding_logits", "code", ("loss_at_init",), _user({"output": "self.head(h) * 1000"}), "logits scaled by 1000 at init"),
    Case("nan_producing_op", "code", ("finite_first_steps",), _user({"flatten": "torch.log(h - 0.05).flatten(1)"}), "a log of values that can be negative"),
    Case("too_many_outputs", "code", ("check refused",), _user({"outputs": "num_classes + 2"}), "12 outputs for 10 classes",
         refusal="the model must output one logit per class"),
    Case("lr_too_high", "config", ("configured_lr",), _config(), "learning rate 50"),
    Case("lr_too_low", "config", ("configured_lr",), _config(), "learning rate 1e-7"),
    Case("destructive_augmentation", "config", ("destructive_augmentation",), _config(), "rotation 180 on digits"),
    Case("extreme_weight_decay", "config", ("training_loss_decreases",), _config(), "weight decay 50 (AdamW)"),
    Case("extreme_dropout", "config", ("overfit_one_batch",), _config(), "dropout 0.97"),
]
OVERRIDES = {  # config cases are the clean project with one setting changed on the command line
    "lr_too_high": ["train.lr=50"],
    "lr_too_low": ["train.lr=1e-7"],
    "destructive_augmentation": ["augment.rotation=180"],
    "extreme_weight_decay": ["train.weight_decay=50"],
    "extreme_dropout": ["model.params.dropout=0.97"],
}
def run_case(case: Case, folder: Path, server: str) -> Outcome:
    """Write the case, run ingest, sample, prepare and check; the failed rows of check (and its seconds)."""
    case.build(folder)
    args = ["--project", str(folder), *(a for o in OVERRIDES.get(case.name, []) for a in ("--set", o))]
    started = time.monotonic()
    for step in ("ingest", "sample", "prepare", "check"):
        result = CliRunner().invoke(cli, [step, *args])
        assert "Traceback" not in result.output, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), result.output  # no crash
        if result.exit_code and not (step == "check" and "checks failed" in result.output):
            # a step that refuses bad input is a catch too, when it says why in an error line
            errors = [line for line in result.output.splitlines() if line.startswith("error:")]
            assert errors, result.output
            return Outcome([f"{step} refused"], time.monotonic() - started, {f"{step} refused": errors[-1]})
    seconds = time.monotonic() - started
    experiment = (folder / "project.yaml").read_text().split("\n", 1)[0].removeprefix("name: ")
    run = step_runs(server, experiment, "check")[0]
    path = MlflowClient(server).download_artifacts(run.info.run_id, "checks.json", str(folder))
    rows = json.loads(Path(path).read_text())["checks"]
    assert rows, result.output
    failed = [r["name"] for r in rows if not r["passed"]]
    return Outcome(failed, seconds, {r["name"]: r["meaning"] for r in rows})
