"""Unbalanced classes: the balanced sampler, class-weighted loss, the prior the output bias starts at (real digits, CPU)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import log_loss
from torch import nn

from tests.unit.test_pipeline_checks import digits_data, setup
from trainwise.checks.pipeline import check_loss_at_init, check_output_bias
from trainwise.config import load_config
from trainwise.engine import EngineConfig, TensorData, Trainer, epoch_order
from trainwise.errors import ConfigError
from trainwise.fitting import build_model, class_weights, engine_config, training_prior
from trainwise.metrics import CLASSIFICATION
from trainwise.models import output_layer
from trainwise.steps.understand import _imbalance_advice

PROJECT = """\
name: unbalanced
task: {{type: image_classification, target: label, metric: {metric}}}
data: {{source: {{kind: image_folder, root: data/train}}}}
image: {{size: 8, channels: 1}}
model: {{name: simple_cnn, params: {{width: 16}}}}
train: {{class_weight: {weight}, sampler: {sampler}}}
"""


def project(tmp_path: Path, *, weight: str = "none", sampler: str = "shuffle", metric: str = "accuracy"):
    (tmp_path / "data" / "train").mkdir(parents=True, exist_ok=True)  # the config only checks that it exists
    (tmp_path / "project.yaml").write_text(PROJECT.format(weight=weight, sampler=sampler, metric=metric))
    return load_config(tmp_path)


def unbalanced_digits(keep_rare: float = 0.06, seed: int = 0) -> tuple[TensorData, TensorData]:
    """Digits 0-4 whole and a few of 5-9 for training (about 16:1); the validation digits as they come."""
    data = load_digits()
    x = torch.from_numpy((data.images * 255 / 16).astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(data.target).long()
    rng = np.random.default_rng(seed)
    keep = np.array([t < 5 or rng.random() < keep_rare for t in data.target[:1400]])
    index = torch.from_numpy(np.flatnonzero(keep))
    return TensorData(x[index], y[index]), TensorData(x[1400:], y[1400:])


def test_balanced_order_draws_every_class_alike_and_repeats_with_the_seed() -> None:
    y = torch.tensor([0] * 900 + [1] * 90 + [2] * 10)
    plain = epoch_order(y, torch.Generator().manual_seed(3))
    assert sorted(plain.tolist()) == list(range(1000))  # a permutation: every item once
    drawn = epoch_order(y, torch.Generator().manual_seed(3), balanced=True)
    assert len(drawn) == 1000
    shares = torch.bincount(y[drawn], minlength=3).double() / 1000
    assert torch.allclose(shares, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.05), shares
    assert torch.equal(drawn, epoch_order(y, torch.Generator().manual_seed(3), balanced=True))  # resume draws the same


def test_class_weighted_loss_is_scikit_learns_weighted_log_loss_and_evaluation_stays_unweighted() -> None:
    _, val = unbalanced_digits()
    weights = (0.3, 0.5, 1.0, 2.0, 4.0, 0.7, 1.1, 1.3, 0.2, 3.0)
    trainer = Trainer(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), EngineConfig(
        task=CLASSIFICATION, num_outputs=10, device="cpu", precision="fp32", class_weights=weights))  # fmt: skip
    torch.manual_seed(0)
    logits = torch.randn(len(val), 10)
    probabilities = logits.softmax(dim=1).double().numpy()
    weighted = float(trainer.loss_fn(logits, val.y))
    expected = log_loss(val.y.numpy(), probabilities, labels=list(range(10)), sample_weight=np.array(weights)[val.y.numpy()])
    assert weighted == pytest.approx(expected, rel=1e-5)
    metrics = trainer.evaluate(val)
    plain = log_loss(val.y.numpy(), trainer.predict(val.x).softmax(dim=1).double().numpy(), labels=list(range(10)))
    assert metrics["loss"] == pytest.approx(plain, rel=1e-4)  # val_loss: the textbook mean, not the weighted one
    assert metrics["log_loss"] == pytest.approx(plain, rel=1e-4)


@pytest.mark.parametrize("option", [{"weight": "balanced"}, {"sampler": "balanced"}], ids=["class_weight", "sampler"])
def test_balanced_training_lifts_the_rare_classes(tmp_path: Path, option: dict[str, str]) -> None:
    """16:1 digits: plain training neglects the rare digits; either option raises their recall (balanced accuracy)."""
    train, val = unbalanced_digits()
    counts = torch.bincount(train.y, minlength=10)
    assert counts[:5].min() / counts[5:].max() > 10  # the planted imbalance

    def balanced_accuracy(**settings: str) -> float:
        cfg = project(tmp_path, **settings)
        data = digits_data()
        data.splits = {"train": train, "val": val}
        engine = engine_config(cfg, data, epochs=6)
        engine = EngineConfig(**{**engine.__dict__, "device": "cpu", "precision": "fp32", "lr": 0.01, "batch_size": 64})
        torch.manual_seed(0)
        trainer = Trainer(nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)), engine,
                          train_transform=lambda x: x.float() / 255, eval_transform=lambda x: x.float() / 255)  # fmt: skip
        return trainer.fit(train, val).history[-1]["val_balanced_accuracy"]

    plain, balanced = balanced_accuracy(), balanced_accuracy(**option)
    assert balanced > plain + 0.05, (plain, balanced)


def test_class_weights_are_scikit_learns_balanced_weights_from_the_training_split(tmp_path: Path) -> None:
    data = digits_data()
    train, _ = unbalanced_digits()
    data.splits["train"] = train
    weights = np.array(class_weights(project(tmp_path, weight="balanced"), data))
    counts = np.bincount(train.y.numpy(), minlength=10)
    assert np.allclose(weights, len(train) / (10 * counts))
    assert np.allclose((weights * counts).sum(), len(train))  # the mean weight per item is 1: the loss keeps its scale
    assert class_weights(project(tmp_path), data) is None


def test_balanced_training_starts_the_output_bias_uniform_and_the_init_checks_expect_it(tmp_path: Path) -> None:
    train, val = unbalanced_digits()
    data = digits_data()
    data.splits = {"train": train, "val": val}
    plain, balanced = project(tmp_path), project(tmp_path, sampler="balanced")
    assert training_prior(plain, data) == pytest.approx(data.prior())
    assert training_prior(balanced, data) == pytest.approx([0.1] * 10)
    bias = output_layer(build_model(balanced, data)).bias.detach()
    assert torch.softmax(bias, 0).tolist() == pytest.approx([0.1] * 10, abs=1e-6)
    base = replace(setup(data=data), build_model=lambda: build_model(balanced, data))
    uniform = replace(base, init_prior=training_prior(balanced, data))
    bias_row, loss_row = check_output_bias(uniform), check_loss_at_init(uniform)
    assert bias_row.passed and loss_row.passed, (bias_row, loss_row)
    assert "2.303" in loss_row.meaning  # ln 10: the uniform prior's entropy
    assert not check_output_bias(base).passed  # judged against the data's prior, the uniform bias is an error


def test_regression_refuses_class_options(tmp_path: Path) -> None:
    (tmp_path / "project.yaml").write_text(
        "name: r\ntask: {type: tabular_regression, target: y}\ndata: {source: {kind: tabular, sklearn: diabetes}}\n"
        "model: {name: mlp}\ntrain: {sampler: balanced}\n"
    )
    with pytest.raises(ConfigError, match=r"train\.sampler 'balanced' needs classes"):
        load_config(tmp_path)


def test_problem_card_advises_on_unbalanced_classes(tmp_path: Path) -> None:
    advice = " ".join(_imbalance_advice(project(tmp_path), 0.8))
    assert "predicting the largest class alone scores at 80.0%" in advice and "train.class_weight: balanced" in advice
    advice = " ".join(_imbalance_advice(project(tmp_path, metric="balanced_accuracy", weight="balanced"), 0.8))
    assert "fine for unbalanced classes" in advice and "Training is balanced" in advice


def test_balanced_training_is_judged_against_a_constant_predictions_balanced_accuracy() -> None:
    """Plain training is judged by accuracy against the majority class's share of validation; balanced
    training by balanced accuracy against 1/C (what any constant prediction scores)."""
    from trainwise.checks.pipeline import ShortFit, check_beats_trivial_baseline
    from trainwise.engine import FitResult

    train, val = unbalanced_digits()
    data = digits_data()
    data.splits = {"train": train, "val": val}
    fit = ShortFit(FitResult([], 1, 0.5, {}, "completed"), {"val_accuracy": 0.1, "val_balanced_accuracy": 0.6})
    plain, balanced = setup(data=data), replace(setup(data=data), balanced=True)
    assert not check_beats_trivial_baseline(plain, fit).passed  # 10% accuracy is below the majority's share
    row = check_beats_trivial_baseline(balanced, fit)
    assert row.passed and row.value == pytest.approx(0.6 - 0.1) and "balanced accuracy" in row.meaning
