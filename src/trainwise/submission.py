"""Submission files: what a valid one looks like, building it from predictions, checking it, scoring it.

Pure pandas, no MLflow: the submit step predicts and logs, this module decides. The checks run on
the file as written and read back (every cell as text), so what passes is what a grader receives:
a float written as "nan", an id that pandas would have read as a number, a label column written
with an index, all show up here and not on the leaderboard.

Each problem is a SubmissionError naming the first offending ids (at most MAX_NAMED).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, log_loss, root_mean_squared_error

from trainwise.errors import TrainwiseError

Kind = Literal["label", "index", "probabilities", "regression"]

MAX_NAMED = 5  # offending ids named per message
PROBABILITY_TOLERANCE = 1e-4  # |row sum - 1| allowed; written floats keep ~17 digits, so only real errors exceed it
PROB_PREFIX = "prob_"  # the served model's probability columns (serving.PROB_PREFIX; serving imports mlflow)
# What pandas, R and spreadsheets write for a missing value; a cell holding one of these is NaN.
NA_TOKENS = frozenset({"", "nan", "na", "n/a", "null", "none", "<na>"})


class SubmissionError(TrainwiseError):
    """A submission (or its sample) is not what the project expects: names the first offending ids."""


@dataclass(frozen=True)
class SubmissionSpec:
    """What a valid submission is: its header, the ids it must hold (in order), and what each value is."""

    id_column: str
    columns: tuple[str, ...]  # the whole header, in order, id column first
    ids: tuple[str, ...]  # the expected ids, in the order the file is written
    kind: Kind
    classes: tuple[str, ...] = ()  # classification: index -> class name
    target_column: str = "label"  # label, index and regression: the one value column

    @property
    def value_columns(self) -> list[str]:
        return [c for c in self.columns if c != self.id_column]


def submission_spec(
    *,
    id_column: str,
    target_column: str,
    kind: Kind,
    classes: Sequence[str],
    ids: Sequence[str],
    sample: Path | None = None,
) -> SubmissionSpec:
    """The spec from the project's settings and test ids; a sample submission's header and ids win.

    The sample must agree with the settings (same columns, in any order): a sample written for
    other column names means the settings are wrong, and that is said before anything is predicted.
    """
    classes = tuple(str(c) for c in classes)
    values = list(classes) if kind == "probabilities" else [target_column]
    columns, expected_ids = (id_column, *values), tuple(str(i) for i in ids)
    if sample is not None:
        header, sample_ids = read_sample(sample)
        if sorted(header) != sorted(columns) or header[0] != id_column:
            raise SubmissionError(
                f"{sample}: its header {','.join(header)} does not fit the submission settings, which give "
                f"{','.join(columns)} (id first). Set submission.id_column, submission.target_column or submission.format "
                "to match the sample."
            )
        columns, expected_ids = tuple(header), tuple(sample_ids)
    repeated = _repeated(expected_ids)
    if repeated:
        raise SubmissionError(f"the expected ids repeat: {_name(repeated)}; every test item needs its own id")
    return SubmissionSpec(id_column, columns, expected_ids, kind, classes, target_column)


def read_sample(path: Path) -> tuple[list[str], list[str]]:
    """A sample submission's header and its ids (first column), as text."""
    frame = read_submission(path)
    if frame.shape[1] < 2:
        raise SubmissionError(
            f"{path}: a sample submission needs an id column and at least one value column; it has {list(frame.columns)}"
        )
    repeated = _repeated(frame.iloc[:, 0])
    if repeated:
        raise SubmissionError(f"{path}: the sample submission repeats ids {_name(repeated)}")
    return [str(c) for c in frame.columns], frame.iloc[:, 0].tolist()


