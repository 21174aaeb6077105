"""Step identity and held-out data: what each step's key covers, and which items the sample and tests see.

Each test here failed on the code before issue 8: the model file and the skipped gate were not in
any key, the sample was drawn from the whole pool (so its training split held full-data test
items), and a provided test table shared the ids r0, r1, ... with the training table.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from PIL import Image
from sklearn.datasets import load_wine

from tests.helpers import invoke, step_runs
from trainwise.config import load_config
from trainwise.data.cache import cache_folder
from trainwise.steps.runner import cache_keys

REPO = Path(__file__).resolve().parents[2]
DIGITS = str(REPO / "projects" / "digits")

MODEL_FILE = """
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, num_features: int, num_outputs: int) -> None:
        super().__init__()
        self.layer = nn.Linear(num_features, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x){suffix}
"""


def _artifact(server: str, run_id: str, path: str, dst: Path) -> Path:
    return Path(MlflowClient(server).download_artifacts(run_id, path, str(dst)))


def _wine_project(folder: Path, name: str, *, test_csv: bool = False, id_column: bool = False, labelled: bool = False, model: str = "mlp") -> Path:
    """scikit-learn's wine table as CSV files: 150 training rows and, if asked, a 28-row test file."""
    folder.mkdir(parents=True, exist_ok=True)
    wine = load_wine(as_frame=True).frame.sample(frac=1.0, random_state=0).reset_index(drop=True)
    wine["target"] = wine["target"].map({0: "a", 1: "b", 2: "c"})
    if id_column:
        wine.insert(0, "wine_id", [f"w{1000 + i}" for i in range(len(wine))])
    train, test = (wine.iloc[:150], wine.iloc[150:]) if test_csv else (wine, None)
    train.to_csv(folder / "train.csv", index=False)
    source = "{kind: tabular, path: train.csv"
    if test is not None:
        (test if labelled else test.drop(columns=["target"])).to_csv(folder / "test.csv", index=False)
        source += ", test_path: test.csv"
    if id_column:
        source += ", id_column: wine_id"
    (folder / "project.yaml").write_text(
        f"name: {name}\ntask: {{type: tabular_classification, target: target, metric: accuracy}}\n"
        f"data: {{source: {source}}}}}\nsample: {{fraction: 0.5}}\nsplit: {{val: 0.2, test: 0.2}}\n"
        f"model: {{name: {model!r}}}\ntrain: {{epochs: 3, batch_size: 32}}\nsubmission: {{id_column: id, target_column: target}}\n"
    )
    return folder


def test_user_model_file_content_is_in_the_keys(tmp_path: Path, session_home: Path) -> None:
    project = _wine_project(tmp_path / "wine", "t-user-model", model="tiny.py:Tiny")
    model = project / "tiny.py"
    model.write_text(MODEL_FILE.format(suffix=""))
    before = cache_keys(load_config(project))
    model.write_text(MODEL_FILE.format(suffix=" * 2.0"))  # same path, other code
    after = cache_keys(load_config(project))
    for step in ("check", "train", "tune", "promote", "submit"):
        assert before[step] != after[step], step
    for step in ("understand", "ingest", "sample", "prepare"):
        assert before[step] == after[step], step
    # The same file content in another folder is the same input.
    other = _wine_project(tmp_path / "elsewhere" / "wine", "t-user-model", model="tiny.py:Tiny")
    (other / "tiny.py").write_text(MODEL_FILE.format(suffix=" * 2.0"))
    assert cache_keys(load_config(other))["check"] == after["check"]


def test_skipping_the_checks_is_part_of_the_gated_keys(session_home: Path) -> None:
    cfg = load_config(DIGITS)
    gated, skipped = cache_keys(cfg), cache_keys(cfg, skip_checks=True)
    assert gated["train"] != skipped["train"] and gated["tune"] != skipped["tune"]
    assert gated["check"] == skipped["check"] and gated["prepare"] == skipped["prepare"]


@pytest.mark.slow
def test_skip_checks_train_does_not_satisfy_a_gated_train(tracking_server: str, unique_name: str) -> None:
    args = ("--project", DIGITS, "--set", f"name={unique_name}", "--dry-run")
    for step in ("ingest", "sample", "prepare"):
        invoke(step, *args)
    # A machine without prepare's decoded cache rebuilds it from the runs' artifacts by key.
    (prepare,) = step_runs(tracking_server, unique_name, "prepare")
    folder = cache_folder(prepare.data.tags["trainwise.cache_digest"])
    shutil.rmtree(folder)
    invoke("train", *args, "--skip-checks")
    assert (folder / "images.npy").is_file()
    (skipped,) = step_runs(tracking_server, unique_name, "train")
    assert skipped.data.tags["trainwise.skip_checks"] == "true"
    # A gated train now needs a passed check: reusing the ungated run would bypass the gate.
    output = invoke("train", *args, code=1)
    assert "check" in output
    assert len(step_runs(tracking_server, unique_name, "train")) == 1


@pytest.mark.slow
@pytest.mark.parametrize("project", ["digits", "wine"])
def test_sample_is_nested_in_the_full_training_split(tracking_server: str, unique_name: str, tmp_path: Path, project: str) -> None:
    args = ("--project", str(REPO / "projects" / project), "--set", f"name={unique_name}")
    for step in ("ingest", "sample", "prepare"):
        invoke(step, *args)
    (prepare,) = step_runs(tracking_server, unique_name, "prepare")
    splits = pd.read_parquet(_artifact(tracking_server, prepare.info.run_id, "splits.parquet", tmp_path))
    full, sample = splits[splits["scope"] == "full"], splits[splits["scope"] == "sample"]
    full_train = set(full.loc[full["split"] == "train", "id"])
    held_out = set(full.loc[full["split"].isin(["val", "test"]), "id"])
    assert len(sample) > 0 and set(sample["id"]) <= full_train
    assert not set(sample["id"]) & held_out
    assert set(sample["split"]) == {"train", "val"}


