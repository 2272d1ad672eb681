"""A run stopped by SIGTERM or SIGINT ends cleanly: the job in flight is abandoned (its staging
removed), the manifest is written consistent, and the process exits ``128 + signal``.

SIGTERM is how batch schedulers (Slurm, PBS, Kubernetes) end a job that ran out of time; SIGINT
is Ctrl-C. Both are turned into :class:`Stopped`, a ``BaseException`` so that no
``except Exception`` inside a job body mistakes the stop for a job failure and carries on.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["SIGNALS", "Stopped", "stop_on_signals"]

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(BaseException):
    """The run was asked to stop by signal ``signum``."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(f"stopped by {signal.Signals(self.signum).name}")

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal."""
        return 128 + self.signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Raise :class:`Stopped` in the main thread on SIGTERM / SIGINT for the block's duration.

    A second signal while the first is being handled is ignored (the clean-up is already under
    way). Off the main thread (a Dask worker, a test runner's thread) signals cannot be set, and
    the block runs with the handlers it has.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping = False

    def handler(signum, frame):
        nonlocal stopping
        if stopping:
            return
        stopping = True
        raise Stopped(signum)

    old = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
