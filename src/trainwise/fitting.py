"""From a project config and prepared data to a model and engine settings: one place for check, train and tune."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainwise.callbacks import FreezeBackbone
from trainwise.config import ProjectConfig
from trainwise.data.loading import PreparedData, image_transforms
from trainwise.engine import Callback, EngineConfig, Trainer
from trainwise.metrics import CLASSIFICATION
from trainwise.progress import ProgressCallback


def build_model(cfg: ProjectConfig, data: PreparedData, *, seed: int | None = None, init_weights: Path | None = None) -> nn.Module:
    """A fresh model seeded from train.seed (or `seed`), its output bias set to the class prior when asked."""
    from trainwise.models import create_model, init_output_bias, load_initial_weights

    torch.manual_seed(cfg.train.seed if seed is None else seed)
    model = create_model(cfg.model.name, input_shape=data.input_shape, num_outputs=data.num_outputs, params=cfg.model.params)
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
    """What serving needs to rebuild the network and repeat the preprocessing on raw inputs."""
    return {
        "model": cfg.model.name,
        "input_shape": list(data.input_shape),
        "num_outputs": data.num_outputs,
        "params": dict(cfg.model.params),
        "task": data.task,
        "classes": data.classes,
        "preprocessing": data.preprocessing,
    }
