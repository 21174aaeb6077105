"""Loading logged and registered models to predict with (the one place steps get a model from MLflow)."""

from __future__ import annotations

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PyFuncModel

from trainwise.errors import TrackingError
from trainwise.tracking.runs import connect


def load_pyfunc(model_uri: str, *, tracking_uri: str | None = None) -> PyFuncModel:
    """The pyfunc model at `model_uri` (models:/name/3, models:/name@alias, models:/m-..., runs:/id/model).

    `predict(DataFrame) -> DataFrame` as serving.py describes. With `tracking_uri`, the model and
    the registry are looked up on that server (checked to answer first).
    """
    if tracking_uri is not None:
        connect(tracking_uri)
    try:
        return mlflow.pyfunc.load_model(model_uri)
    except MlflowException as exc:
        raise TrackingError(
            f"could not load the model {model_uri} from {tracking_uri or mlflow.get_tracking_uri()}: {exc.message}"
        ) from None
