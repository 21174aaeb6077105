"""trainwise: raw data to a registered model and a submission, every step tracked on MLflow."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("trainwise")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
