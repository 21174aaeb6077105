"""Quality findings for a table: what would silently hurt a model trained on it.

Each finding names the column (or rows) and says what trainwise does about it. Errors stop the
ingest step; warnings are reported and acted on by `prepare` (constant and identifier-like
columns are dropped, rows with a missing target are left out).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

ERROR, WARNING, INFO = "error", "warning", "info"

# A column whose values are unique on (nearly) every row and look like keys tells nothing general.
_ID_NAMES = ("id", "uuid", "guid", "key", "index")


@dataclass(frozen=True)
class Finding:
    check: str
    severity: str
    column: str | None
    detail: str

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)


def table_findings(frame: pd.DataFrame, target: str, *, classification: bool) -> list[Finding]:
    """Every problem found in `frame` (which must contain `target`)."""
    findings: list[Finding] = []
    features = [c for c in frame.columns if c != target]
    keys: list[str] = []  # identifier-like columns: rows that differ only there are still duplicates
    missing_target = int(frame[target].isna().sum())
    if missing_target:
        findings.append(Finding("missing_target", WARNING, target, f"{missing_target} rows have no target; they are left out"))
    for column in features:
        series = frame[column]
        if series.nunique(dropna=False) <= 1:
            findings.append(Finding("constant_column", WARNING, str(column), f"one value ({series.iloc[0]!r}) in every row; dropped"))
            continue
        mixed = _mixed_types(series)
        if mixed:
            findings.append(Finding("mixed_types", WARNING, str(column), mixed))
        if _identifier_like(series, str(column)):
            keys.append(column)
            findings.append(Finding("identifier_like", WARNING, str(column), "unique on every row like an id; dropped as a feature"))
        missing = int(series.isna().sum())
        if missing:
            findings.append(Finding("missing_values", INFO, str(column), f"{missing} missing ({missing / len(frame):.1%}); imputed"))
    content = frame.drop(columns=keys)
    duplicated = content.duplicated(keep="first")
    if duplicated.any():
        besides = f" (apart from {', '.join(map(str, keys))})" if keys else ""
        findings.append(Finding("duplicate_rows", WARNING, None, f"{int(duplicated.sum())} rows repeat an earlier row exactly{besides}"))
    conflicts = conflicting_labels(content, target) if len(content.columns) > 1 else 0
    if conflicts:
        what = "labels" if classification else "targets"
        findings.append(Finding("conflicting_labels", WARNING, target, f"{conflicts} groups of identical feature rows have different {what}"))
    if classification:
        counts = frame[target].dropna().astype(str).value_counts()
        if len(counts) < 2:
            findings.append(Finding("single_class", ERROR, target, f"only {len(counts)} class in {target!r}; a classifier needs two or more"))
    elif not pd.api.types.is_numeric_dtype(frame[target]):
        findings.append(Finding("non_numeric_target", ERROR, target, f"regression needs a numeric target; {target!r} is {frame[target].dtype}"))
    return findings


def conflicting_labels(frame: pd.DataFrame, target: str) -> int:
    """Groups of rows with identical features but more than one distinct target value."""
    features = [c for c in frame.columns if c != target]
    grouped = frame.dropna(subset=[target]).groupby(features, dropna=False)[target].nunique()
    return int((grouped > 1).sum())


def _mixed_types(series: pd.Series) -> str | None:
    """A text column where some values are numbers and others are not (a typo, a unit, 'N/A')."""
    if not _is_text(series):
        return None
    values = series.dropna()
    if values.empty:
        return None
    kinds = values.map(lambda v: type(v).__name__)
    if kinds.nunique() > 1:
        return f"values of several types: {', '.join(sorted(kinds.unique()))}"
    numeric = pd.to_numeric(values, errors="coerce")
    n_numeric = int(numeric.notna().sum())
    if 0 < n_numeric < len(values) and n_numeric >= 0.5 * len(values):
        odd = values[numeric.isna()].astype(str).unique()[:3]
        return f"mostly numbers, but {len(values) - n_numeric} values are not (e.g. {', '.join(map(repr, odd))})"
    return None


def _identifier_like(series: pd.Series, name: str) -> bool:
    if len(series) < 20 or series.nunique(dropna=True) < 0.99 * len(series):
        return False
    if any(part in name.lower().replace("-", "_").split("_") for part in _ID_NAMES):
        return True
    if pd.api.types.is_integer_dtype(series):
        ordered = np.sort(series.to_numpy())
        return bool(np.all(np.diff(ordered) == 1))  # a running count
    return _is_text(series) and series.astype(str).str.len().nunique() == 1  # fixed-width codes


def _is_text(series: pd.Series) -> bool:
    """object or string dtype (pandas 3 reads text columns as `str`, earlier versions as object)."""
    return series.dtype == object or pd.api.types.is_string_dtype(series)
