"""Run an action in the background at a fixed interval while a block of code runs."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["every"]


@contextmanager
def every(seconds: float, action: Callable[[], None], *, name: str) -> Iterator[None]:
    """Call ``action`` now and every ``seconds`` until the block ends; the block never waits on it.

    ``action`` must handle its own errors: a raised exception ends the background thread.
    """
    stop = threading.Event()

    def loop() -> None:
        while True:
            action()
            if stop.wait(seconds):
                return

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
