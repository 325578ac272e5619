"""Ctrl-C (SIGINT) and SIGTERM: stop at once, without a traceback, with the exit status a shell expects.

Inside :func:`interruptible` either signal raises :class:`Interrupted` wherever the main thread is. The step in
progress is abandoned; that is safe because every file is written atomically (``nashpref.io``: a temporary file
or directory renamed into place, removed again when an exception passes through), so what is on disk is the last
complete checkpoint or result. The command line turns :class:`Interrupted` into one line and exit status
128 + the signal number (130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """Raised by a handled signal. A BaseException, like KeyboardInterrupt, so that no ``except Exception``
    on the way up (library code, user hooks) mistakes it for an error and carries on."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


@contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` while the block runs (main thread only; elsewhere a no-op).
    Python runs the handler only between bytecodes, so a long call into C (a large linear program) ends first;
    a second signal then stops the process at once (temporary files it leaves are removed by the next run)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum, frame):
        if fired:
            sys.stderr.write(f"interrupted by {signal.Signals(signum).name} again: stopped at once\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        fired.append(signum)
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in HANDLED}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
