"""The errors trainwise raises on purpose.

Each one carries a message written for the user: what is wrong, where (file, key, address) and
what to do. The CLI prints these without a traceback; anything else is a bug and keeps its traceback.
"""


class TrainwiseError(Exception):
    """Base of every error whose message is meant for the user."""

    exit_code = 1


class ConfigError(TrainwiseError):
    """A project.yaml or an override is wrong: names the file and the key path."""

    exit_code = 2


class ServerError(TrainwiseError):
    """The local tracking server could not be started, stopped or reached."""


class TrackingError(TrainwiseError):
    """The tracking server answered badly, or a run is not what it should be."""


class DataError(TrainwiseError):
    """The data source is missing or unreadable: names the file, folder or column."""


class ChecksFailedError(TrainwiseError):
    """A gating step ran to the end and found problems (its run is FINISHED, with the report)."""


class Terminated(BaseException):
    """Raised in the main thread when the process gets SIGTERM.

    A BaseException like KeyboardInterrupt, so `except Exception` in library code does not swallow
    it and the run can be ended as KILLED on the way out.
    """