def read_submission(path: Path) -> pd.DataFrame:
    """A CSV with every cell as text, nothing turned into NaN or numbers (the checks decide what is missing)."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except FileNotFoundError:
        raise SubmissionError(f"{path} does not exist") from None
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise SubmissionError(f"{path} could not be read as CSV: {exc}") from None


# -- building -----------------------------------------------------------------------------------------


def build_submission(spec: SubmissionSpec, ids: Sequence[str], predictions: pd.DataFrame) -> pd.DataFrame:
    """The submission frame from the served model's output, one row per test item (row i is item ids[i]).

    Rows follow the expected ids' order; items the spec does not expect go last, so the checks can
    name them rather than this function dropping them.
    """
    if len(ids) != len(predictions):
        raise SubmissionError(f"{len(predictions)} predictions for {len(ids)} test items; the model must answer every row")
    values = _values(spec, predictions.reset_index(drop=True))
    frame = pd.concat([pd.DataFrame({spec.id_column: [str(i) for i in ids]}), values], axis=1)
    position = {item: n for n, item in enumerate(spec.ids)}
    order = sorted(range(len(frame)), key=lambda row: (position.get(frame.iat[row, 0], len(position)), row))
    return frame.iloc[order][list(spec.columns)].reset_index(drop=True)


def _values(spec: SubmissionSpec, predictions: pd.DataFrame) -> pd.DataFrame:
    if spec.kind == "regression":
        if "prediction" not in predictions:
            raise SubmissionError(
                f"the model gives {list(predictions.columns)}, not a regression `prediction`; is it a model of this project?"
            )
        return pd.DataFrame({spec.target_column: predictions["prediction"].astype("float64")})
    model_classes = [c.removeprefix(PROB_PREFIX) for c in predictions.columns if c.startswith(PROB_PREFIX)]
    if model_classes != list(spec.classes):
        raise SubmissionError(
            f"the model predicts classes {_list(model_classes)} but this project's are {_list(spec.classes)}; "
            "is it a model of this project (see --model)?"
        )
    if spec.kind == "label":
        return pd.DataFrame({spec.target_column: predictions["label"].astype(str)})
    if spec.kind == "index":
        return pd.DataFrame({spec.target_column: predictions["index"].astype("int64")})
    return pd.DataFrame({name: predictions[PROB_PREFIX + name].astype("float64") for name in spec.classes})


def write_submission(frame: pd.DataFrame, path: Path) -> Path:
    """The frame as CSV, no index; floats keep full precision so probabilities still sum to 1."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


# -- checking -----------------------------------------------------------------------------------------


def validate_file(path: Path, spec: SubmissionSpec) -> pd.DataFrame:
    """Read the written file back and check it; returns it (all text) when it is valid."""
    frame = read_submission(path)
    validate(frame, spec, source=path.name)
    return frame


def validate(frame: pd.DataFrame, spec: SubmissionSpec, *, source: str = "submission") -> None:
    """Header, row count, ids, missing values, then the values themselves; the first problem found is raised."""
    header = [str(c) for c in frame.columns]
    if header != list(spec.columns):
        missing = [c for c in spec.columns if c not in header]
        extra = [c for c in header if c not in spec.columns]
        detail = (
            "; ".join(
                part
                for part in (f"missing {_list(missing)}" if missing else "", f"unexpected {_list(extra)}" if extra else "")
                if part
            )
            or "same columns in another order"
        )
        raise SubmissionError(f"{source}: the header is {','.join(header)} but must be {','.join(spec.columns)} ({detail})")

    ids = frame[spec.id_column].astype(str)
    problems = _id_problems(ids, spec.ids)
    if len(frame) != len(spec.ids):
        raise SubmissionError(f"{source}: {len(frame)} rows but {len(spec.ids)} expected, one per test item: {problems}")
    if problems:
        raise SubmissionError(f"{source}: the ids do not match the test set's: {problems}")

    empty = pd.concat({column: _is_missing(frame[column], spec) for column in spec.value_columns}, axis=1)
    if empty.to_numpy().any():
        columns = [column for column in spec.value_columns if empty[column].any()]
        raise SubmissionError(f"{source}: missing values (NaN) in {_list(columns)} for ids {_name(ids[empty.any(axis=1)])}")

    check = {"label": _check_labels, "index": _check_indices, "probabilities": _check_probabilities, "regression": _check_numbers}
    check[spec.kind](frame.set_index(ids), spec, source)


