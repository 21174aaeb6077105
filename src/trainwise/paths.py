"""Where trainwise keeps its local state: the tracking server, caches and the Optuna database."""

import os
from pathlib import Path

HOME_ENV = "TRAINWISE_HOME"


def trainwise_home() -> Path:
    """`$TRAINWISE_HOME`, or `.trainwise/` in the working directory; created on first use."""
    home = Path(os.environ.get(HOME_ENV) or Path.cwd() / ".trainwise").expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def data_cache_dir() -> Path:
    """Materialised datasets (the embedded digits folder) and decoded caches."""
    path = trainwise_home() / "data"
    path.mkdir(parents=True, exist_ok=True)
    return path
