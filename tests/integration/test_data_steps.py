"""Steps 2A, 2C and 3 against the fixture server, on real data written into tmp_path."""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Run
from PIL import Image

from tests.helpers import invoke, step_runs
from trainwise.data.cache import cache_folder

REPO = Path(__file__).resolve().parents[2]
DIGITS = str(REPO / "projects" / "digits")




def artifact(server: str, run, path: str, tmp_path: Path) -> Path:
    return Path(MlflowClient(server).download_artifacts(run.info.run_id, path, str(tmp_path)))


def assert_png(path: Path, min_side: int = 200) -> None:
    image = Image.open(path)
    assert image.format == "PNG" and min(image.size) >= min_side
    assert len(np.unique(np.asarray(image.convert("L")))) > 2  # not a blank canvas


@pytest.mark.slow
def test_digits_ingest_sample_prepare(tracking_server: str, unique_name: str, tmp_path: Path) -> None:
    args = ("--project", DIGITS, "--set", f"name={unique_name}")
    started = time.monotonic()
    for step in ("ingest", "explore", "sample", "prepare"):
        invoke(step, *args)
    first_time = time.monotonic() - started

    ingest = latest_run(tracking_server, unique_name, "ingest")
    manifest = pd.read_parquet(artifact(tracking_server, ingest, "manifest.parquet", tmp_path))
    assert len(manifest) == 1797 and (manifest["status"] == "ok").all()
    assert {"id", "path", "label", "sha256", "dhash", "width", "height", "mode", "bytes", "brightness"} <= set(manifest.columns)
    assert manifest["sha256"].str.len().eq(64).all()
    (dataset,) = ingest.inputs.dataset_inputs
    assert dataset.dataset.digest == ingest.data.tags["trainwise.data_digest"] and len(dataset.dataset.digest) == 32
    assert ingest.data.metrics["quarantined"] == 0

    explore = latest_run(tracking_server, unique_name, "explore")
    expected = {"class_distribution", "sample_grid", "sizes", "channel_stats", "brightness_contrast", "mean_images", "duplicate_groups"}
    for name in expected:
        assert_png(artifact(tracking_server, explore, f"plots/{name}.png", tmp_path))
    card = artifact(tracking_server, explore, "data_card.html", tmp_path).read_text()
    assert card.count("<img src=\"data:image/png;base64,") == len(expected)
    for title in ("Class balance", "Samples", "Mean image per class", "Duplicates", "Quarantined files"):
        assert f"<h2>{title}</h2>" in card

    sample = latest_run(tracking_server, unique_name, "sample")
    assert sample.data.metrics["sample_size"] == 300
    rows = pd.read_parquet(artifact(tracking_server, sample, "sample.parquet", tmp_path))
    assert len(rows) == 300 and {"id", "path", "label", "sha256", "width", "height"} <= set(rows.columns)  # manifest rows
    assert sample.data.tags["trainwise.checks"].endswith("passed")
    checks = json.loads(artifact(tracking_server, sample, "representativeness.json", tmp_path).read_text())["checks"]
    assert {c["name"] for c in checks} >= {"sample_label_distribution", "sample_drift_brightness"}
    assert_png(artifact(tracking_server, sample, "checks/sample_label_distribution.png", tmp_path))

    prepare = latest_run(tracking_server, unique_name, "prepare")
    splits = pd.read_parquet(artifact(tracking_server, prepare, "splits.parquet", tmp_path))
    full = splits[splits["scope"] == "full"]
    assert set(full["split"]) == {"train", "val", "test", "submit"}
    assert (full["split"] == "submit").sum() == 360  # the unlabelled test folder
    assert set(splits.loc[splits["scope"] == "sample", "split"]) == {"train", "val"}
    # exact copies and duplicate groups per scope, exact and near copies of the test set, class sizes;
    # test-vs-training drift (properties, domain classifier) and shortcuts
    assert prepare.data.tags["trainwise.checks"] == "10/10 passed"
    found = json.loads(artifact(tracking_server, prepare, "property_checks.json", tmp_path).read_text())["checks"]
    assert [c["name"] for c in found] == ["test_property_drift", "test_domain_classifier_auc", "label_from_properties"]
    assert 0.4 < found[1]["value"] < 0.65  # a random split of digits: the domain classifier near chance
    for name in ("test_property_drift", "label_from_properties"):
        assert_png(artifact(tracking_server, prepare, f"checks/{name}.png", tmp_path))
    drift = pd.read_csv(artifact(tracking_server, prepare, "checks/test_drift.csv", tmp_path))
    assert {"brightness", "width", "sharpness", "format_PNG"} <= set(drift["property"])
    aucs = pd.read_csv(artifact(tracking_server, prepare, "checks/property_label_auc.csv", tmp_path))
    assert len(aucs) == 10 and "brightness" in aucs.columns
    norm = json.loads(artifact(tracking_server, prepare, "normalization.json", tmp_path).read_text())
    assert 0.2 < norm["full"]["mean"][0] < 0.4 and norm["full"]["items"] == (full["split"] == "train").sum()
    cache = json.loads(artifact(tracking_server, prepare, "cache.json", tmp_path).read_text())
    assert "folder" not in cache  # a key, found or rebuilt on each machine: no path of this one
    images = np.load(cache_folder(cache["key"]) / "images.npy", mmap_mode="r")
    assert images.shape == (1797, 8, 8, 1) and images.dtype == np.uint8
    assert_png(artifact(tracking_server, prepare, "augmentation_preview.png", tmp_path))

    # Unchanged inputs: all three reused, in a fraction of the time.
    started = time.monotonic()
    for step in ("ingest", "explore", "sample", "prepare"):
        assert "reused cached run" in invoke(step, *args)
    assert time.monotonic() - started < first_time / 2


