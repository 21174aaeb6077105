"""Turn SIGTERM into an exception so runs end KILLED instead of being left RUNNING."""

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from trainwise.errors import Terminated


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(f"received signal {signal.Signals(signum).name}")


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` in the main thread (like Ctrl-C does)."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
