"""A pretrained torchvision backbone through the CLI (issue 11 §1): the offline error, then train from the cache file.

The weights are a real resnet18 state dict written where torch keeps downloaded ones
($TORCH_HOME/hub/checkpoints/resnet18-f37072fd.pth, tests/pretrained_fixtures.py); nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import invoke, step_runs
from tests.pretrained_fixtures import RESNET18_URL_FILE, photo_project, write_resnet18_weights

URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
MODEL = "model: {name: 'torchvision:resnet18', weights: IMAGENET1K_V1, download_weights: false, freeze_backbone_epochs: 1}\ntrain: {lr: 0.001}\n"

pytestmark = pytest.mark.slow


def test_resnet18_from_the_cache_file_trains_and_serves(
    tracking_server: str, unique_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / RESNET18_URL_FILE
    project = photo_project(tmp_path / "project", unique_name, size=8, model=MODEL)  # 8 px: resnet18 affordable on 2 cores
    args = ("--project", str(project), "--dry-run", "--with-upstream")

    # Offline with an empty cache: our error naming the file and the URL, before any step runs.
    output = invoke("train", *args, code=2)
    assert str(cached) in output and URL in output and "Traceback" not in output, output
    assert not step_runs(tracking_server, unique_name, "ingest")

    # The check step is left out: resnet18's 11M parameters make its dozen short fits take ~100 s on
    # 2 shared cores whatever the image size (Adam and backward scale with the parameters); its
    # pretrained rows are covered in tests/unit (test_pipeline_checks.py, test_pretrained.py).
    state = write_resnet18_weights(cached)
    invoke("train", *args, "--skip-checks")
    (train,) = step_runs(tracking_server, unique_name, "train")
    assert train.info.status == "FINISHED" and train.data.params["model.weights"] == "IMAGENET1K_V1"
    assert "trainwise.key.user_code" in train.data.tags
    note = train.data.tags["mlflow.note.content"]
    assert "Pretrained start" in note and "image.size is 8x8, the weights were trained at 224x224" in note, note
    uri = train.data.tags["trainwise.model_uri"]
    folder = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "model")))
    (spec_file,) = folder.rglob("spec.json")
    spec = json.loads(spec_file.read_text())
    assert spec["preprocessing"]["mean"] == [0.485, 0.456, 0.406] and spec["preprocessing"]["std"] == [0.229, 0.224, 0.225]
    assert spec["pretrained"]["sha256"] == hashlib.sha256(cached.read_bytes()).hexdigest()
    (weights_file,) = folder.rglob("*.safetensors")
    trained = load_file(weights_file)
    assert trained["fc.weight"].shape == (3, 512)  # the project's 3 classes
    # the backbone started from the file: one epoch with it frozen (freeze_backbone_epochs: 1) left it as it was
    assert torch.equal(trained["layer3.0.conv2.weight"], state["layer3.0.conv2.weight"])
    cached.unlink()  # the served model needs only its own tensors
    images = sorted((project / "photos" / "red").glob("*.png"))[:3]
    predicted = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"image": [str(p) for p in images]}))
    assert len(predicted) == 3 and set(predicted["label"]) <= {"red", "green", "blue"}
