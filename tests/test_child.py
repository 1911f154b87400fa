"""A supervised child (ingestor/child.py) with real processes and real signals: started with its signals
blocked until its handlers are in, stopped by SIGTERM through its stop flag, its end read back as the exit codes
the supervisor acts on, its restarts spaced by the backoff."""

from __future__ import annotations

import multiprocessing
import signal
import time
from typing import ClassVar

import msgspec
import pytest
import zmq

from ingestor import child
from ingestor.child import EXIT_BOOT_ERROR, RESTART_BACKOFF, STABLE_AFTER_S, Child, exit_description
from ingestor.errors import BootError

SPAWN = multiprocessing.get_context("spawn")


class Role(msgspec.Struct, frozen=True):
    """A role for these tests: ``mode`` says what its entry point does."""

    name: ClassVar[str] = "test-role"
    entry: ClassVar[str] = "tests.test_child:act"

    mode: str


def act(args: Role, stop) -> None:
    if args.mode == "boot-error":
        raise BootError("no port for the test role")
    if args.mode == "crash":
        raise RuntimeError("the test role crashed")
    if args.mode == "poll":  # asleep in poll() for 30 s at a time, woken by the stop flag's wakeup pipe
        poller = zmq.Poller()
        poller.register(stop.wakeup_fd, zmq.POLLIN)
        while not stop():
            if poller.poll(30_000):
                child.drain_wakeup(stop.wakeup_fd)
        return
    while not stop():  # "run": until SIGTERM (or its parent dies)
        time.sleep(0.01)


def ended(c: Child, timeout_s: float = 30.0) -> tuple[int, int]:
    deadline = time.monotonic() + timeout_s
    while (result := c.reap()) is None:
        assert time.monotonic() < deadline, f"{c.name} did not end"
        time.sleep(0.02)
    return result


@pytest.fixture
def started():
    made: list[Child] = []

    def start(mode: str) -> Child:
        c = Child(Role(mode))  # type: ignore[arg-type]  # a test role beside the service's
        c.start(SPAWN, "warning", "test")
        made.append(c)
        return c

    yield start
    for c in made:
        c.kill()
        c.join(5)


def test_sigterm_sets_the_stop_flag_and_the_child_exits_0(started):
    c = started("run")
    assert c.alive() and c.pid > 0 and c.sentinel is not None
    time.sleep(0.5)
    pid = c.pid
    c.terminate()
    assert ended(c) == (0, pid)
    assert not c.alive() and c.pid == 0 and c.sentinel is None and c.process is None


def test_sigterm_wakes_a_child_asleep_in_poll_through_the_stop_flag_s_wakeup_pipe(started):
    """child.StopFlag: a role asleep in a 30 s poll() on the flag's wakeup_fd ends at once on SIGTERM (the front
    sleeps a second between idle looks on it: IDLE_POLL_MS)."""
    c = started("poll")
    time.sleep(1.0)  # started, handlers in, asleep in poll()
    pid = c.pid
    c.terminate()
    assert ended(c, timeout_s=5.0) == (0, pid)


def test_a_sigterm_right_after_start_waits_for_the_handler_instead_of_killing_the_child(started):
    for _ in range(3):  # the window is the child's whole start-up: blocked, then handled
        c = started("run")
        c.terminate()
        assert ended(c)[0] == 0


@pytest.mark.parametrize(("mode", "code"), [("boot-error", EXIT_BOOT_ERROR), ("crash", 1)])
def test_the_exit_code_says_whether_the_child_can_ever_boot(started, mode, code):
    c = started(mode)
    assert ended(c)[0] == code


def test_a_killed_child_reports_the_signal(started):
    c = started("run")
    pid = c.pid
    c.kill()
    assert ended(c) == (-signal.SIGKILL, pid)
    assert exit_description(-signal.SIGKILL) == "was killed by SIGKILL (perhaps out of memory?)"


@pytest.mark.parametrize(("code", "said"), [(0, "exited"), (1, "exited with code 1"), (3, "exited with code 3"),
                                            (-signal.SIGTERM, "was killed by SIGTERM"),
                                            (-signal.SIGSEGV, "was killed by SIGSEGV")])
def test_each_exit_code_is_described_for_the_log(code, said):
    assert exit_description(code) == said


def test_quick_failures_double_the_restart_delay_and_a_stable_life_resets_it():
    c = Child(Role("run"))  # type: ignore[arg-type]
    delays = []
    for _ in range(8):
        c.started_at = time.monotonic()  # died at once
        delays.append(c.schedule_restart())
    assert delays == [RESTART_BACKOFF.delay(n) for n in range(1, 9)]
    assert delays[:3] == [0.5, 1.0, 2.0] and delays[-1] == RESTART_BACKOFF.max_s
    c.started_at = time.monotonic() - STABLE_AFTER_S - 1  # lived long enough
    assert c.schedule_restart() == 0.0 and c.quick_failures == 0 and c.restarts == 9
    assert c.spawn_after <= time.monotonic()


def test_nothing_to_reap_or_signal_before_a_start():
    c = Child(Role("run"))  # type: ignore[arg-type]
    assert c.reap() is None and not c.alive() and c.pid == 0
    c.terminate()
    c.kill()
    c.join(0.1)


def test_the_parent_s_handled_signals_are_unblocked_again_after_a_start(started):
    started("run")
    assert not set(child.HANDLED_SIGNALS) & signal.pthread_sigmask(signal.SIG_BLOCK, [])
