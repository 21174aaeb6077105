"""The model registry: every architecture builds and trains a step; user modules and their errors; heads and weights.

Real torch on the CPU, no mocks. Like timm's tests/test_models.py, one test runs over every
registered model, so a newly registered architecture is tested without anyone writing a test.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sklearn.datasets import load_digits
from torch import nn

from trainwise.errors import ConfigError
from trainwise.models import (
    count_parameters,
    create_model,
    freeze_backbone,
    init_output_bias,
    list_models,
    load_initial_weights,
    output_layer,
    register_model,
    save_weights,
)

# Every registered model takes images (the MLP flattens them), plus the torchvision models a user
# is most likely to name: a ResNet (adapted stem) and a MobileNet (first conv swapped for 1 channel).
IMAGE_MODELS = [*list_models(), "torchvision:resnet18", "torchvision:mobilenet_v3_small"]
BATCH = 4


def train_step(model: nn.Module, inputs: torch.Tensor, loss: nn.Module, target: torch.Tensor) -> torch.Tensor:
    """One forward and backward in train mode; the output, after checking it and every gradient is finite."""
    model.train()
    output = model(inputs)
    assert torch.isfinite(output).all()
    loss(output, target).backward()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None, f"{name} got no gradient"
            assert torch.isfinite(parameter.grad).all(), f"{name} has a non-finite gradient"
    return output


@pytest.mark.parametrize("side", [8, 32])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("ref", IMAGE_MODELS)
def test_every_image_model_builds_and_trains_a_step(ref: str, channels: int, side: int) -> None:
    torch.manual_seed(0)
    model = create_model(ref, input_shape=(channels, side, side), num_outputs=10)
    head = output_layer(model)
    if ref in list_models():
        assert head is model.head
    # The output layer is the one whose output the model returns: what bias init and freezing rely on.
    head_outputs: list[torch.Tensor] = []
    head.register_forward_hook(lambda module, inputs, output: head_outputs.append(output))
    output = train_step(model, torch.randn(BATCH, channels, side, side), nn.CrossEntropyLoss(), torch.randint(0, 10, (BATCH,)))
    assert output.shape == (BATCH, 10)
    assert len(head_outputs) == 1
    assert head_outputs[0] is output


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_mlp_on_table_rows(task: str, batch_norm: bool) -> None:
    torch.manual_seed(0)
    num_outputs, loss, target = (
        (3, nn.CrossEntropyLoss(), torch.randint(0, 3, (BATCH,)))
        if task == "classification"
        else (1, nn.MSELoss(), torch.randn(BATCH, 1))
    )
    model = create_model("mlp", input_shape=(13,), num_outputs=num_outputs, params={"batch_norm": batch_norm, "dropout": 0.1})
    output = train_step(model, torch.randn(BATCH, 13), loss, target)
    assert output.shape == (BATCH, num_outputs)
    assert output_layer(model) is model.head


def test_mlp_with_no_hidden_layer_is_a_linear_model() -> None:
    model = create_model("mlp", input_shape=(13,), num_outputs=3, params={"hidden": []})
    assert count_parameters(model) == 13 * 3 + 3


def test_mlp_depth_and_width_give_halving_layers_and_depth_0_is_linear() -> None:
    sizes = [m.out_features for m in create_model("mlp", input_shape=(13,), num_outputs=3, params={"depth": 3, "width": 64}).hidden if isinstance(m, nn.Linear)]
    assert sizes == [64, 32, 16]
    default = [m.out_features for m in create_model("mlp", input_shape=(13,), num_outputs=3, params={}).hidden if isinstance(m, nn.Linear)]
    assert default == [128, 64]  # as before depth and width existed
    linear = create_model("mlp", input_shape=(13,), num_outputs=3, params={"depth": 0})
    assert [type(m) for m in linear.modules() if isinstance(m, nn.Linear)] == [nn.Linear] and len(linear.hidden) == 0



@pytest.mark.parametrize("batch_norm", [False, True])
def test_resnet_small_depth_adds_parameters(batch_norm: bool) -> None:
    counts = [
        count_parameters(
            create_model(
                "resnet_small",
                input_shape=(3, 8, 8),
                num_outputs=10,
                params={"depth": depth, "batch_norm": batch_norm, "width": 8},
            )
        )
        for depth in (1, 2, 3)
    ]
    assert counts == sorted(set(counts)), counts
    model = create_model("resnet_small", input_shape=(3, 8, 8), num_outputs=10, params={"batch_norm": batch_norm})
    has_norm = any(isinstance(module, nn.BatchNorm2d) for module in model.modules())
    assert has_norm == batch_norm


def test_resnet_small_without_batch_norm_still_learns_digits() -> None:
    """The no-normalisation switch is only useful if that network trains: three epochs on real 8x8 digits
    (0.88 validation accuracy here, as with batch norm; about 1 s on 2 idle CPU cores)."""
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1)
    images = (images - images.mean()) / images.std()
    labels = torch.tensor(digits.target)
    torch.manual_seed(0)
    model = create_model("resnet_small", input_shape=(1, 8, 8), num_outputs=10, params={"batch_norm": False, "width": 8})
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    for start in [*range(0, 1400, 50)] * 3:
        loss = nn.functional.cross_entropy(model(images[start : start + 50]), labels[start : start + 50])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(images[1400:]).argmax(1) == labels[1400:]).float().mean().item()
    assert accuracy > 0.7, accuracy  # chance is 0.1


@pytest.mark.parametrize("ref", list_models())
def test_models_are_deterministic_under_a_seed(ref: str) -> None:
    inputs = torch.randn(2, 3, 8, 8)

    def initial_output(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        model = create_model(ref, input_shape=(3, 8, 8), num_outputs=4)
        with torch.no_grad():
            return model.eval()(inputs)

    assert torch.equal(initial_output(1), initial_output(1))
    assert not torch.equal(initial_output(1), initial_output(2))


def test_torchvision_resnet_gets_a_small_input_stem_and_the_data_channels() -> None:
    small = create_model("torchvision:resnet18", input_shape=(1, 32, 32), num_outputs=10)
    assert (small.conv1.in_channels, small.conv1.kernel_size, small.conv1.stride) == (1, (3, 3), (1, 1))
    assert isinstance(small.maxpool, nn.Identity)
    large = create_model("torchvision:resnet18", input_shape=(1, 64, 64), num_outputs=10)
    assert (large.conv1.in_channels, large.conv1.kernel_size, large.conv1.stride) == (1, (7, 7), (2, 2))
    assert isinstance(large.maxpool, nn.MaxPool2d)


def test_torchvision_params_reach_the_builder() -> None:
    model = create_model("torchvision:mobilenet_v3_small", input_shape=(3, 8, 8), num_outputs=5, params={"dropout": 0.5})
    assert any(isinstance(module, nn.Dropout) and module.p == 0.5 for module in model.modules())


def test_register_model_refuses_a_taken_name() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model("simple_cnn")(lambda input_shape, num_outputs: nn.Linear(1, 1))


@pytest.mark.parametrize(
    ("ref", "input_shape", "params", "match"),
    [
        pytest.param(
            "no_such_net",
            (3, 8, 8),
            {},
            rf"not a registered model; registered: {', '.join(list_models())}\. .*torchvision:<name>.*file\.py:ClassName",
            id="unknown-name",
        ),
        pytest.param(
            "simple_cnn",
            (3, 8, 8),
            {"widht": 16},
            r"unknown keys \['widht'\]; 'simple_cnn' accepts: width, dropout",
            id="unknown-param",
        ),
        pytest.param(
            "simple_cnn",
            (3, 8, 8),
            {"width": 0},
            r"model\.params\.width for 'simple_cnn' must be a whole number",
            id="zero-width",
        ),
        pytest.param(
            "resnet_small",
            (3, 8, 8),
            {"dropout": 1.5},
            r"model\.params\.dropout .* must be a number in \[0, 1\)",
            id="dropout-range",
        ),
        pytest.param(
            "resnet_small",
            (3, 8, 8),
            {"batch_norm": "no"},
            r"model\.params\.batch_norm .* must be true or false",
            id="batch-norm-type",
        ),
        pytest.param("mlp", (13,), {"hidden": 64}, r"model\.params\.hidden for 'mlp' must be a list", id="hidden-not-a-list"),
        pytest.param(
            "resnet_small", (13,), {}, r"image model .* shape \(13,\); for tables use model\.name: mlp", id="image-model-on-table"
        ),
        pytest.param(
            "torchvision:resnet81",
            (3, 32, 32),
            {},
            r"no classification model 'resnet81'; did you mean resnet18",
            id="torchvision-typo",
        ),
        pytest.param(
            "torchvision:resnet18",
            (3, 32, 32),
            {"num_classes": 3},
            r"\['num_classes'\] .* are set by trainwise",
            id="torchvision-reserved",
        ),
        pytest.param(
            "torchvision:resnet18",
            (3, 32, 32),
            {"colour": True},
            r"'torchvision:resnet18' rejects model\.params",
            id="torchvision-bad-param",
        ),
        pytest.param(
            "torchvision:resnet18", (13,), {}, r"image model, but this project's inputs are table rows", id="torchvision-on-table"
        ),
    ],
)
def test_bad_references_and_params_name_what_to_do(ref: str, input_shape: tuple[int, ...], params: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        create_model(ref, input_shape=input_shape, num_outputs=10, params=params)


# --- a user's own nn.Module -------------------------------------------------------------------

USER_MODULE = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, in_channels, num_classes, hidden=8):
        super().__init__()
        if hidden < 1:
            raise ValueError("hidden must be positive")
        self.conv = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


class Rows(nn.Module):
    def __init__(self, num_features, num_outputs):
        super().__init__()
        self.fc = nn.Linear(num_features, num_outputs)

    def forward(self, x):
        return self.fc(x)


class WrongSize(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.fc = nn.Linear(1, num_classes + 1)

    def forward(self, x):
        return self.fc(x.mean((1, 2, 3)).unsqueeze(1))


not_a_model = 42
"""


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_models.py"
    path.write_text(USER_MODULE)
    return path


