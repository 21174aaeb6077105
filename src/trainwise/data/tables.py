"""Reading tables: CSV or Parquet files, and scikit-learn's bundled tables by name."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from trainwise.config import TabularSource
from trainwise.errors import DataError


def read_table(path: Path) -> pd.DataFrame:
    """A CSV or Parquet file as a DataFrame; unreadable files are a DataError naming the file."""
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        # low_memory=False: one dtype per column from the whole file, so mixed types are seen as such.
        return pd.read_csv(path, low_memory=False)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"{path} could not be read as a table: {exc}") from None


def load_sklearn_table(name: str) -> pd.DataFrame:
    """One of scikit-learn's bundled tables with a `target` column (class names for classification)."""
    from sklearn import datasets

    loader = {"wine": datasets.load_wine, "breast_cancer": datasets.load_breast_cancer, "diabetes": datasets.load_diabetes}[name]
    bunch = loader(as_frame=True)
    frame = bunch.frame.copy()
    names = getattr(bunch, "target_names", None)
    if names is not None and len(names) and frame["target"].dtype.kind in "iu":
        frame["target"] = [str(names[i]) for i in frame["target"]]
    return frame


def load_source_table(source: TabularSource) -> tuple[pd.DataFrame, str]:
    """The training table and a description of where it came from."""
    if source.sklearn:
        return load_sklearn_table(source.sklearn), f"scikit-learn's bundled {source.sklearn} table"
    assert source.path is not None
    return read_table(source.path), str(source.path)


def table_digest(frame: pd.DataFrame) -> str:
    """A content digest of every row, the column names and dtypes: 32 hex digits."""
    digest = hashlib.sha256()
    digest.update("\0".join(f"{c}:{t}" for c, t in frame.dtypes.astype(str).items()).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:32]


def with_ids(frame: pd.DataFrame, id_column: str | None, *, prefix: str = "r") -> pd.DataFrame:
    """An `id` column of strings: the configured id column, a unique `id` column, or row numbers.

    Row-number ids carry `prefix`: the training table's rows are r0, r1, ... and a provided test
    table's t0, t1, ..., so the two never share an id (they did, and prepare merged them).
    """
    frame = frame.copy()
    key = id_column or ("id" if "id" in frame.columns else None)
    if key is not None and key not in frame.columns:
        raise DataError(f"no id column {key!r} (columns: {', '.join(map(str, frame.columns))}); set data.source.id_column")
    if key is not None and not frame[key].is_unique:
        raise DataError(f"id column {key!r} repeats values; ids must be unique (set data.source.id_column to a unique column)")
    ids = frame[key].astype(str) if key else pd.Series([f"{prefix}{i}" for i in range(len(frame))], index=frame.index)
    if "id" in frame.columns:
        frame["id"] = ids
    else:
        frame.insert(0, "id", ids)
    return frame
