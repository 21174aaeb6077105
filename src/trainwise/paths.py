"""Where trainwise keeps its local state: the tracking server, caches and the Optuna database."""

import os
from pathlib import Path

from trainwise.errors import ConfigError

HOME_ENV = "TRAINWISE_HOME"


def trainwise_home() -> Path:
    """`$TRAINWISE_HOME`, or `.trainwise/` in the working directory; created on first use."""
    home = Path(os.environ.get(HOME_ENV) or Path.cwd() / ".trainwise").expanduser().resolve()
    make_dir(home)
    return home


def data_cache_dir() -> Path:
    """Materialised datasets (the embedded digits folder) and decoded caches."""
    path = trainwise_home() / "data"
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_dir(path: Path) -> Path:
    """mkdir -p, with an error that names TRAINWISE_HOME and what to do rather than an OSError traceback."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way, a read-only disk, no permission
        home = f"{HOME_ENV}={os.environ[HOME_ENV]}" if os.environ.get(HOME_ENV) else "the state folder (default ./.trainwise)"
        raise ConfigError(
            f"cannot create {path} ({exc.strerror}) for {home}; point {HOME_ENV} at a folder you can write to"
        ) from None
    return path
