"""The registered model: preprocessing, network and label map in one MLflow pyfunc, so raw inputs predict.

What travels with the model (DESIGN.md: "preprocessing travels with it"):
- `weights`: the network's state dict as a .safetensors file (no pickled module; loading it runs no code);
- `spec`: a JSON file saying how to rebuild the network (`create_model` reference, input shape,
  outputs, params), the task, the class names in index order, and the preprocessing of one scope
  (image: size, channels, mean, std; table: the fitted TablePreprocessor plus the target's scale);
- the trainwise package itself (`code_paths`), so `mlflow.pyfunc.load_model` and
  `mlflow models serve --env-manager local` work in a process where trainwise is not installed.

Inputs, as a pandas DataFrame:
- images: a column `image` holding file paths, image bytes, or base64 strings of image bytes
  (JSON requests to a served model cannot carry raw bytes);
- tables: the raw columns the model was trained on (extra columns are ignored; missing values and
  unseen categories are handled as in training).

Outputs: classification: `label` (class name), `index`, and `prob_<class>` per class;
regression: `prediction` in the target's units.
"""

from __future__ import annotations

import base64
import binascii
import importlib.util
import json
import math
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, infer_signature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel, PythonModelContext
from safetensors.torch import load_file
from torch import nn

import trainwise
from trainwise.data.images import Decoded, ImageProblem, decode
from trainwise.data.table_prep import TablePreprocessor
from trainwise.data.transforms import normalize
from trainwise.models import create_model, save_weights

__all__ = ["CLASSIFICATION", "IMAGE_COLUMN", "REGRESSION", "InputError", "TrainwiseModel", "log_model", "pip_requirements"]

CLASSIFICATION, REGRESSION = "classification", "regression"
IMAGE_COLUMN = "image"
WEIGHTS_ARTIFACT, SPEC_ARTIFACT, USER_CODE_ARTIFACT = "weights", "spec", "user_model_code"
PROB_PREFIX = "prob_"

# Pillow rejects images above ~89.5 million pixels as decompression bombs (decode escalates its
# warning to an error), so a larger limit here would never be reached; anything a camera takes fits.
MAX_PIXELS = 89_478_485
# Rows per forward pass: bounds memory for large requests (decoded uint8 images plus activations).
BATCH_SIZE = 256

# What the model needs at prediction time, pinned to the versions it was logged with (pyproject's
# runtime dependencies that the serving path imports, directly or through trainwise's modules).
RUNTIME_PACKAGES = (
    "torch",
    "torchvision",
    "mlflow",
    "pandas",
    "numpy",
    "pillow",
    "opencv-python-headless",
    "safetensors",
    "pyyaml",
    "pydantic",
    "scikit-learn",
)
ENTRY_FILE = "trainwise_model.py"
_ENTRY_CODE = (
    '"""The pyfunc entry point MLflow runs when it loads this model (models from code: nothing pickled)."""\n'
    "import mlflow\n\n"
    "from trainwise.serving import TrainwiseModel\n\n"
    "mlflow.models.set_model(TrainwiseModel())\n"
)
TTA_PARAM = "tta"  # pyfunc predict param: "none", or "flip" (images: the mean over the image and its mirror)
TTA_MODES = ("none", "flip")
_SPEC_KEYS = ("model", "input_shape", "num_outputs", "params", "task", "classes", "preprocessing")


