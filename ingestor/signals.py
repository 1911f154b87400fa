"""The supervisor's signals, queued by their handlers and handled in its loop (gunicorn's arbiter).

A handler only puts the signal's number in a queue: no logging, no locks,
nothing that could deadlock if the signal lands inside the logging module.
The wakeup fd (:func:`signal.set_wakeup_fd`) makes the loop's poll return at
once, and the loop takes the queued numbers with :meth:`SignalQueue.get`.
"""

from __future__ import annotations

import os
import queue
import signal

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)


class SignalQueue:
    """The queue of received signals; :meth:`install` sets the handlers, :meth:`close` removes the wakeup fd."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.fileno = -1  # the wakeup pipe's read end: readable once a signal arrived

    def install(self) -> None:
        read, self._write = os.pipe()
        for fd in (read, self._write):
            os.set_blocking(fd, False)
        self.fileno = read
        signal.set_wakeup_fd(self._write)
        for sig in HANDLED:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self._queue.put(signum)

    def clear_wakeup(self) -> None:
        """Empty the wakeup pipe (after the poll said it is readable)."""
        try:
            while os.read(self.fileno, 512):
                pass
        except BlockingIOError:
            pass

    def get(self) -> int | None:
        """The oldest signal not yet taken; None when there is none."""
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            return None

    def close(self) -> None:
        if self.fileno >= 0:
            signal.set_wakeup_fd(-1)
            os.close(self.fileno)
            os.close(self._write)
            self.fileno = -1