@pytest.mark.slow
@pytest.mark.parametrize(("id_column", "labelled"), [(False, False), (False, True), (True, False), (True, True)])
def test_tabular_test_file_rows_keep_their_own_ids(
    tracking_server: str, unique_name: str, tmp_path: Path, id_column: bool, labelled: bool
) -> None:
    project = _wine_project(tmp_path / "wine", unique_name, test_csv=True, id_column=id_column, labelled=labelled)
    args = ("--project", str(project))
    for step in ("ingest", "sample", "prepare"):
        invoke(step, *args)
    (prepare,) = step_runs(tracking_server, unique_name, "prepare")
    assert prepare.data.metrics["leaked.table_rows_across_splits"] == 0
    splits = pd.read_parquet(_artifact(tracking_server, prepare.info.run_id, "splits.parquet", tmp_path))
    full = splits[splits["scope"] == "full"]
    assert full["id"].is_unique and len(full) == 178
    test_split = "test" if labelled else "submit"
    assert (full["split"] == test_split).sum() == 28
    test_ids = full.loc[full["split"] == test_split, "id"]
    assert test_ids.str.startswith("w" if id_column else "t").all()
    invoke("train", *args, "--skip-checks")  # died with KeyError: '0' in data/loading.py
    (train,) = step_runs(tracking_server, unique_name, "train")
    # Scored on the test split's own rows (the test file's when labelled), not on training rows sharing their ids.
    tested = full.loc[full["split"] == "test", "label"].astype(str).value_counts()
    if labelled:
        assert tested.to_dict() == pd.read_csv(project / "test.csv")["target"].value_counts().to_dict()
    per_class = pd.read_csv(_artifact(tracking_server, train.info.run_id, "evaluation/test_per_class.csv", tmp_path))
    assert per_class.set_index("class")["support"].to_dict() == {k: tested.get(k, 0) for k in per_class["class"]}


def test_ids_shared_by_training_and_test_tables_are_an_error(tracking_server: str, unique_name: str, tmp_path: Path) -> None:
    project = _wine_project(tmp_path / "wine", unique_name, test_csv=True, id_column=True)
    test = pd.read_csv(project / "test.csv")
    test.loc[0, "wine_id"] = "w1000"  # also a training row's id
    test.to_csv(project / "test.csv", index=False)
    invoke("ingest", "--project", str(project))
    output = invoke("sample", "--project", str(project), code=1)
    assert "w1000" in output and "unique across the training and test tables" in output


def _photo_project(folder: Path, name: str) -> Path:
    """A small image folder project (3 classes x 12 uncompressed PNGs) with its project.yaml beside it."""
    rng = np.random.default_rng(0)
    for label in ("a", "b", "c"):
        (folder / "photos" / label).mkdir(parents=True, exist_ok=True)
        for i in range(12):
            pixels = rng.integers(0, 256, (16, 16), dtype=np.uint8)
            # compress_level=0: the file size depends on the image size only, not on its pixels
            Image.fromarray(pixels).save(folder / "photos" / label / f"{i}.png", compress_level=0)
    (folder / "project.yaml").write_text(
        f"name: {name}\ntask: {{type: image_classification}}\ndata: {{source: {{kind: image_folder, root: photos}}}}\n"
        "image: {size: 16, channels: 1}\nsample: {size: 12}\nsplit: {val: 0.2, test: 0.2}\n"
    )
    return folder


def test_same_data_in_two_folders_and_two_homes_has_the_same_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = []
    for where in ("one", "two"):
        monkeypatch.setenv("TRAINWISE_HOME", str(tmp_path / where / "home"))
        project = _photo_project(tmp_path / where / "project", "t-two-homes")
        keys.append((cache_keys(load_config(project)), cache_keys(load_config(DIGITS))))
    assert keys[0] == keys[1]


@pytest.mark.slow
def test_data_identity_is_content_not_mtime(tracking_server: str, unique_name: str, tmp_path: Path) -> None:
    project = _photo_project(tmp_path / "project", unique_name)
    image = project / "photos" / "a" / "0.png"
    first = cache_keys(load_config(project))
    invoke("ingest", "--project", str(project))

    os.utime(image, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))  # touch: same content
    assert cache_keys(load_config(project)) == first
    invoke("ingest", "--project", str(project))
    assert len(step_runs(tracking_server, unique_name, "ingest")) == 1  # reused

    stat = image.stat()
    size = stat.st_size
    Image.fromarray(np.full((16, 16), 7, dtype=np.uint8)).save(image, compress_level=0)  # other pixels
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... same size and mtime
    assert image.stat().st_size == size and image.stat().st_mtime_ns == stat.st_mtime_ns
    second = cache_keys(load_config(project))
    assert all(second[step] != first[step] for step in second)  # ingest and everything downstream
    invoke("ingest", "--project", str(project))
    newest, oldest = step_runs(tracking_server, unique_name, "ingest")
    assert newest.data.tags["trainwise.data_digest"] != oldest.data.tags["trainwise.data_digest"]
    assert newest.data.tags["trainwise.key.source"] != oldest.data.tags["trainwise.key.source"]