def bad_folder(root: Path) -> None:
    """Two classes of good images plus one of every bad or unusual kind the issue names."""
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(20):
            Image.fromarray((rng.random((24, 24, 3)) * 255).astype(np.uint8)).save(root / label / f"{i}.png")
    a = root / "a"
    buffer = io.BytesIO()
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(buffer, "JPEG")
    (a / "truncated.jpg").write_bytes(buffer.getvalue()[:300])
    (a / "html.jpg").write_text("<html><body>not found</body></html>")
    (a / "zero.png").write_bytes(b"")
    Image.new("L", (5000, 5000)).save(a / "huge.png")
    Image.fromarray((np.arange(576).reshape(24, 24) * 100).astype(np.uint16)).save(a / "deep16.png")
    Image.fromarray(np.dstack([rng.integers(0, 255, (24, 24, 3)), np.full((24, 24), 100)]).astype(np.uint8)).save(a / "alpha.png")
    Image.new("RGB", (24, 24), (200, 0, 0)).convert("CMYK").save(a / "cmyk.jpg")
    exif_image = Image.new("RGB", (30, 20), (0, 200, 0))
    exif = exif_image.getexif()
    exif[0x0112] = 6
    exif_image.save(a / "rotated.jpg", exif=exif)


@pytest.mark.slow
def test_bad_files_are_quarantined_and_too_many_fail_the_step(tracking_server: str, unique_name: str, tmp_path: Path) -> None:
    bad_folder(tmp_path / "data")
    project = tmp_path / "proj"
    project.mkdir()
    (project / "project.yaml").write_text(
        f"name: {unique_name}\ntask: {{type: image_classification}}\n"
        f"data: {{source: {{kind: image_folder, root: {tmp_path / 'data'}}}, max_image_pixels: 10000000}}\nimage: {{size: 16, channels: 3}}\n"
    )
    output = invoke("ingest", "--project", str(project), code=1)
    assert "4 of 48 files (8.3%) are unusable, over data.max_bad_fraction = 1.0%" in output
    assert "quarantine.csv" in output
    failed = latest_run(tracking_server, unique_name, "ingest")
    assert failed.info.status == "FAILED"  # and yet everything it found was logged first
    quarantine = pd.read_csv(artifact(tracking_server, failed, "quarantine.csv", tmp_path / "q"))
    reasons = dict(zip(quarantine["path"], quarantine["reason"], strict=True))
    assert reasons == {"a/truncated.jpg": "truncated", "a/html.jpg": "not_an_image", "a/zero.png": "empty_file", "a/huge.png": "too_many_pixels"}

    invoke("ingest", "--project", str(project), "--set", "data.max_bad_fraction=0.1")
    ok = latest_run(tracking_server, unique_name, "ingest")
    assert ok.info.status == "FINISHED"
    manifest = pd.read_parquet(artifact(tracking_server, ok, "manifest.parquet", tmp_path / "m")).set_index("path")
    assert manifest.loc["a/deep16.png", "status"] == "ok" and manifest.loc["a/deep16.png", "mode"].startswith("I;16")
    assert manifest.loc["a/alpha.png", "mode"] == "RGBA" and manifest.loc["a/cmyk.jpg", "mode"] == "CMYK"
    assert (manifest.loc["a/rotated.jpg", "width"], manifest.loc["a/rotated.jpg", "height"]) == (20, 30)