@pytest.fixture
def user_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An importable `tw_user_pkg.nets` module, as an installed package of the user's would be."""
    package = tmp_path / "site" / "tw_user_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    yield "tw_user_pkg.nets"
    for name in ("tw_user_pkg.nets", "tw_user_pkg"):
        sys.modules.pop(name, None)


def test_user_class_from_a_file(user_file: Path) -> None:
    model = create_model(f"{user_file}:Net", input_shape=(1, 8, 8), num_outputs=4, params={"hidden": 5})
    output = train_step(model, torch.randn(BATCH, 1, 8, 8), nn.CrossEntropyLoss(), torch.randint(0, 4, (BATCH,)))
    assert output.shape == (BATCH, 4)
    assert model.conv.in_channels == 1
    assert model.conv.out_channels == 5
    assert output_layer(model) is model.fc


def test_user_class_from_an_importable_module_gets_table_arguments(user_package: str) -> None:
    model = create_model(f"{user_package}:Rows", input_shape=(13,), num_outputs=1)
    output = train_step(model, torch.randn(BATCH, 13), nn.MSELoss(), torch.randn(BATCH, 1))
    assert output.shape == (BATCH, 1)
    assert output_layer(model) is model.fc


@pytest.mark.parametrize(
    ("class_name", "input_shape", "params", "match"),
    [
        ("Missing", (1, 8, 8), {}, r"has no 'Missing'; nn\.Module classes defined there: Net, Rows, WrongSize"),
        ("not_a_model", (1, 8, 8), {}, r"not_a_model is a int, not a torch\.nn\.Module subclass"),
        (
            "Net",
            (1, 8, 8),
            {"depth": 3},
            r"cannot be called with .*unexpected keyword argument 'depth'.*Its signature is Net\(in_channels, num_classes, hidden=8\)",
        ),
        ("Net", (13,), {}, r"cannot be called with \['num_classes'\].*missing a required argument: 'in_channels'"),
        ("Net", (1, 8, 8), {"hidden": 0}, r"rejects model\.params \{'hidden': 0\}: hidden must be positive"),
        ("Net", (1, 8, 8), {"in_channels": 3}, r"\['in_channels'\] .* are set by trainwise from the data"),
        ("WrongSize", (1, 8, 8), {}, r"returns \(2, 5\) for a batch of 2, expected one tensor of shape \(2, 4\)"),
    ],
)
def test_user_class_errors_name_the_reference(
    user_file: Path, class_name: str, input_shape: tuple[int, ...], params: dict, match: str
) -> None:
    ref = f"{user_file}:{class_name}"
    with pytest.raises(ConfigError, match=match) as caught:
        create_model(ref, input_shape=input_shape, num_outputs=4, params=params)
    assert ref in str(caught.value)


