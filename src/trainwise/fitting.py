"""From a project config and prepared data to a model and engine settings: one place for check, train and tune."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from trainwise.callbacks import FreezeBackbone
from trainwise.config import ProjectConfig
from trainwise.data.loading import PreparedData, image_transforms
from trainwise.engine import Callback, EngineConfig, Trainer
from trainwise.metrics import CLASSIFICATION
from trainwise.progress import ProgressCallback

if TYPE_CHECKING:
    from trainwise.models.pretrained import PretrainedWeights

log = logging.getLogger(__name__)


def pretrained_weights(cfg: ProjectConfig, *, fetch: bool = True) -> PretrainedWeights | None:
    """model.weights resolved to torchvision's weight set and its file; `fetch`: downloaded first when missing
    (model.download_weights), or a ConfigError naming the file to place and where."""
    if cfg.model.weights is None:
        return None
    from trainwise.models import pretrained

    weights = pretrained.resolve_weights(cfg.model.name, cfg.model.weights, cfg.model.weights_file)
    if fetch:
        pretrained.fetch(weights, download=cfg.model.download_weights)
    return weights


def build_model(cfg: ProjectConfig, data: PreparedData, *, seed: int | None = None, init_weights: Path | None = None) -> nn.Module:
    """A fresh model seeded from train.seed (or `seed`), from model.weights when given, its output bias
    set to the class prior when asked; `init_weights` (model.init) are loaded over it."""
    from trainwise.models import create_model, init_output_bias, load_initial_weights

    torch.manual_seed(cfg.train.seed if seed is None else seed)
    model = create_model(
        cfg.model.name, input_shape=data.input_shape, num_outputs=data.num_outputs, params=cfg.model.params, pretrained=pretrained_weights(cfg)
    )
    if init_weights is not None:
        load_initial_weights(model, init_weights)
    elif cfg.model.prior_bias_init:
        # Classification: logits start at log(prior), so the loss at init is the prior's entropy.
        # Regression: targets are standardised, so a zero bias already predicts the mean.
        init_output_bias(model, training_prior(cfg, data) if data.task == CLASSIFICATION else 0.0)
    return model


def balanced_training(cfg: ProjectConfig) -> bool:
    """Does the training loss see every class alike (class-weighted loss or a balanced sampler)?"""
    return cfg.train.class_weight == "balanced" or cfg.train.sampler == "balanced"


def training_prior(cfg: ProjectConfig, data: PreparedData) -> list[float]:
    """The class shares the training loss sees: the training split's, or uniform when training is balanced.

    The output bias starts here (the constant prediction that minimises that loss), and the check of
    the loss at init expects this prior's entropy.
    """
    prior = data.prior()
    if not balanced_training(cfg):
        return prior
    present = sum(1 for share in prior if share > 0)
    return [1.0 / present if share > 0 else 0.0 for share in prior]


def class_weights(cfg: ProjectConfig, data: PreparedData) -> tuple[float, ...] | None:
    """scikit-learn's "balanced" weights from the training split (n / (C x count)); a class absent from it gets 0."""
    if cfg.train.class_weight != "balanced" or data.task != CLASSIFICATION:
        return None
    from sklearn.utils.class_weight import compute_class_weight

    y = data.splits["train"].y.numpy()
    present = np.unique(y)
    weights = np.zeros(data.num_outputs)
    weights[present] = compute_class_weight("balanced", classes=present, y=y)
    return tuple(float(w) for w in weights)


