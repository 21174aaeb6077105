"""A classical baseline to beat, fitted in seconds on the same splits as the network (Karpathy's recipe starts here).

Classification: scikit-learn's LogisticRegression on standardised inputs; regression: RidgeCV. The
inputs are the prepared features (tables) or the images averaged down to 8x8 pixels per channel.
Scored with the same metric functions as the network (trainwise.metrics, and scikit-learn's
log_loss), on validation and test, so the two compare number for number.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import log_loss
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from trainwise.data.loading import PreparedData
from trainwise.engine import TensorData
from trainwise.metrics import CLASSIFICATION, classification_metrics, regression_metrics

PIXELS = 8  # images are averaged down to PIXELS x PIXELS per channel
MAX_TRAIN_ITEMS = 10_000  # a baseline in seconds: a random subset of a larger training split
CHUNK = 1024  # images pooled at a time


@dataclass
class Baseline:
    name: str  # what was fitted, on what
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # split -> metric -> value
    train_items: int = 0


def features(split: TensorData, *, image: bool, index: np.ndarray | None = None) -> np.ndarray:
    """Rows of numbers for the items `index` (default all): the prepared table as is, or each image
    averaged down to PIXELS x PIXELS per channel, in 0..1. Images are pooled CHUNK at a time, so a
    split of large photos never exists as floats whole."""
    x = split.x if index is None else split.x[torch.from_numpy(index)]
    # float64: scikit-learn keeps float32 inputs in float32, and probabilities that then sum to 1 only
    # within 1e-7 make its log_loss warn
    if not image:
        return x.cpu().double().numpy()
    side = min(PIXELS, x.shape[-1])
    chunks = [
        torch.nn.functional.adaptive_avg_pool2d(x[start : start + CHUNK].cpu().float() / 255.0, side).flatten(1).double()
        for start in range(0, len(x), CHUNK)
    ]
    return torch.cat(chunks).numpy() if chunks else np.empty((0, x.shape[1] * side * side))


def fit_baseline(data: PreparedData, *, seed: int = 0) -> Baseline:
    """Fit on the training split (at most MAX_TRAIN_ITEMS of it) and score every other labelled split."""
    image = data.is_image
    train = data.splits["train"]
    chosen = None
    if len(train) > MAX_TRAIN_ITEMS:  # chosen before any feature is computed: memory stays bounded
        chosen = np.sort(np.random.default_rng(seed).choice(len(train), MAX_TRAIN_ITEMS, replace=False))
    x = features(train, image=image, index=chosen)
    y = train.y.cpu().numpy() if chosen is None else train.y.cpu().numpy()[chosen]
    inputs = f"{PIXELS}x{PIXELS} pixels per channel" if image else "the prepared features"
    if data.task == CLASSIFICATION:
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        name = f"logistic regression on {inputs}"
    else:
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
        name = f"ridge regression on {inputs}"
    model.fit(x, y)
    result = Baseline(name, train_items=len(y))
    for split_name in ("val", "test"):
        split = data.splits.get(split_name)
        if split is None or not len(split):
            continue
        result.metrics[split_name] = _score(model, features(split, image=image), split.y.cpu().numpy(), data)
    return result


def _score(model: object, x: np.ndarray, y: np.ndarray, data: PreparedData) -> dict[str, float]:
    if data.task == CLASSIFICATION:
        probabilities = np.zeros((len(y), data.num_outputs))
        probabilities[:, model.classes_] = model.predict_proba(x)  # type: ignore[attr-defined]  # classes absent from training: 0
        scores = classification_metrics(y, probabilities.argmax(axis=1))
        scores["log_loss"] = float(log_loss(y, probabilities, labels=list(range(data.num_outputs))))
        return scores
    mean, std = data.target_scale  # targets are kept standardised; metrics in their units, as the network's
    return regression_metrics(y * std + mean, model.predict(x) * std + mean)  # type: ignore[attr-defined]


def comparison(network: float, baseline: float, metric: str, *, maximize: bool) -> str:
    """'beats the baseline by 0.031 accuracy (0.975 vs 0.944)', or 'falls short of ...', in the metric's direction."""
    gain = network - baseline if maximize else baseline - network
    if gain == 0:
        return f"ties with the baseline on {metric} ({network:.4g} vs {baseline:.4g})"
    verb = "beats" if gain > 0 else "falls short of"
    return f"{verb} the baseline by {abs(gain):.4g} {metric} ({network:.4g} vs {baseline:.4g})"


def logged_metrics(result: Baseline) -> dict[str, float]:
    """`baseline_<split>_<metric>` for MLflow, beside the network's `<split>_<metric>`."""
    return {f"baseline_{split}_{name}": value for split, scores in result.metrics.items() for name, value in scores.items()}


def against_network(result: Baseline, finals: dict[str, float], metric: str, *, maximize: bool) -> str:
    """One sentence for reports: how the network's test (else validation) score compares with the baseline's."""
    for split, prefix in (("test", "test"), ("val", "best_val")):
        network, base = finals.get(f"{prefix}_{metric}"), result.metrics.get(split, {}).get(metric)
        if network is not None and base is not None:
            return f"On {split}, the network {comparison(network, base, metric, maximize=maximize)}, {result.name}."
    return f"No labelled split to compare the network with the baseline ({result.name}) on."