def test_user_files_and_modules_that_do_not_import(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"the file .*absent\.py does not exist"):
        create_model(f"{tmp_path / 'absent.py'}:Net", input_shape=(1, 8, 8), num_outputs=4)
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\nraise RuntimeError('no GPU here')\n")
    with pytest.raises(ConfigError, match=r"importing .*broken\.py failed: RuntimeError: no GPU here"):
        create_model(f"{broken}:Net", input_shape=(1, 8, 8), num_outputs=4)
    assert not any(name.startswith("trainwise_user_model_broken") for name in sys.modules)
    with pytest.raises(
        ConfigError, match=r"'tw_no_such_pkg\.nets:Net': importing tw_no_such_pkg\.nets failed: ModuleNotFoundError"
    ):
        create_model("tw_no_such_pkg.nets:Net", input_shape=(1, 8, 8), num_outputs=4)


# --- the output layer ---------------------------------------------------------------------------


def test_output_bias_starts_at_the_class_prior() -> None:
    torch.manual_seed(0)
    prior = [0.6, 0.25, 0.1, 0.05]
    model = create_model("simple_cnn", input_shape=(3, 32, 32), num_outputs=4)
    init_output_bias(model, [60, 25, 10, 5])  # counts work as well as shares
    assert torch.allclose(model.head.bias, torch.tensor(prior).log())
    model.eval()
    with torch.no_grad():
        probabilities = model(torch.randn(64, 3, 32, 32)).softmax(1).mean(0)
    assert torch.allclose(probabilities, torch.tensor(prior), atol=0.02), probabilities
    # The expected loss at init is then the prior's entropy, the number step 4's check compares against.
    with torch.no_grad():
        expected_loss = -(torch.tensor(prior) * model(torch.randn(64, 3, 32, 32)).log_softmax(1)).sum(1).mean()
    assert expected_loss.item() == pytest.approx(-sum(p * math.log(p) for p in prior), abs=0.01)