def _id_problems(ids: pd.Series, expected: Sequence[str]) -> str:
    """'' when the ids are exactly the expected set once each; else what is missing, repeated, unexpected."""
    wanted, present = set(expected), set(ids)
    parts = []
    missing = [i for i in expected if i not in present]
    if missing:
        parts.append(f"{len(missing)} missing ({_name(missing)})")
    repeated = _repeated(ids)
    if repeated:
        parts.append(f"{len(repeated)} repeated ({_name(repeated)})")
    extra = list(dict.fromkeys(i for i in ids if i not in wanted))
    if extra:
        parts.append(f"{len(extra)} unexpected ({_name(extra)})")
    return "; ".join(parts)


def _is_missing(cells: pd.Series, spec: SubmissionSpec) -> pd.Series:
    text = cells.astype(str).str.strip()
    missing = text.str.lower().isin(NA_TOKENS)
    if spec.kind == "label":
        missing &= ~text.isin(spec.classes)  # a class may be called "None" or "NA"
    return missing


def _check_labels(frame: pd.DataFrame, spec: SubmissionSpec, source: str) -> None:
    labels = frame[spec.target_column]
    unknown = labels[~labels.isin(spec.classes)]
    if len(unknown):
        raise SubmissionError(
            f"{source}: labels that are not classes of this project (known: {_list(spec.classes)}) for ids "
            f"{_name(f'{i} ({v!r})' for i, v in unknown.items())}"
        )


def _check_indices(frame: pd.DataFrame, spec: SubmissionSpec, source: str) -> None:
    bad = []
    for item, text in frame[spec.target_column].items():
        value = _integer(text)
        if value is None or not 0 <= value < len(spec.classes):
            bad.append(f"{item} ({text!r})")
    if bad:
        raise SubmissionError(
            f"{source}: class indices must be integers in 0..{len(spec.classes) - 1}; not so for ids {_name(bad)}"
        )


def _check_probabilities(frame: pd.DataFrame, spec: SubmissionSpec, source: str) -> None:
    values = _numbers(frame[spec.value_columns], source)
    outside = values[((values < 0) | (values > 1)).any(axis=1)]
    if len(outside):
        raise SubmissionError(f"{source}: probabilities outside [0, 1] for ids {_name(outside.index)}")
    sums = values.sum(axis=1)
    off = sums[(sums - 1.0).abs() > PROBABILITY_TOLERANCE]
    if len(off):
        raise SubmissionError(
            f"{source}: probabilities do not sum to 1 (tolerance {PROBABILITY_TOLERANCE:g}) for ids "
            f"{_name(f'{i} (sum {s:.6g})' for i, s in off.items())}"
        )


def _check_numbers(frame: pd.DataFrame, spec: SubmissionSpec, source: str) -> None:
    _numbers(frame[spec.value_columns], source)


def _numbers(cells: pd.DataFrame, source: str) -> pd.DataFrame:
    """The cells as floats; any that is not a finite number is an error naming its id."""
    values = cells.apply(lambda column: pd.to_numeric(column.str.strip(), errors="coerce")).astype("float64")
    bad = values.index[~np.isfinite(values.to_numpy()).all(axis=1)]
    if len(bad):
        raise SubmissionError(f"{source}: values that are not finite numbers for ids {_name(bad)}")
    return values


def _integer(text: str) -> int | None:
    """Digits only: int() would also take "1_0" and " +3"."""
    text = text.strip()
    return int(text) if re.fullmatch(r"-?[0-9]+", text) else None


# -- scoring ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Score:
    metric: str  # submission_accuracy or submission_rmse
    value: float
    rows: int  # rows scored (ids present in both the submission and the answers)
    also: dict[str, float] = field(default_factory=dict)  # probability submissions: submission_log_loss


