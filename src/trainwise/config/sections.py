"""The config sections other than the data source and the tuning space."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from trainwise.config.base import Section, resolve_path

TaskType = Literal["image_classification", "tabular_classification", "tabular_regression"]

# metric -> direction; the first listed per task family is its default.
CLASSIFICATION_METRICS = {"accuracy": "maximize", "balanced_accuracy": "maximize", "f1_macro": "maximize", "log_loss": "minimize"}
REGRESSION_METRICS = {"rmse": "minimize", "mae": "minimize", "r2": "maximize"}


# --- task ---------------------------------------------------------------------------------------


class TaskConfig(Section):
    type: TaskType
    target: str = Field("label", description="the column (tables) or field (images) holding what to predict")
    metric: str | None = Field(None, description="selection metric; default accuracy (classification), rmse (regression)")

    @model_validator(mode="after")
    def _metric_fits_task(self) -> TaskConfig:
        allowed = REGRESSION_METRICS if self.type == "tabular_regression" else CLASSIFICATION_METRICS
        if self.metric is None:
            self.metric = next(iter(allowed))
        elif self.metric not in allowed:
            raise ValueError(f"metric {self.metric!r} does not fit task {self.type!r}; choose one of {sorted(allowed)}")
        return self

    @property
    def is_classification(self) -> bool:
        return self.type != "tabular_regression"

    @property
    def is_image(self) -> bool:
        return self.type == "image_classification"

    @property
    def direction(self) -> str:
        assert self.metric is not None  # set by the validator
        return {**CLASSIFICATION_METRICS, **REGRESSION_METRICS}[self.metric]


# --- image, sample, split, augmentation ---------------------------------------------------------


class ImageConfig(Section):
    size: tuple[int, int] = Field((32, 32), description="height, width the network sees; one number means square")
    channels: Literal[1, 3] = 3

    @field_validator("size", mode="before")
    @classmethod
    def _square(cls, value: Any) -> Any:
        return (value, value) if isinstance(value, int) else value

    @field_validator("size")
    @classmethod
    def _positive(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) < 1:
            raise ValueError("image sides must be at least 1 pixel")
        return value


class SampleConfig(Section):
    size: int | None = Field(None, gt=0, description="items in the sample (stratified); default 500 unless fraction is given")
    fraction: float | None = Field(None, gt=0, le=1, description="share of the data in the sample, instead of size")
    seed: int = 0

    @model_validator(mode="after")
    def _one_of(self) -> SampleConfig:
        if self.size is not None and self.fraction is not None:
            raise ValueError("give sample.size or sample.fraction, not both (set the other to null)")
        if self.size is None and self.fraction is None:
            self.size = 500
        return self


class SplitConfig(Section):
    val: float = Field(0.15, gt=0, lt=1)
    test: float = Field(0.15, ge=0, lt=1, description="ignored when the source has its own labelled test set")
    seed: int = 0
    group_duplicates: bool = Field(True, description="exact and near duplicates never straddle splits")

    @model_validator(mode="after")
    def _room_for_train(self) -> SplitConfig:
        if self.val + self.test >= 0.9:
            raise ValueError(f"val + test = {self.val + self.test:g} leaves too little for training (keep it under 0.9)")
        return self


class AugmentConfig(Section):
    flip: bool = Field(False, description="random horizontal flip (off for digits and text)")
    crop_padding: int = Field(0, ge=0, description="random crop after padding by this many pixels")
    rotation: float = Field(0.0, ge=0, le=180, description="max degrees of random rotation")
    color_jitter: float = Field(0.0, ge=0, le=1, description="brightness/contrast/saturation jitter strength")
    erasing: float = Field(0.0, ge=0, le=1, description="probability of random erasing")


# --- model and training -------------------------------------------------------------------------

_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
_MODEL_REF = re.compile(
    rf"^(?:(?P<registered>{_IDENTIFIER})"
    rf"|torchvision:(?P<torchvision>{_IDENTIFIER})"
    rf"|(?P<file>[^:]+\.py):(?P<file_class>{_IDENTIFIER})"
    rf"|(?P<module>{_IDENTIFIER}(?:\.{_IDENTIFIER})*):(?P<module_class>{_IDENTIFIER}))$"
)


class ModelConfig(Section):
    name: str = Field(
        "simple_cnn",
        description="a registered architecture, 'torchvision:<name>', 'path/to/file.py:Class' or 'package.module:Class'",
    )
    params: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the architecture")
    init: str | None = Field(None, description="start weights: a .safetensors file or models:/<name>@<alias>")
    weights: str | None = Field(
        None,
        description="torchvision's pretrained weights for a torchvision: model, by name (DEFAULT, IMAGENET1K_V1, ...): the "
        "backbone starts from them, the output layer is new, and the inputs are normalised with the weights' mean and std",
    )
    weights_file: Path | None = Field(
        None,
        description="read model.weights from this file (a torchvision .pth state dict) instead of torch's hub cache "
        "($TORCH_HOME/hub/checkpoints); keyed by its content, not its place",
    )
    download_weights: bool = Field(
        True, description="download model.weights into torch's hub cache when they are not there (needs the internet)"
    )
    freeze_backbone_epochs: int = Field(0, ge=0, description="epochs that train only the output layer before the whole network")
    prior_bias_init: bool = Field(True, description="initialise the output bias to the class prior")

    @field_validator("name")
    @classmethod
    def _model_ref(cls, value: str, info: ValidationInfo) -> str:
        match = _MODEL_REF.match(value)
        if match is None:
            raise ValueError(
                f"{value!r} is not a model reference; use a registered name (simple_cnn), 'torchvision:resnet18', "
                "'path/to/file.py:ClassName' or 'package.module:ClassName'"
            )
        if match["file"]:
            path = resolve_path(Path(match["file"]), info)
            return f"{path}:{match['file_class']}"
        return value

    @field_validator("init")
    @classmethod
    def _init(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or value.startswith(("models:/", "runs:/")):
            return value
        path = resolve_path(Path(value), info)
        return str(path)

    @field_validator("weights_file")
    @classmethod
    def _weights_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        # Not required to exist here: a missing file is reported with where it comes from (models.pretrained).
        return resolve_path(value, info, must_exist=False)

    @model_validator(mode="after")
    def _weights_fit_the_model(self) -> ModelConfig:
        if self.weights is not None and not self.name.startswith("torchvision:"):
            raise ValueError(
                f"model.weights {self.weights!r} names torchvision's pretrained weights, but model.name {self.name!r} is not a "
                "torchvision model; use model.name: torchvision:<name> (e.g. torchvision:resnet18), or model.init for your own weights"
            )
        if self.weights_file is not None and self.weights is None:
            raise ValueError("model.weights_file is the file of model.weights: set model.weights too (e.g. DEFAULT or IMAGENET1K_V1)")
        return self


class TrainConfig(Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD (Nesterov) momentum")
    schedule: Literal["onecycle", "cosine", "step", "none"] = "onecycle"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    class_weight: Literal["none", "balanced"] = Field(
        "none", description="balanced: each class's loss weighted by n / (C x its training items), as scikit-learn's class_weight"
    )
    sampler: Literal["shuffle", "balanced"] = Field(
        "shuffle", description="balanced: each epoch draws its items with replacement, every class equally often"
    )
    grad_clip: float | None = Field(None, gt=0, description="clip the gradient norm to this value")
    early_stopping_patience: int | None = Field(5, ge=1, description="epochs without improvement before stopping")
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool | Literal["auto"] = "auto"
    compile: bool = Field(False, description="torch.compile (measured slower on CPU for small CNNs)")
    seed: int = 0


class ChecksConfig(Section):
    """Thresholds of the pipeline checks (step 4) and of the data checks they carry over."""

    init_loss_tolerance: float = Field(0.25, gt=0, description="|loss at init - ln C| / ln C allowed")
    input_std_tolerance: float = Field(0.5, gt=0, description="per-channel mean within this of 0, std within it of 1")
    overfit_batch_size: int = Field(16, ge=2)
    overfit_steps: int = Field(200, ge=1)
    overfit_loss_fraction: float = Field(0.1, gt=0, lt=1, description="final loss below this fraction of ln C")
    zero_input_margin: float = Field(0.1, ge=0, description="real inputs must beat zeroed inputs by this much accuracy")
    shuffle_chance_margin: float = Field(0.15, ge=0, description="shuffled labels may beat chance by at most this")
    baseline_margin: float = Field(0.1, ge=0, description="must beat the trivial baseline by this much")
    min_loss_decrease: float = Field(0.2, ge=0, lt=1, description="relative training loss decrease over the sample run")
    sample_epochs: int = Field(
        15, ge=2, description="epochs of the check step's short runs on the sample (its own budget: the sample is small)"
    )
    output_bias_tolerance: float = Field(0.01, ge=0, description="largest |softmax(output bias) - class prior| allowed")
    budget_seconds: float | None = Field(
        100.0,
        gt=0,
        description="seconds the training checks may take on this machine: overfit_steps, sample_epochs, the short fits' items "
        "and the range test shrink together (never below floors that keep them meaningful) when a measured training step "
        "says the configured ones would take longer; null runs them as configured",
    )
    lr_range_steps: int = Field(100, ge=5)
    lr_range_low: float = Field(1e-6, gt=0, description="first learning rate of the range test's exponential sweep")
    lr_range_high: float = Field(1.0, gt=0, description="last learning rate of the range test's sweep")
    lr_valley_ratio: float = Field(
        0.9, gt=0, lt=1, description="the smoothed loss's minimum must fall below this share of its start (a valley)"
    )
    lr_max_ratio: float = Field(30.0, gt=0, description="train.lr may be at most this times the range test's suggested rate")
    lr_min_ratio: float = Field(0.01, gt=0, description="and at least this times it (not for pretrained weights)")
    max_augmentation_drop: float = Field(
        0.3, ge=0, le=1, description="validation accuracy augmentation may cost (plain-trained on plain vs augmented-trained on augmented)"
    )
    max_unseen_augmentation_drop: float = Field(
        0.5, ge=0, le=1, description="and what a plain-trained model may lose on augmented images (both over: the row fails)"
    )
    max_label_distance: float = Field(0.1, ge=0, le=1, description="total variation, sample vs full labels")
    max_property_drift: float = Field(0.2, ge=0, le=1, description="KS statistic, sample vs full image properties")
    max_leaked_duplicates: int = Field(0, ge=0, description="duplicates allowed across splits")
    max_near_copies_of_test: float = Field(
        0.01, ge=0, le=1, description="share of the provided test images (or validation folder's) with a near copy among the labelled (training) items"
    )
    max_label_issue_share: float = Field(
        0.25, ge=0, le=1, description="estimated share of mislabelled items in the sample (confident learning)"
    )
    max_class_label_issue_share: float = Field(
        0.45, ge=0, le=1, description="share of one class's items that may look like one other class"
    )
    min_class_items: int = Field(
        5, ge=1, description="items each class needs in the full data's training split"
    )
    max_test_drift: float = Field(
        0.2, ge=0, le=1, description="KS statistic allowed per property (images) or feature (tables), training split vs provided test set"
    )
    max_domain_auc: float = Field(
        0.75, ge=0.5, le=1, description="ROC AUC allowed to a classifier telling training items from provided test items"
    )
    max_property_label_auc: float = Field(
        0.97, ge=0.5, le=1, description="one-vs-rest AUC allowed to one image property picking out a class (a shortcut)"
    )
    learning_curve_fractions: list[float] = Field(
        [0.1, 0.25, 0.5], description="training-set shares trained after the full run for the learning curve; [] to skip"
    )
    learning_curve_budget: float = Field(
        0.25, ge=0,
        description="the learning-curve refits' compute (items x epochs) as a share of the main training's at most; "
        "a share that could exceed it running all train.epochs is left out, and all are when fewer than two fit",
    )  # fmt: skip

    @field_validator("learning_curve_fractions")
    @classmethod
    def _fractions(cls, value: list[float]) -> list[float]:
        if any(not 0 < f < 1 for f in value):
            raise ValueError("learning-curve fractions must lie strictly between 0 and 1")
        return sorted(value)

    @model_validator(mode="after")
    def _sweep(self) -> ChecksConfig:
        if self.lr_range_low >= self.lr_range_high:
            raise ValueError(f"lr_range_low ({self.lr_range_low:g}) must be below lr_range_high ({self.lr_range_high:g})")
        return self


# --- registry and submission --------------------------------------------------------------------


class RegistryConfig(Section):
    model_name: str | None = Field(None, description="registered model name; default trainwise-<project>")
    promotion_margin: float = Field(0.0, ge=0, description="the challenger must beat the champion by at least this")


class SubmissionConfig(Section):
    id_column: str = "id"
    target_column: str = "label"
    format: Literal["label", "index", "probabilities"] = "label"
    sample_submission: Path | None = Field(None, description="a sample submission whose ids and header must be matched")
    tta: Literal["none", "flip"] = Field("none", description="flip: each test image's prediction averaged with its mirror's")

    @field_validator("sample_submission")
    @classmethod
    def _exists(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return resolve_path(value, info)