def test_output_bias_for_regression_is_the_target_mean_and_absent_classes_stay_finite() -> None:
    model = create_model("mlp", input_shape=(5,), num_outputs=1)
    init_output_bias(model, 152.1)
    assert model.head.bias.item() == pytest.approx(152.1)
    with torch.no_grad():
        assert model(torch.randn(256, 5)).mean().item() == pytest.approx(152.1, abs=0.5)
    classifier = create_model("mlp", input_shape=(5,), num_outputs=3)
    init_output_bias(classifier, [10, 0, 5])
    assert torch.isfinite(classifier.head.bias).all()
    with pytest.raises(ValueError, match="the prior has 2 classes, the model 3 outputs"):
        init_output_bias(classifier, [0.5, 0.5])
    with pytest.raises(ValueError, match="needs one output"):
        init_output_bias(classifier, 1.0)


def test_freeze_backbone_leaves_only_the_head_trainable_and_unfreezing_restores_it() -> None:
    model = create_model("torchvision:resnet18", input_shape=(3, 32, 32), num_outputs=10)
    everything = count_parameters(model)
    frozen = freeze_backbone(model, True)
    assert {name for name, p in model.named_parameters() if p.requires_grad} == {"fc.weight", "fc.bias"}
    assert count_parameters(model) == 512 * 10 + 10
    assert "conv1.weight" in frozen
    assert freeze_backbone(model, True) == []  # already frozen: nothing changes
    assert freeze_backbone(model, False) == frozen
    assert count_parameters(model) == everything


def test_a_model_without_a_linear_layer_has_no_output_layer() -> None:
    with pytest.raises(ConfigError, match=r"Sequential has no nn\.Linear output layer.*prior_bias_init: false"):
        output_layer(nn.Sequential(nn.Conv2d(3, 10, 1), nn.Flatten()))


# --- weights on disk ----------------------------------------------------------------------------


def test_weights_round_trip_into_a_model_with_another_head(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = create_model("simple_cnn", input_shape=(3, 32, 32), num_outputs=10)
    path = tmp_path / "weights" / "cnn.safetensors"
    save_weights(source, path)
    assert sorted(load_file(path)) == sorted(source.state_dict())
    assert [p.name for p in path.parent.iterdir()] == ["cnn.safetensors"]  # no temporary file left

    torch.manual_seed(1)
    target = create_model("simple_cnn", input_shape=(3, 32, 32), num_outputs=3)
    report = load_initial_weights(target, path)
    assert report["skipped_shape"] == ["head.bias", "head.weight"]
    assert report["missing"] == []
    assert report["unexpected"] == []
    assert sorted(report["loaded"]) == sorted(set(source.state_dict()) - {"head.bias", "head.weight"})
    for name in report["loaded"]:
        assert torch.equal(target.state_dict()[name], source.state_dict()[name]), name


def test_weights_that_match_nothing_or_are_not_safetensors_are_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "cnn.safetensors"
    save_weights(create_model("simple_cnn", input_shape=(3, 8, 8), num_outputs=10), path)
    with pytest.raises(ConfigError, match=r"none of its \d+ tensors matches the model \(MLP\)"):
        load_initial_weights(create_model("mlp", input_shape=(5,), num_outputs=2), path)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match=r"junk\.safetensors: cannot read it as a \.safetensors file"):
        load_initial_weights(create_model("mlp", input_shape=(5,), num_outputs=2), junk)
    with pytest.raises(ConfigError, match=r"absent\.safetensors: cannot read it"):
        load_initial_weights(create_model("mlp", input_shape=(5,), num_outputs=2), tmp_path / "absent.safetensors")


def test_mlp_refuses_hidden_with_depth_or_width() -> None:
    with pytest.raises(ConfigError, match=r"give hidden .* or depth and width, not both"):
        create_model("mlp", input_shape=(13,), num_outputs=3, params={"hidden": [64], "depth": 0})