def read_answers(path: Path, spec: SubmissionSpec) -> pd.DataFrame:
    """Hidden answers (`id,label`, or the submission's id and target columns) as columns id, answer."""
    frame = read_submission(path)
    id_column = spec.id_column if spec.id_column in frame else frame.columns[0]
    others = [c for c in frame.columns if c != id_column]
    value_column = spec.target_column if spec.target_column in frame else (others[0] if others else None)
    if value_column is None:
        raise SubmissionError(f"{path}: answers need an id column and an answer column; it has {list(frame.columns)}")
    return pd.DataFrame({"id": frame[id_column], "answer": frame[value_column]})


def score_submission(frame: pd.DataFrame, spec: SubmissionSpec, answers: pd.DataFrame) -> Score:
    """Accuracy (classification) or RMSE (regression) of a validated submission against answers (id, answer)."""
    predicted = predicted_values(frame, spec)
    truth = answers.assign(id=answers["id"].astype(str)).set_index("id")["answer"]
    shared = predicted.index.intersection(truth.index)
    if shared.empty:
        raise SubmissionError(
            f"the answers share no ids with the submission (answers: {_name(truth.index)}; submission: {_name(predicted.index)})"
        )
    if spec.kind == "regression":
        rmse = root_mean_squared_error(pd.to_numeric(truth[shared]).astype("float64"), predicted[shared].astype("float64"))
        return Score("submission_rmse", float(rmse), len(shared))
    accuracy = accuracy_score(truth[shared].astype(str), predicted[shared].astype(str))
    also = {"submission_log_loss": _log_loss(frame, spec, truth[shared])} if spec.kind == "probabilities" else {}
    return Score("submission_accuracy", float(accuracy), len(shared), also)


def _log_loss(frame: pd.DataFrame, spec: SubmissionSpec, truth: pd.Series) -> float:
    """scikit-learn's log loss of the submitted probabilities (one column per class) against the answers' classes."""
    answers = truth.astype(str)
    unknown = sorted(set(answers) - set(spec.classes))
    if unknown:
        raise SubmissionError(f"the answers name classes the submission has no column for: {_list(unknown)}")
    # scikit-learn reads y_pred's columns in the sorted order of the labels, whatever order `labels`
    # gives (with classes ['b', 'a'] it would score each row against the other class): sort them first
    ordered = sorted(spec.classes)
    rows = frame.assign(_id=frame[spec.id_column].astype(str)).set_index("_id").loc[answers.index, ordered]
    return float(log_loss(answers.to_numpy(), rows.apply(pd.to_numeric).to_numpy(float), labels=ordered))


def predicted_values(frame: pd.DataFrame, spec: SubmissionSpec) -> pd.Series:
    """Per id, the predicted class name (any classification format) or number (regression)."""
    ids = frame[spec.id_column].astype(str)
    if spec.kind == "regression":
        values = pd.to_numeric(frame[spec.target_column])
    elif spec.kind == "label":
        values = frame[spec.target_column].astype(str)
    elif spec.kind == "index":
        values = frame[spec.target_column].map(lambda text: spec.classes[int(str(text).strip())])
    else:
        probabilities = frame[list(spec.classes)].apply(pd.to_numeric).to_numpy()
        values = pd.Series([spec.classes[i] for i in probabilities.argmax(axis=1)])
    return pd.Series(values.to_numpy(), index=pd.Index(ids, name="id"))


# -- message helpers ----------------------------------------------------------------------------------


def _repeated(ids: Iterable[str]) -> list[str]:
    return [item for item, count in Counter(ids).items() if count > 1]


def _name(ids: Iterable[object]) -> str:
    """The first MAX_NAMED ids, and how many more there are."""
    items = [str(i) if str(i) != "" else "(empty)" for i in ids]
    shown = ", ".join(items[:MAX_NAMED])
    return f"{shown} and {len(items) - MAX_NAMED} more" if len(items) > MAX_NAMED else shown


def _list(names: Iterable[object], limit: int = 20) -> str:
    items = [str(n) for n in names]
    return ", ".join(items[:limit]) + (f" ... ({len(items)} in all)" if len(items) > limit else "")