class InputError(MlflowException, ValueError):
    """An input the model cannot predict from, with the row and the reason.

    A ValueError to Python callers. An MlflowException with INVALID_PARAMETER_VALUE so that
    `mlflow models serve` answers HTTP 400 with this message; any other exception becomes an opaque
    "unexpected error while evaluating the model" (the message only in the response's stack trace).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


class TrainwiseModel(PythonModel):
    """The pyfunc wrapper, created empty by the logged entry file; `load_context` builds everything from artifacts."""

    def load_context(self, context: PythonModelContext) -> None:
        spec = json.loads(Path(context.artifacts[SPEC_ARTIFACT]).read_text())
        if USER_CODE_ARTIFACT in context.artifacts:  # a user's model file: the copy that travelled with the model
            spec["model"] = f"{context.artifacts[USER_CODE_ARTIFACT]}:{spec['model'].rpartition(':')[2]}"
        self._predictor = Predictor.from_files(spec, Path(context.artifacts[WEIGHTS_ARTIFACT]))

    def predict(
        self, context: PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        return self._predictor.predict(model_input, tta=str((params or {}).get(TTA_PARAM, "none")))


class Predictor:
    """A network in eval mode plus the spec's preprocessing and label map: raw DataFrame in, predictions out."""

    def __init__(self, network: nn.Module, spec: Mapping[str, Any]) -> None:
        self.spec = check_spec(spec)
        # CUDA when this machine has it (a serving box with a GPU), else the CPU.
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.network = network.to(self.device).eval()
        preprocessing = dict(self.spec["preprocessing"])
        self.kind = preprocessing.pop("kind")
        if self.kind == "table":
            self.target_mean = float(preprocessing.pop("target_mean", None) or 0.0)
            self.target_std = float(preprocessing.pop("target_std", None) or 1.0)
            self.table = TablePreprocessor.from_dict(preprocessing)
        else:
            self.target_mean, self.target_std = 0.0, 1.0

    @classmethod
    def from_files(cls, spec: Mapping[str, Any], weights: Path) -> Predictor:
        """Rebuild the network from the spec and load its weights strictly (every tensor, right shapes)."""
        spec = check_spec(spec)
        network = create_model(
            spec["model"], input_shape=tuple(spec["input_shape"]), num_outputs=spec["num_outputs"], params=spec["params"]
        )
        network.load_state_dict(load_file(weights, device="cpu"), strict=True)
        return cls(network, spec)

    @property
    def classes(self) -> list[str]:
        return self.spec["classes"]

    def predict(self, frame: pd.DataFrame, *, tta: str = "none") -> pd.DataFrame:
        """Predictions for every row; `tta="flip"` averages each image with its mirror image (test-time augmentation)."""
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"the model predicts from a pandas DataFrame, not {type(frame).__name__}")
        if tta not in TTA_MODES:
            raise InputError(f"tta {tta!r}: expected one of {', '.join(TTA_MODES)}")
        if tta == "flip" and self.kind == "table":
            raise InputError("tta 'flip' mirrors images; this model predicts from table rows")
        forward = self._forward_flipped if tta == "flip" else self._forward
        outputs = [forward(batch) for batch in self._batches(frame)]
        width = self.spec["num_outputs"]
        raw = torch.cat(outputs) if outputs else torch.empty(0, width)
        return self._output(raw, frame.index)

    def _batches(self, frame: pd.DataFrame) -> Iterator[torch.Tensor]:
        """Model-ready float tensors, BATCH_SIZE rows at a time."""
        if self.kind == "table":
            features = self.table.transform(frame)
            for start in range(0, len(features), BATCH_SIZE):
                yield torch.from_numpy(features[start : start + BATCH_SIZE])
            return
        if IMAGE_COLUMN not in frame.columns:
            raise InputError(
                f"image models predict from a column named {IMAGE_COLUMN!r} (file paths, bytes or base64 strings); "
                f"the input has columns {list(frame.columns)}"
            )
        prep = self.spec["preprocessing"]
        size = (int(prep["size"][0]), int(prep["size"][1]))
        column = frame[IMAGE_COLUMN]
        for start in range(0, len(column), BATCH_SIZE):
            chunk = column.iloc[start : start + BATCH_SIZE]
            # Decoded as the decoded cache was (reduced for small inputs): the network sees what it trained on.
            images = [_decode(value, label, channels=int(prep["channels"]), size=size).resized(size) for label, value in chunk.items()]
            batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
            yield normalize(batch.float() / 255.0, prep["mean"], prep["std"])

    @torch.inference_mode()
    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.network(batch.to(self.device)).float().cpu()

    @torch.inference_mode()
    def _forward_flipped(self, batch: torch.Tensor) -> torch.Tensor:
        """The mean over the image and its horizontal mirror: of the probabilities (as log-probabilities, so
        `_output`'s softmax returns that mean), or of the predicted values for regression."""
        both = [self._forward(batch), self._forward(batch.flip(-1))]
        if self.spec["task"] == REGRESSION:
            return (both[0] + both[1]) / 2
        return torch.stack([torch.log_softmax(o.double(), dim=1) for o in both]).exp().mean(0).log().float()

    def _output(self, raw: torch.Tensor, index: pd.Index) -> pd.DataFrame:
        if self.spec["task"] == REGRESSION:
            values = raw[:, 0].double().numpy() * self.target_std + self.target_mean
            return pd.DataFrame({"prediction": values}, index=index)
        probabilities = torch.softmax(raw.double(), dim=1).numpy()
        best = probabilities.argmax(axis=1).astype(np.int64)
        out = pd.DataFrame({"label": [self.classes[i] for i in best], "index": best}, index=index)
        for position, name in enumerate(self.classes):
            out[f"{PROB_PREFIX}{name}"] = probabilities[:, position]
        return out


