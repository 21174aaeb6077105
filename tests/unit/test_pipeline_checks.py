"""Each pipeline check passes on a sound setup and fails on the bug it exists to catch (real digits, CPU)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from trainwise.checks.pipeline import (
    CheckSetup,
    check_batch_independence,
    check_finite_first_steps,
    check_inputs,
    check_label_shuffle,
    check_loss_at_init,
    check_lr_range,
    check_output_bias,
    check_output_is_logits,
    check_overfit_one_batch,
    check_parameters_update,
    diagnose,
    run_pipeline_checks,
    short_fit,
)
from trainwise.checks.settings import check_configured_lr, check_destructive_augmentation
from trainwise.config import ChecksConfig
from trainwise.data.loading import PreparedData
from trainwise.data.transforms import normalize
from trainwise.engine import EngineConfig, TensorData
from trainwise.metrics import CLASSIFICATION
from trainwise.models import create_model, init_output_bias

MEAN, STD = [0.3], [0.37]


def digits_data(labels: np.ndarray | None = None) -> PreparedData:
    data = load_digits()
    x = torch.from_numpy((data.images[:400] * 255 / 16).astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(labels if labels is not None else data.target[:400]).long()
    splits = {"train": TensorData(x[:300], y[:300]), "val": TensorData(x[300:], y[300:])}
    prep = {"kind": "image", "size": [8, 8], "channels": 1, "mean": MEAN, "std": STD}
    return PreparedData(CLASSIFICATION, [str(i) for i in range(10)], (1, 8, 8), splits, {}, prep)


def setup(model_factory=None, data: PreparedData | None = None, **engine: object) -> CheckSetup:
    data = data or digits_data()

    def build() -> nn.Module:
        torch.manual_seed(0)
        model = model_factory() if model_factory else create_model("simple_cnn", input_shape=(1, 8, 8), num_outputs=10, params={"width": 16})
        init_output_bias(model, data.prior())
        return model

    transform = lambda x: normalize(x.float() / 255.0, MEAN, STD)  # noqa: E731
    config = EngineConfig(task=CLASSIFICATION, num_outputs=10, epochs=8, batch_size=32, lr=3e-3, device="cpu", precision="fp32")
    config = replace(config, **engine)  # type: ignore[arg-type]
    return CheckSetup(data, build, config, transform, transform, ChecksConfig(overfit_steps=150, lr_range_steps=40), prior_bias_init=True)


def test_a_sound_setup_passes_every_check() -> None:
    results = run_pipeline_checks(setup())
    failed = {r.name: (r.value, r.threshold, r.meaning) for r in results if not r.passed}
    assert not failed
    assert len(results) == 15
    assert {r.name for r in results if r.figure is not None} >= {"input_shape_and_range", "overfit_one_batch", "lr_range_test"}
    lr = next(r for r in results if r.name == "lr_range_test")
    assert 1e-6 < lr.extra["suggested_lr"] < 1.0
    # every row says what it cost; a short fit is counted on the row it exists for
    rows = {r.name: r for r in results}
    assert all(r.seconds > 0 and "seconds" in r.to_dict() for r in results)
    for fitted in ("training_loss_decreases", "label_shuffle_control", "input_independent_baseline"):
        assert rows[fitted].seconds > rows["batch_independence"].seconds, fitted


def test_unnormalised_inputs_fail_the_input_check() -> None:
    bad = setup()
    bad.eval_transform = lambda x: x.float() / 255.0  # forgot to normalise
    result = check_inputs(bad)
    assert not result.passed and result.value > 0.5


def test_inputs_normalised_with_pretrained_weights_statistics_are_judged_against_what_those_give() -> None:
    # ImageNet-like statistics on digits leave the inputs far from mean 0, std 1 (|mean| 0.66): right for
    # a pretrained net, and what the row must then expect instead (fitting.with_model_preprocessing).
    weights_mean, weights_std = [0.45], [0.226]
    data = digits_data()
    claimed = {**data.preprocessing, "mean": weights_mean, "std": weights_std, "stats_from": "W.IMAGENET1K_V1", "data_mean": MEAN, "data_std": STD}
    normalised = lambda x: normalize(x.float() / 255.0, weights_mean, weights_std)  # noqa: E731
    pretrained = replace(setup(data=replace(data, preprocessing=claimed)), train_transform=normalised, eval_transform=normalised)
    result = check_inputs(pretrained)
    assert result.passed and result.value < 0.05 and "W.IMAGENET1K_V1" in result.meaning, result.meaning
    unexplained = replace(pretrained, data=replace(data, preprocessing={**data.preprocessing, "mean": weights_mean, "std": weights_std}))
    assert not check_inputs(unexplained).passed  # the same inputs, judged as if normalised with their own statistics
    mismatched = replace(pretrained, eval_transform=lambda x: normalize(x.float() / 255.0, MEAN, STD))
    assert not check_inputs(mismatched).passed  # claims the weights' statistics, applies the data's


class MixesTheBatch(nn.Module):
    """A bug seen in the wild: statistics over the batch axis in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        return self.head(flat - flat.mean(dim=0, keepdim=True))