@pytest.mark.slow
def test_duplicates_never_straddle_splits_unless_grouping_is_off(tracking_server: str, unique_name: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for label in ("a", "b"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(40):
            Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(tmp_path / "data" / label / f"{i}.png")
        for copy in range(8):  # eight exact copies of image 0 in each class
            shutil.copy(tmp_path / "data" / label / "0.png", tmp_path / "data" / label / f"copy{copy}.png")
    project = tmp_path / "proj"
    project.mkdir()
    (project / "project.yaml").write_text(
        f"name: {unique_name}\ntask: {{type: image_classification}}\ndata: {{source: {{kind: image_folder, root: {tmp_path / 'data'}}}}}\n"
        "image: {size: 16}\nsample: {size: 40}\nsplit: {val: 0.3, test: 0.3}\n"
    )
    for step in ("ingest", "sample", "prepare"):
        invoke(step, "--project", str(project))
    ingest = latest_run(tracking_server, unique_name, "ingest")
    assert ingest.data.metrics["exact_duplicate_groups"] == 2
    prepare = latest_run(tracking_server, unique_name, "prepare")
    assert prepare.data.metrics["leaked.duplicate_groups_across_splits_full"] == 0
    assert prepare.data.metrics["leaked.exact_copies_across_splits_full"] == 0

    leaks = [_leaks(project, seed, tracking_server, unique_name) for seed in range(5)]
    leaky = [found for found in leaks if found["leaked.duplicate_groups_across_splits_full"] > 0]
    assert leaky, "without grouping, 9 copies of an image in 3 splits should straddle them"
    assert all(found["leaked.exact_copies_across_splits_full"] > 0 for found in leaky)  # the copies are exact


def _leaks(project: Path, seed: int, server: str, name: str) -> dict[str, float]:
    for step in ("sample", "prepare"):  # the sample is drawn from the full training split: it follows the split
        invoke(step, "--project", str(project), "--set", f"split.group_duplicates=false split.seed={seed}")
    return latest_run(server, name, "prepare").data.metrics


@pytest.mark.slow
@pytest.mark.parametrize("name", ["wine", "diabetes"])
def test_tabular_projects(tracking_server: str, unique_name: str, tmp_path: Path, name: str) -> None:
    args = ("--project", str(REPO / "projects" / name), "--set", f"name={unique_name}")
    for step in ("ingest", "explore", "sample", "prepare"):
        invoke(step, *args)
    explore = latest_run(tracking_server, unique_name, "explore")
    for figure in ("target_distribution", "feature_distributions", "missingness", "correlation_heatmap", "feature_importance"):
        assert_png(artifact(tracking_server, explore, f"plots/{figure}.png", tmp_path))
    assert "<h2>Feature importance</h2>" in artifact(tracking_server, explore, "data_card.html", tmp_path).read_text()
    ingest = latest_run(tracking_server, unique_name, "ingest")
    table = pd.read_parquet(artifact(tracking_server, ingest, "table.parquet", tmp_path))
    assert len(table) == {"wine": 178, "diabetes": 442}[name]
    prep = json.loads(artifact(tracking_server, latest_run(tracking_server, unique_name, "prepare"), "preprocessing.json", tmp_path).read_text())
    assert prep["kind"] == "table" and len(prep["full"]["numeric"]) >= 10
    if name == "diabetes":
        assert "target_mean" in prep["full"]


@pytest.mark.slow
def test_table_with_problems(tracking_server: str, unique_name: str, tmp_path: Path) -> None:
    rows = ["id,const,mixed,x,label"] + [f"{i},1,{i if i % 7 else 'unknown'},{i % 5},{'yes' if i % 2 else 'no'}" for i in range(60)]
    rows += [f"{60 + i},1,3,3,yes" for i in range(6)]  # row 3 six more times under new ids: one group, one split
    (tmp_path / "rows.csv").write_text("\n".join(rows) + "\n")
    project = tmp_path / "proj"
    project.mkdir()
    (project / "project.yaml").write_text(
        f"name: {unique_name}\ntask: {{type: tabular_classification, target: label}}\n"
        f"data: {{source: {{kind: tabular, path: {tmp_path / 'rows.csv'}}}}}\nsample: {{size: 30}}\n"
    )
    for step in ("ingest", "sample", "prepare"):
        invoke(step, "--project", str(project))
    findings = pd.read_csv(artifact(tracking_server, latest_run(tracking_server, unique_name, "ingest"), "findings.csv", tmp_path))
    found = set(zip(findings["check"], findings["column"], strict=True))
    assert {("constant_column", "const"), ("mixed_types", "mixed"), ("identifier_like", "id")} <= found
    duplicates = findings[findings["check"] == "duplicate_rows"]["detail"].tolist()
    assert duplicates and duplicates[0].startswith("6 rows repeat an earlier row exactly"), findings
    prepare = latest_run(tracking_server, unique_name, "prepare")
    assert prepare.data.metrics["leaked.table_rows_across_splits"] == 0  # the seven copies share one split
    prep = json.loads(artifact(tracking_server, latest_run(tracking_server, unique_name, "prepare"), "preprocessing.json", tmp_path).read_text())
    assert prep["full"]["dropped"] == {"id": "the row id", "const": "constant"}

    output = invoke("ingest", "--project", str(project), "--set", "task.target=lable", code=1)
    assert "no target column 'lable'" in output and "rows.csv" in output


def latest_run(server: str, experiment: str, step: str) -> Run:
    return step_runs(server, experiment, step)[0]


@pytest.mark.slow
def test_the_users_own_validation_and_test_folders(tracking_server: str, unique_name: str, tmp_path: Path) -> None:
    """train/ val/ test/ of real digits: the folders are the splits, and leakage into them is still found."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = tmp_path / "data"
    where = {}
    for n, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = "val" if n % 6 == 1 else "test" if n % 6 == 2 else "train"
        target = root / folder / str(label) / f"d{n}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((pixels * 16).clip(0, 255).astype(np.uint8)).save(target)
        where[f"d{n}"] = folder
    # planted in train/: an exact copy of a validation image, and darker copies of a test and a validation image
    shutil.copy(root / "val" / str(digits.target[1]) / "d1.png", root / "train" / str(digits.target[1]) / "copy_of_val.png")
    for n, folder in ((2, "test"), (7, "val")):  # a darker copy: a near copy, not the same bytes
        image = np.asarray(Image.open(root / folder / str(digits.target[n]) / f"d{n}.png"), dtype=np.float64)
        Image.fromarray((image * 0.9).astype(np.uint8)).save(root / "train" / str(digits.target[n]) / f"near_copy_of_{folder}.png")
    project = tmp_path / "proj"
    project.mkdir()
    (project / "project.yaml").write_text(
        f"name: {unique_name}\ntask: {{type: image_classification}}\n"
        f"data: {{source: {{kind: image_folder, root: {root / 'train'}, val: {root / 'val'}, test: {root / 'test'}}}}}\n"
        "image: {size: 8, channels: 1}\nsample: {size: 200}\nsplit: {val: 0.3, test: 0.3}\n"
    )
    for step in ("ingest", "sample", "prepare"):
        invoke(step, "--project", str(project))
    prepare = latest_run(tracking_server, unique_name, "prepare")
    splits = pd.read_parquet(artifact(tracking_server, prepare, "splits.parquet", tmp_path))
    full = splits[splits["scope"] == "full"].assign(name=lambda f: f["id"].str.rsplit("/", n=1).str[-1])
    expected = full["name"].map(where).fillna("train")  # the planted copies live in train/
    assert (full["split"] == expected).all(), "the folders are the splits: split.val and split.test are not used"
    assert prepare.data.metrics["items.full.val"] == 300 and prepare.data.metrics["items.full.test"] == 300
    sample = splits[splits["scope"] == "sample"]
    assert set(sample["id"]) <= set(full.loc[full["split"] == "train", "id"])  # the sample is drawn from train/ only
    # leakage between the user's folders is reported, not hidden
    assert prepare.data.metrics["leaked.exact_copies_across_splits_full"] >= 1
    assert prepare.data.metrics["leaked.duplicate_groups_across_splits_full"] == 0  # the groups trainwise split itself
    assert prepare.data.metrics["leaked.near_copies_of_provided_val"] >= 1 / 300  # judged as a share, like the test folder's
    assert prepare.data.metrics["leaked.near_copies_of_provided_test"] > 0
    ingest = latest_run(tracking_server, unique_name, "ingest")
    assert ingest.data.metrics["val_items"] == 300 and ingest.data.metrics["test_items"] == 300
