"""The supervisor's signal queue (ingestor/signals.py): a real signal is queued by its handler, in order,
and wakes a poll on the wakeup fd; closing restores the wakeup fd."""

from __future__ import annotations

import os
import select
import signal

import pytest

from ingestor.signals import HANDLED, SignalQueue


@pytest.fixture
def queue():
    saved = {sig: signal.getsignal(sig) for sig in HANDLED}
    q = SignalQueue()
    q.install()
    yield q
    q.close()
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_signals_are_queued_in_arrival_order_and_taken_once(queue):
    assert queue.get() is None
    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGHUP):
        os.kill(os.getpid(), sig)
    assert [queue.get(), queue.get(), queue.get(), queue.get()] == [signal.SIGHUP, signal.SIGTERM, signal.SIGHUP,
                                                                    None]


def test_a_signal_makes_the_wakeup_fd_readable_until_cleared(queue):
    assert select.select([queue.fileno], [], [], 0)[0] == []
    os.kill(os.getpid(), signal.SIGHUP)
    assert select.select([queue.fileno], [], [], 1)[0] == [queue.fileno]
    queue.clear_wakeup()
    assert select.select([queue.fileno], [], [], 0)[0] == []
    assert queue.get() == signal.SIGHUP


def test_every_stop_signal_is_handled(queue):
    for sig in HANDLED:
        assert signal.getsignal(sig) == queue._handle


def test_close_removes_the_wakeup_fd_and_may_be_called_twice():
    q = SignalQueue()
    saved = {sig: signal.getsignal(sig) for sig in HANDLED}
    try:
        q.install()
        q.close()
        assert signal.set_wakeup_fd(-1) == -1 and q.fileno == -1
        q.close()
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