def test_mixing_examples_across_the_batch_fails_batch_independence() -> None:
    assert check_batch_independence(setup()).passed
    result = check_batch_independence(setup(MixesTheBatch))
    assert not result.passed and result.value > 0


class UnusedLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.forgotten = nn.Linear(64, 64)  # defined, never called
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))


def test_a_parameter_outside_the_graph_fails_parameters_update() -> None:
    result = check_parameters_update(setup(UnusedLayer))
    assert not result.passed and "forgotten.weight" in result.meaning


class DriftingBackbone(nn.Module):
    """A freeze that does not hold: the forward pass rescales a backbone weight in place."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(64, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                self.backbone.weight.mul_(0.99)
        return self.head(torch.relu(self.backbone(x.flatten(1))))


def test_frozen_backbone_must_stay_put_while_the_head_learns() -> None:
    frozen = replace(setup(), freeze_backbone=True)
    result = check_parameters_update(frozen)
    assert result.passed, result.meaning

    drifting = replace(setup(DriftingBackbone), freeze_backbone=True)
    result = check_parameters_update(drifting)
    assert not result.passed and "backbone.weight" in result.meaning


def test_pretrained_weights_skip_the_fresh_init_checks() -> None:
    pretrained = replace(setup(), pretrained=True)
    assert "skipped" in check_loss_at_init(pretrained).meaning
    assert "skipped" in check_output_bias(pretrained).meaning


def test_a_huge_learning_rate_fails_finiteness() -> None:
    result = check_finite_first_steps(setup(lr=1e12, optimizer="sgd", momentum=0.0))
    assert not result.passed


def test_init_loss_and_output_bias() -> None:
    sound = setup()
    assert check_loss_at_init(sound).passed and check_output_bias(sound).passed

    class Overconfident(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(64, 10)
            nn.init.normal_(self.head.weight, std=5.0)  # huge logits at init

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x.flatten(1))

    result = check_loss_at_init(setup(Overconfident))
    assert not result.passed and result.value > 1


def test_random_labels_cannot_be_memorised_by_a_tiny_model_and_are_diagnosed() -> None:
    noise = np.random.default_rng(0).integers(0, 10, 400)
    tiny = lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 10))  # noqa: E731
    weak = replace(setup(tiny, digits_data(noise)), thresholds=ChecksConfig(overfit_batch_size=64, overfit_steps=60))
    result = check_overfit_one_batch(weak)
    assert not result.passed
    assert "looks" in result.advice


def test_zeroed_inputs_and_baseline_fail_when_labels_do_not_match_the_images() -> None:
    noise = np.random.default_rng(1).integers(0, 10, 400)
    results = {r.name: r for r in run_pipeline_checks(setup(data=digits_data(noise)))}
    assert not results["input_independent_baseline"].passed
    assert not results["beats_trivial_baseline"].passed
    assert results["label_shuffle_control"].passed  # nothing leaks: random labels stay at chance


def test_the_lr_range_test_needs_a_valley() -> None:
    class Constant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(1, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.zeros(x.shape[0], 1)) * 0 + torch.zeros(x.shape[0], 10)  # ignores everything

    result = check_lr_range(setup(Constant))
    assert not result.passed and math.isclose(result.value, 1.0)


@pytest.mark.parametrize(
    ("losses", "shape"),
    [
        ([2.0 - 0.01 * i for i in range(100)], "decreasing"),
        ([1.0 + 0.01 * i for i in range(100)], "rising"),
        ([1.0, 2.0, 50.0, float("nan")], "exploding"),
        ([1.0] * 100, "plateau"),
        ([2.0] * 10 + [1.0 + (i % 2) for i in range(90)], "oscillating"),
    ],
)
def test_loss_shape_diagnosis(losses: list[float], shape: str) -> None:
    assert shape in diagnose(losses)


def class_sorted_data() -> PreparedData:
    """digits with the training split sorted by class, the way prepare's split manifests come."""
    data = digits_data()
    train = data.splits["train"]
    order = torch.argsort(train.y, stable=True)
    return replace(data, splits={**data.splits, "train": TensorData(train.x[order], train.y[order])})


def test_the_check_batch_mixes_every_class_of_a_class_sorted_split() -> None:
    sorted_setup = setup(data=class_sorted_data())
    assert sorted_setup.train.y[:16].unique().numel() <= 2  # the split's own first rows: one or two classes

    _, y = sorted_setup.batch(16)  # the overfit check's batch size
    assert set(y.tolist()) == set(range(10))
    _, first_ten = sorted_setup.batch(10)
    assert sorted(first_ten.tolist()) == list(range(10))  # as many rows as classes: one of each
    _, y4 = sorted_setup.batch(4)
    assert torch.equal(y4, y[:4]) and len(set(y4.tolist())) == 4  # smaller batches lie inside larger ones


def test_the_check_batch_is_fixed_by_the_seed() -> None:
    data = class_sorted_data()
    _, a = setup(data=data, seed=3).batch(32)
    _, again = setup(data=data, seed=3).batch(32)
    _, other = setup(data=data, seed=4).batch(32)
    assert torch.equal(a, again)
    assert not torch.equal(a, other)
    shares = torch.bincount(a, minlength=10)
    assert shares.min() >= 2 and shares.max() <= 5  # proportional beyond the first round (30 of each class here)