def engine_config(cfg: ProjectConfig, data: PreparedData, *, epochs: int | None = None, early_stopping: bool = True) -> EngineConfig:
    train = cfg.train
    assert cfg.task.metric is not None
    return EngineConfig(
        task=data.task,
        num_outputs=data.num_outputs,
        epochs=epochs or train.epochs,
        batch_size=train.batch_size,
        optimizer=train.optimizer,
        lr=train.lr,
        weight_decay=train.weight_decay,
        momentum=train.momentum,
        schedule=train.schedule,
        label_smoothing=train.label_smoothing if data.task == CLASSIFICATION else 0.0,
        class_weights=class_weights(cfg, data),
        balanced_sampling=train.sampler == "balanced" and data.task == CLASSIFICATION,
        grad_clip=train.grad_clip,
        early_stopping_patience=train.early_stopping_patience if early_stopping else None,
        device=train.device,
        precision=train.precision,
        channels_last=train.channels_last,
        compile=train.compile,
        seed=train.seed,
        metric=cfg.task.metric,
        direction=cfg.task.direction,
        target_scale=data.target_scale,
    )


def make_trainer(
    cfg: ProjectConfig,
    data: PreparedData,
    *,
    init_weights: Path | None,
    callbacks: list[Callback],
    epochs: int | None = None,
    progress: str | None = None,
) -> Trainer:
    """The trainer check, train and tune all use: model, engine settings, batch transforms, callbacks;
    `progress`: the name of its progress bars and log lines (none when None)."""
    train_transform, eval_transform = image_transforms(cfg, data) if data.is_image else (None, None)
    if cfg.model.freeze_backbone_epochs:
        callbacks = [*callbacks, FreezeBackbone(cfg.model.freeze_backbone_epochs)]
    if progress is not None:
        callbacks = [*callbacks, ProgressCallback(progress)]
    return Trainer(
        build_model(cfg, data, init_weights=init_weights),
        engine_config(cfg, data, epochs=epochs),
        train_transform=train_transform,
        eval_transform=eval_transform,
        callbacks=callbacks,
    )


def model_spec(cfg: ProjectConfig, data: PreparedData) -> dict[str, Any]:
    """What serving needs to rebuild the network and repeat the preprocessing on raw inputs.

    `data` comes through `with_model_preprocessing`, so a pretrained model's spec holds the weights'
    normalisation, the one its training and evaluation used; `pretrained` records where it started.
    """
    spec = {
        "model": cfg.model.name,
        "input_shape": list(data.input_shape),
        "num_outputs": data.num_outputs,
        "params": dict(cfg.model.params),
        "task": data.task,
        "classes": data.classes,
        "preprocessing": data.preprocessing,
    }
    weights = pretrained_weights(cfg, fetch=False)
    if weights is not None:
        from trainwise.data.content import sha256_file

        spec["pretrained"] = {"weights": weights.name, "sha256": sha256_file(weights.file), "notes": pretrained_notes(cfg, data)}
    return spec


def with_model_preprocessing(cfg: ProjectConfig, data: PreparedData) -> PreparedData:
    """`data` with the input normalisation the model needs: the weights' own for model.weights, else prepare's.

    The one place the swap happens: the batch transforms of training and evaluation, the checks and
    the served model's spec all read `data.preprocessing`. The dataset's statistics stay beside them
    (`data_mean`, `data_std`), for the input check's expectation.
    """
    weights = pretrained_weights(cfg, fetch=False)
    if weights is None or not data.is_image or "stats_from" in data.preprocessing:
        return data
    from trainwise.models.pretrained import input_normalisation

    for note in pretrained_notes(cfg, data)[1:]:
        log.warning("%s: %s", cfg.name, note)
    mean, std = input_normalisation(weights, data.input_shape[0])
    prep = data.preprocessing
    normalised = {**prep, "mean": mean, "std": std, "stats_from": weights.name, "data_mean": prep["mean"], "data_std": prep["std"]}
    return replace(data, preprocessing=normalised)


def pretrained_notes(cfg: ProjectConfig, data: PreparedData) -> list[str]:
    """What fitting model.weights to this project's inputs changed, one sentence each (empty without weights)."""
    weights = pretrained_weights(cfg, fetch=False)
    if weights is None:
        return []
    from trainwise.models.external import small_input_stem
    from trainwise.models.pretrained import adaptation_notes

    return adaptation_notes(weights, data.input_shape, small_stem=small_input_stem(cfg.model.name, data.input_shape))
