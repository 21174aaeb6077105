"""Pretrained torchvision weights (model.weights): the file read, the new head, the inputs' normalisation, the keys.

No test downloads: each writes a real resnet18 state dict where torch looks for the published file
(tests/pretrained_fixtures.py) or names one with model.weights_file, and the code reads it through
torch.hub.load_state_dict_from_url as it reads a downloaded one.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tests.pretrained_fixtures import RESNET18_URL_FILE, photo_project, write_resnet18_weights
from trainwise.config import load_config
from trainwise.data.loading import PreparedData, image_transforms
from trainwise.engine import TensorData
from trainwise.errors import ConfigError
from trainwise.fitting import build_model, model_spec, pretrained_weights, with_model_preprocessing
from trainwise.metrics import CLASSIFICATION
from trainwise.models import create_model, freeze_backbone, save_weights
from trainwise.models.pretrained import resolve_weights
from trainwise.serving import Predictor
from trainwise.steps.runner import cache_keys, fetch_weights

URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
RESNET18 = "model: {name: 'torchvision:resnet18', weights: IMAGENET1K_V1, download_weights: false}\n"


@pytest.fixture
def checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """torch.hub's checkpoint folder under a temporary TORCH_HOME (and a temporary TRAINWISE_HOME)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("TRAINWISE_HOME", str(tmp_path / "home"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_default_resolves_to_the_file_torchvision_names_in_torchs_cache(checkpoints: Path) -> None:
    weights = resolve_weights("torchvision:resnet18", "DEFAULT")
    assert weights.name == "ResNet18_Weights.IMAGENET1K_V1" and weights.url == URL
    assert weights.file == checkpoints / RESNET18_URL_FILE and weights.from_cache
    assert list(weights.mean) == IMAGENET_MEAN and list(weights.std) == IMAGENET_STD and weights.crop_size == (224, 224)
    assert resolve_weights("torchvision:resnet18", "ResNet18_Weights.IMAGENET1K_V1").name == weights.name