def _decode(value: Any, label: Any, *, channels: int, size: tuple[int, int] | None = None) -> Decoded:
    """One `image` cell (path, bytes or base64 text) -> its decode (reduced for `size`), or an InputError naming the row."""
    name = f"row {label}"
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
    elif isinstance(value, os.PathLike) or (isinstance(value, str) and os.path.isfile(value)):
        name = f"row {label} ({os.fspath(value)})"
        try:
            data = Path(value).read_bytes()
        except OSError as exc:
            raise InputError(f"{name}: cannot read the file: {exc.strerror or exc}") from None
    elif isinstance(value, str):
        data = _from_base64(value, name)
    else:
        missing = value is None or (isinstance(value, float) and math.isnan(value))
        what = "no image (missing value)" if missing else f"a {type(value).__name__}, not a path, bytes or base64 string"
        raise InputError(f"{name} of column {IMAGE_COLUMN!r} holds {what}")
    try:
        return decode(data, channels=channels, max_pixels=MAX_PIXELS, name=name, size=size)
    except ImageProblem as problem:
        raise InputError(f"{problem.detail} [{problem.reason}]") from None


def _from_base64(text: str, name: str) -> bytes:
    body = text.strip()
    if body.startswith("data:") and ";base64," in body[:100]:  # a data URL, as browsers write them
        body = body.split(",", 1)[1]
    try:
        # MLflow and `base64 -w 76` wrap lines; the newlines are not part of the data.
        return base64.b64decode("".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise InputError(f"{name}: {shown!r} is neither an existing file nor base64-encoded image data") from None


def check_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec with its types normalised, or a ValueError naming the key that is wrong."""
    missing = [key for key in _SPEC_KEYS if key not in spec]
    if missing:
        raise ValueError(f"model spec lacks {', '.join(missing)} (needs {', '.join(_SPEC_KEYS)})")
    out = dict(spec)
    out["input_shape"] = [int(side) for side in spec["input_shape"]]
    out["num_outputs"] = int(spec["num_outputs"])
    out["params"] = dict(spec["params"] or {})
    out["classes"] = [str(name) for name in spec["classes"] or []]
    if spec["task"] not in (CLASSIFICATION, REGRESSION):
        raise ValueError(f"model spec task must be {CLASSIFICATION!r} or {REGRESSION!r}, not {spec['task']!r}")
    if spec["task"] == CLASSIFICATION and len(out["classes"]) != out["num_outputs"]:
        raise ValueError(f"model spec has {len(out['classes'])} classes but num_outputs {out['num_outputs']}")
    if spec["task"] == REGRESSION and out["num_outputs"] != 1:
        raise ValueError(f"a regression model has one output, not num_outputs {out['num_outputs']}")
    kind = spec["preprocessing"].get("kind")
    if kind == "image":
        absent = [key for key in ("size", "channels", "mean", "std") if key not in spec["preprocessing"]]
        if absent:
            raise ValueError(f"model spec's image preprocessing lacks {', '.join(absent)}")
        prep = spec["preprocessing"]
        if out["input_shape"] != [int(prep["channels"]), *(int(side) for side in prep["size"])]:
            raise ValueError(
                f"model spec input_shape {out['input_shape']} does not match its preprocessing "
                f"(channels {prep['channels']}, size {prep['size']})"
            )
    elif kind != "table":
        raise ValueError(f"model spec preprocessing kind must be 'image' or 'table', not {kind!r}")
    return out


def pip_requirements() -> list[str]:
    """The runtime packages pinned to the versions installed here (local labels such as +cpu dropped)."""
    pins = []
    for package in RUNTIME_PACKAGES:
        try:
            pins.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            pins.append(package)
    return pins


def log_model(
    run_id: str, *, tracking_uri: str, model: nn.Module, spec: Mapping[str, Any], input_example: pd.DataFrame, name: str = "model"
) -> str:
    """Log `model` with its spec as a pyfunc model of run `run_id` on `tracking_uri`; returns its URI, `models:/<model_id>`.

    The same model is also reachable as `runs:/<run_id>/<name>`, and shows in the run's experiment
    (Models tab) with the run's params.

    Before anything is logged, the network is rebuilt from the spec and the saved weights (as
    `load_model` will do) and predicts on `input_example`; that output and the example make the
    signature, so a spec that cannot rebuild the network fails here, not at serving time. The
    example is made portable first: image paths and bytes become base64 strings (a path means
    nothing on another machine); table rows keep only the model's feature columns, numbers as
    floats, so the signature accepts missing values and does not ask for the target.
    """
    from trainwise.tracking.runs import use_tracking_uri  # here, not above: a served model never needs the tracking code

    spec = check_spec({**spec, "trainwise_version": spec.get("trainwise_version", trainwise.__version__)})
    example = portable_example(spec, input_example)
    client = mlflow.MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    with tempfile.TemporaryDirectory(prefix="trainwise-model-") as tmp:
        weights, spec_file, entry = Path(tmp) / "model.safetensors", Path(tmp) / "spec.json", Path(tmp) / ENTRY_FILE
        save_weights(model, weights)
        spec_file.write_text(json.dumps(spec, indent=2, sort_keys=True))
        entry.write_text(_ENTRY_CODE)
        output = Predictor.from_files(spec, weights).predict(example)
        artifacts, code_paths = _user_code(spec["model"])
        # Created here rather than by Model.log: given a run id but no fluent active run, MLflow
        # 3.17 files the model under the default experiment ("0"), where neither the project's
        # Models tab nor `runs:/<run_id>/<name>` (which searches the run's experiment) finds it.
        logged = client.create_logged_model(
            run.info.experiment_id, name=name, source_run_id=run_id, params=dict(run.data.params) or None
        )
        # Model.log marks the logged model READY, or FAILED if it raises. It takes no tracking URI
        # or client (MLflow 3.17) and logs to the global one, so that is pinned to ours meanwhile.
        with use_tracking_uri(tracking_uri):
            mlflow.models.Model.log(
                artifact_path=None,  # deprecated in MLflow 3 in favour of `name`, but still a required argument
                name=name,
                flavor=mlflow.pyfunc,
                run_id=run_id,  # explicit: the fluent API's start_run would end (or replace) our run
                model_id=logged.model_id,
                # Models from code: MLflow stores this file and runs it at load time, so nothing is
                # pickled (a PythonModel instance would be cloudpickled, and MLflow warns about that).
                python_model=str(entry),
                artifacts={WEIGHTS_ARTIFACT: str(weights), SPEC_ARTIFACT: str(spec_file), **artifacts},
                signature=_signature(example, output),
                input_example=example,
                pip_requirements=pip_requirements(),
                # The package directory, copied as code/trainwise and put first on sys.path at load time.
                code_paths=[str(Path(trainwise.__file__).parent), *code_paths],
            )
    return f"models:/{logged.model_id}"


def _user_code(model_ref: str) -> tuple[dict[str, str], list[str]]:
    """What a user's own nn.Module needs to travel with the model: (artifacts, code_paths).

    `path/to/file.py:Class`: the file, as an artifact (load_context points the spec at the copy).
    `package.module:Class`: the top-level package when it lives in a source tree rather than in
    site-packages (an installed package is the serving environment's to install, like torch).
    """
    location, colon, _ = model_ref.rpartition(":")
    if not colon or model_ref.startswith("torchvision:"):
        return {}, []
    if location.endswith(".py"):
        return {USER_CODE_ARTIFACT: str(Path(location).resolve())}, []
    top = importlib.util.find_spec(location.split(".")[0])
    origin = Path(top.origin) if top is not None and top.origin else None
    if origin is None or "site-packages" in origin.parts or "dist-packages" in origin.parts:
        return {}, []
    return {}, [str(origin.parent if origin.name == "__init__.py" else origin)]


def _signature(example: pd.DataFrame, output: pd.DataFrame) -> ModelSignature:
    with warnings.catch_warnings():
        # MLflow hints that integer columns cannot hold missing values; here the only one is the
        # output's `index`, which MLflow never enforces. Inputs have no integer columns (see above).
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column", category=UserWarning)
        # The `tta` param in the signature: MLflow drops (with a warning) any param a signature lacks.
        return infer_signature(example, output, params={TTA_PARAM: "none"})


def supports_tta(model: Any) -> bool:
    """Does a loaded pyfunc model take the `tta` param (models logged before it existed ignore it)?"""
    signature = getattr(model.metadata, "signature", None)
    params = getattr(signature, "params", None)
    return params is not None and TTA_PARAM in {p.name for p in params.params}


def portable_example(spec: Mapping[str, Any], frame: pd.DataFrame) -> pd.DataFrame:
    """The input example as it can be stored and sent as JSON (see `log_model`)."""
    if not isinstance(frame, pd.DataFrame) or frame.empty:
        raise ValueError("input_example must be a non-empty pandas DataFrame of raw inputs")
    prep = spec["preprocessing"]
    if prep["kind"] == "image":
        if IMAGE_COLUMN not in frame.columns:
            raise ValueError(f"an image model's input_example needs a column {IMAGE_COLUMN!r}; it has {list(frame.columns)}")
        encoded = []
        for label, value in frame[IMAGE_COLUMN].items():
            _decode(value, label, channels=int(prep["channels"]))  # a bad example fails here, naming its row
            data = bytes(value) if isinstance(value, bytes | bytearray | memoryview) else None
            if data is None and (isinstance(value, os.PathLike) or os.path.isfile(value)):
                data = Path(value).read_bytes()
            encoded.append(base64.b64encode(data).decode("ascii") if data is not None else "".join(str(value).split()))
        return pd.DataFrame({IMAGE_COLUMN: encoded})
    numeric, categorical = list(prep["numeric"]), list(prep["categorical"])
    missing = [c for c in numeric + categorical if c not in frame.columns]
    if missing:
        raise ValueError(f"input_example lacks the feature columns {', '.join(missing)}")
    out = frame[numeric + categorical].reset_index(drop=True)
    out[numeric] = out[numeric].apply(pd.to_numeric, errors="coerce").astype("float64")
    out[categorical] = out[categorical].astype(object)
    return out
