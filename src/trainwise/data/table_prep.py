"""Fitted table preprocessing: imputation, scaling and one-hot encoding, stored as plain numbers.

Fitted on the training split only and saved as JSON (not a pickle), so the served model applies
exactly the same transform to raw rows and anyone can read what it does. Unknown categories at
prediction time become all-zero one-hot columns; missing values take the training median/mode.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from trainwise.errors import DataError

# More distinct values than this in a text column: too many one-hot columns to help; dropped.
MAX_CATEGORIES = 50


@dataclass
class TablePreprocessor:
    target: str
    numeric: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)  # column -> why
    medians: dict[str, float] = field(default_factory=dict)
    means: dict[str, float] = field(default_factory=dict)
    stds: dict[str, float] = field(default_factory=dict)
    modes: dict[str, str] = field(default_factory=dict)
    categories: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def fit(cls, frame: pd.DataFrame, target: str, *, drop: dict[str, str] | None = None) -> TablePreprocessor:
        prep = cls(target=target, dropped=dict(drop or {}))
        for column in frame.columns:
            if column == "id":
                prep.dropped.setdefault(column, "the row id")
            if column in (target, "id") or column in prep.dropped:
                continue
            series = frame[column]
            if series.nunique(dropna=True) <= 1:
                prep.dropped[column] = "constant"
            elif pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
                values = series.astype(float)
                prep.numeric.append(column)
                prep.medians[column] = float(values.median())
                prep.means[column] = float(values.fillna(values.median()).mean())
                prep.stds[column] = float(values.fillna(values.median()).std(ddof=0)) or 1.0
            else:
                text = series.astype("string")
                counts = text.value_counts()
                if len(counts) > MAX_CATEGORIES:
                    prep.dropped[column] = f"text with {len(counts)} distinct values (over {MAX_CATEGORIES})"
                    continue
                prep.categorical.append(column)
                prep.modes[column] = str(counts.index[0])
                prep.categories[column] = sorted(str(v) for v in counts.index)
        if not prep.numeric and not prep.categorical:
            raise DataError(f"no usable feature columns left (dropped: {prep.dropped})")
        return prep

    @property
    def feature_names(self) -> list[str]:
        return self.numeric + [f"{c}={v}" for c in self.categorical for v in self.categories[c]]

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Raw rows -> a float32 (N, features) matrix. Missing columns are an error naming them."""
        missing = [c for c in self.numeric + self.categorical if c not in frame.columns]
        if missing:
            raise DataError(f"input rows lack the columns {', '.join(missing)} the model was trained with")
        parts = []
        for column in self.numeric:
            values = pd.to_numeric(frame[column], errors="coerce").astype(float).fillna(self.medians[column])
            parts.append(((values - self.means[column]) / self.stds[column]).to_numpy()[:, None])
        for column in self.categorical:
            text = frame[column].astype("string").fillna(self.modes[column]).astype(str).to_numpy()
            parts.append((text[:, None] == np.array(self.categories[column])[None, :]).astype(float))
        return np.concatenate(parts, axis=1).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TablePreprocessor:
        return cls(**data)