@pytest.mark.parametrize("size", [64, 16], ids=["pretrained-stem", "small-input-stem"])
def test_the_backbone_is_the_files_and_the_head_is_new(checkpoints: Path, size: int) -> None:
    state = write_resnet18_weights(checkpoints / RESNET18_URL_FILE, seed=3)
    weights = resolve_weights("torchvision:resnet18", "IMAGENET1K_V1")
    model = create_model("torchvision:resnet18", input_shape=(3, size, size), num_outputs=5, pretrained=weights)
    assert torch.equal(model.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    assert torch.equal(model.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    assert model.fc.out_features == 5 and model.fc.in_features == 512
    assert model.fc.weight.abs().max() < 0.1  # a fresh small head, not the file's 1000-class one
    if size == 64:  # the pretrained 7x7 stride-2 stem, whole
        assert torch.equal(model.conv1.weight, state["conv1.weight"])
    else:  # the small-input 3x3 stem starts from the centre of the pretrained kernels
        assert model.conv1.kernel_size == (3, 3)
        assert torch.equal(model.conv1.weight, state["conv1.weight"][:, :, 2:5, 2:5])
    # The layout of the untrained build: serving rebuilds it without the weights' file and loads strictly.
    untrained = create_model("torchvision:resnet18", input_shape=(3, size, size), num_outputs=5)
    untrained.load_state_dict(model.state_dict(), strict=True)
    # freeze_backbone_epochs trains only the new head first
    freeze_backbone(model, True)
    assert {name for name, p in model.named_parameters() if p.requires_grad} == {"fc.weight", "fc.bias"}


def test_grey_images_sum_the_first_convs_weights_over_the_channels(checkpoints: Path) -> None:
    state = write_resnet18_weights(checkpoints / RESNET18_URL_FILE)
    weights = resolve_weights("torchvision:resnet18", "IMAGENET1K_V1")
    model = create_model("torchvision:resnet18", input_shape=(1, 64, 64), num_outputs=2, pretrained=weights)
    assert torch.allclose(model.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))


def test_a_file_named_in_weights_file_is_read_instead_of_the_cache(tmp_path: Path, checkpoints: Path) -> None:
    state = write_resnet18_weights(tmp_path / "mine" / "any-name.pth", seed=5)
    weights = resolve_weights("torchvision:resnet18", "DEFAULT", tmp_path / "mine" / "any-name.pth")
    model = create_model("torchvision:resnet18", input_shape=(3, 64, 64), num_outputs=3, pretrained=weights)
    assert torch.equal(model.layer2[0].conv1.weight, state["layer2.0.conv1.weight"])
    assert not checkpoints.exists()  # nothing was looked up or written in the cache


def test_offline_without_the_file_the_error_names_the_path_and_the_url(tmp_path: Path, checkpoints: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(photo_project(tmp_path / "project", "offline", model=RESNET18))
    with pytest.raises(ConfigError) as refused:
        pretrained_weights(cfg)
    message = str(refused.value)
    assert str(checkpoints / RESNET18_URL_FILE) in message and URL in message and "model.download_weights is false" in message

    def no_network(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)  # the download is tried, and fails as offline
    cfg = load_config(tmp_path / "project", ["model.download_weights=true"])
    with pytest.raises(ConfigError, match="could not be downloaded") as failed:
        pretrained_weights(cfg)
    assert str(checkpoints / RESNET18_URL_FILE) in str(failed.value) and URL in str(failed.value)

    cfg = load_config(tmp_path / "project", [f"model.weights_file={tmp_path / 'absent.pth'}"])
    with pytest.raises(ConfigError, match=r"absent\.pth does not exist; it should hold ResNet18_Weights\.IMAGENET1K_V1"):
        pretrained_weights(cfg)


def test_the_runner_fetches_the_weights_only_for_steps_whose_keys_hold_them(tmp_path: Path, checkpoints: Path) -> None:
    cfg = load_config(photo_project(tmp_path / "project", "fetching", model=RESNET18))
    fetch_weights(cfg, ["ingest", "explore", "sample", "prepare"])  # none builds the model: no file needed
    for step in ("check", "submit"):  # submit reads promote, tune and check by their keys
        with pytest.raises(ConfigError, match="not in torch's hub cache"):
            fetch_weights(cfg, [step])


def test_a_different_weights_file_gives_other_keys_and_the_same_file_elsewhere_the_same(tmp_path: Path, checkpoints: Path) -> None:
    project = photo_project(tmp_path / "project", "keys", model=RESNET18)
    cached = checkpoints / RESNET18_URL_FILE
    write_resnet18_weights(cached, seed=0)
    first = cache_keys(load_config(project))
    write_resnet18_weights(cached, seed=1)  # the same name and place, other tensors
    second = cache_keys(load_config(project))
    assert {step for step in first if first[step] != second[step]} == {"check", "train", "tune", "promote", "submit"}
    copy = tmp_path / "elsewhere" / "renamed.pth"
    copy.parent.mkdir()
    shutil.copy(cached, copy)
    assert cache_keys(load_config(project, [f"model.weights_file={copy}"])) == second  # content, not place


def test_the_served_model_normalises_as_training_did(tmp_path: Path, checkpoints: Path) -> None:
    write_resnet18_weights(checkpoints / RESNET18_URL_FILE)
    project = photo_project(tmp_path / "project", "served", model=RESNET18)
    cfg = load_config(project)
    x = torch.zeros(3, 3, 16, 16, dtype=torch.uint8)
    own = {"kind": "image", "size": [16, 16], "channels": 3, "mean": [0.5, 0.3, 0.2], "std": [0.25, 0.2, 0.15]}
    data = PreparedData(CLASSIFICATION, ["blue", "green", "red"], (3, 16, 16), {"train": TensorData(x, torch.tensor([0, 1, 2]))}, {"train": ["a", "b", "c"]}, own)
    data = with_model_preprocessing(cfg, data)
    assert data.preprocessing["mean"] == IMAGENET_MEAN and data.preprocessing["std"] == IMAGENET_STD
    assert data.preprocessing["data_mean"] == own["mean"] and data.preprocessing["stats_from"] == "ResNet18_Weights.IMAGENET1K_V1"
    spec = model_spec(cfg, data)
    assert spec["preprocessing"] == data.preprocessing and spec["pretrained"]["weights"] == "ResNet18_Weights.IMAGENET1K_V1"
    assert any("image.size is 16x16, the weights were trained at 224x224" in note for note in spec["pretrained"]["notes"])

    network = build_model(cfg, data).eval()
    _, evaluate = image_transforms(cfg, data)
    image = project / "photos" / "red" / "0.png"
    pixels = torch.from_numpy(np.array(Image.open(image).convert("RGB"))).permute(2, 0, 1)[None]
    with torch.no_grad():
        trained = torch.softmax(network(evaluate(pixels)).double(), dim=1).numpy()
    # Rebuilt as serving rebuilds it, from the spec and the saved tensors, with the weights' file gone.
    save_weights(network, tmp_path / "model.safetensors")
    (checkpoints / RESNET18_URL_FILE).unlink()
    served = Predictor.from_files(spec, tmp_path / "model.safetensors").predict(pd.DataFrame({"image": [str(image)]}))
    np.testing.assert_allclose(served[[f"prob_{c}" for c in data.classes]].to_numpy(), trained, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("model: {name: simple_cnn, weights: DEFAULT}", "is not a torchvision model"),
        ("model: {name: 'torchvision:resnet18', weights_file: r.pth}", "set model.weights too"),
    ],
)
def test_weights_settings_that_cannot_work_are_config_errors(tmp_path: Path, model: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(photo_project(tmp_path / "project", "bad", model=model + "\n"))


@pytest.mark.parametrize(
    ("ref", "weights", "message"),
    [
        ("torchvision:resnet18", "IMAGENET1K_V2", "not a weight set of 'torchvision:resnet18'; choose one of IMAGENET1K_V1, DEFAULT"),
        ("torchvision:inception_v3", "DEFAULT", "not supported"),
    ],
)
def test_unknown_or_unsupported_weights_are_named(checkpoints: Path, ref: str, weights: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_weights(ref, weights)