def test_the_check_batch_of_a_regression_split_spans_the_targets() -> None:
    data = class_sorted_data()
    targets = torch.linspace(-2.0, 2.0, len(data.splits["train"]))  # sorted, like the classes above
    regression = replace(data, task="regression", classes=[], splits={**data.splits, "train": TensorData(data.splits["train"].x, targets)})
    _, y = setup(data=regression).batch(10)
    assert float(y.min()) < -1.0 and float(y.max()) > 1.0


class Softmaxed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1)).softmax(dim=1)


class LogSoftmaxed(Softmaxed):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1)).log_softmax(dim=1)  # fine: cross-entropy of log-probabilities is the same loss


def test_a_softmax_at_the_end_of_the_model_is_named() -> None:
    assert check_output_is_logits(setup()).passed
    assert check_output_is_logits(setup(LogSoftmaxed)).passed
    assert not check_output_is_logits(setup(Softmaxed)).passed


class Frozen(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Linear(64, 32).requires_grad_(False)  # left in from an experiment
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.features(x.flatten(1))))


class Detached(Frozen):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.features(x.flatten(1)))).detach() + self.head.bias * 0


class IgnoresInput(Frozen):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.bias.expand(len(x), -1)


def test_parameters_frozen_by_no_setting_fail_parameters_update() -> None:
    result = check_parameters_update(setup(Frozen))
    assert not result.passed and "features.weight" in result.meaning and "no setting freezes" in result.meaning
    assert check_parameters_update(replace(setup(Frozen), freeze_backbone=True)).passed  # asked for: fine
    assert check_parameters_update(replace(setup(Frozen), pretrained=True)).passed


@pytest.mark.parametrize("model", [Detached, IgnoresInput])
def test_an_output_without_a_path_to_the_input_fails_batch_independence_instead_of_crashing(model: type[nn.Module]) -> None:
    result = check_batch_independence(setup(model))
    assert not result.passed and "does not depend on its own input" in result.meaning


def test_a_diverging_short_fit_fails_its_rows_instead_of_crashing() -> None:
    diverging = setup(lr=1e12, optimizer="sgd", momentum=0.0)
    fit = short_fit(diverging, "real")
    assert fit.error and "NaN" in fit.error and fit.val_metrics == {}
    rows = {r.name: r for r in run_pipeline_checks(diverging)}
    for name in ("input_independent_baseline", "label_shuffle_control", "training_loss_decreases", "beats_trivial_baseline"):
        assert not rows[name].passed and "diverged" in rows[name].meaning, name


def test_the_configured_learning_rate_is_judged_against_the_range_test() -> None:
    sound = setup()
    lr_range = check_lr_range(sound)
    assert check_configured_lr(sound, lr_range).passed
    suggested = lr_range.extra["suggested_lr"]
    assert not check_configured_lr(setup(lr=suggested * 100), lr_range).passed
    assert not check_configured_lr(setup(lr=suggested / 1000), lr_range).passed
    assert check_configured_lr(replace(setup(lr=suggested / 1000), pretrained=True), lr_range).passed  # fine-tuning


def test_augmentation_that_changes_the_label_is_named() -> None:
    from trainwise.config.sections import AugmentConfig
    from trainwise.data.transforms import augment_batch, build_augmentation

    def with_augmentation(**settings: object) -> CheckSetup:
        augment = build_augmentation(AugmentConfig(**settings), (8, 8))
        # 15 epochs: the check step's sample run (checks.sample_epochs)
        return replace(setup(epochs=15), train_transform=lambda x: normalize(augment_batch(x, augment), MEAN, STD))

    def judged(**settings: object):
        checked = with_augmentation(**settings)
        return check_destructive_augmentation(checked, short_fit(checked, "real"))

    mild = judged(crop_padding=1, rotation=8)
    assert mild.passed, mild.meaning
    upside_down, whole_image = judged(rotation=180), judged(crop_padding=8)  # a crop padding as large as the image
    assert not upside_down.passed and not whole_image.passed, (upside_down.meaning, whole_image.meaning)


def test_the_label_shuffle_margin_allows_what_chance_does_on_a_small_validation_split() -> None:
    """15 validation items at 40% chance: 10 or more right (+27 points) happens 3.4% of the time, more than 10 0.9%."""
    from trainwise.checks.pipeline import ShortFit
    from trainwise.engine import FitResult

    data = digits_data()
    data.splits["val"] = TensorData(data.splits["val"].x[:15], data.splits["val"].y[:15])
    lucky = ShortFit(FitResult([], 0, 0.0, {}), {"val_accuracy": max(data.prior()) + 0.2})
    assert check_label_shuffle(setup(data=data), lucky).passed
    data.splits["val"] = TensorData(digits_data().splits["val"].x, digits_data().splits["val"].y)  # 100 items
    assert not check_label_shuffle(setup(data=data), lucky).passed
