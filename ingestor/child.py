"""A supervised child process: the supervisor's handle on it (:class:`Child`) and its one entry point (:func:`main`).

Children are started with the ``spawn`` method. The supervisor blocks SIGINT and SIGTERM while it spawns; here the child sets
up logging again, installs its own handlers and only then unblocks them
(dramatiq's ``try_block_signals`` idea), so no signal lands before the child
can handle it. Children ignore SIGINT: a Ctrl-C in the terminal reaches the
whole process group, and the supervisor alone decides how to stop. SIGTERM
sets a flag the child's loop reads.

Each child also stops when its supervisor is gone (its parent pid changes),
so a SIGKILLed supervisor leaves no orphans running.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing.context
import multiprocessing.process
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .backoff import Backoff
from .errors import BootError
from .roles import ChildArgs

# Named exit codes (gunicorn's WORKER_BOOT_ERROR idea): the supervisor halts
# instead of restarting a child that can never boot.
EXIT_OK = 0
EXIT_BOOT_ERROR = 3

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
RESTART_BACKOFF = Backoff(first_s=0.5, max_s=30.0)  # a child's restarts while it keeps failing quickly
STABLE_AFTER_S = 10.0  # a child that lived this long resets its backoff
LOG_FORMAT = "%(asctime)s %(levelname)-7s {instance}%(processName)s[%(process)d] %(message)s"


class Child:
    """One supervised child: its role (``args``, :mod:`ingestor.roles`), its current process, its restart
    history. Used by the supervisor only."""

    def __init__(self, args: ChildArgs) -> None:
        self.args = args
        self.name = args.name  # front, writer-N, simulator, lifecycle: in the log and the process title
        self.process: multiprocessing.process.BaseProcess | None = None
        self.started_at = 0.0
        self.restarts = 0
        self.quick_failures = 0
        self.spawn_after = 0.0  # time.monotonic() from which a respawn is due
        self.wanted = True  # False once the supervisor stops it for good

    def alive(self) -> bool:
        return self.process is not None and self.process.exitcode is None

    @property
    def pid(self) -> int:
        """The live process's pid; 0 when none runs."""
        return (self.process.pid or 0) if self.process is not None and self.alive() else 0

    @property
    def sentinel(self) -> int | None:
        """The live process's sentinel (readable once it ends), None when none runs."""
        return self.process.sentinel if self.process is not None and self.alive() else None

    def start(self, ctx: multiprocessing.context.SpawnContext, log_level: str, instance: str) -> None:
        """Start a new process running :func:`main` with ``args`` (signals blocked until its handlers are in)."""
        process = ctx.Process(target=main, args=(self.args, log_level, instance), name=self.name, daemon=False)
        with _signals_blocked():
            process.start()
        self.process = process
        self.started_at = time.monotonic()
        logging.getLogger("ingestor.supervisor").debug("Spawned %s (pid %d)", self.name, process.pid)

    def reap(self) -> tuple[int, int] | None:
        """The ended process's (exit code, pid), its handle closed; None while it runs (or none was started)."""
        p = self.process
        if p is None or p.exitcode is None:
            return None
        code, pid = p.exitcode, p.pid or 0
        p.close()
        self.process = None
        return code, pid

    def schedule_restart(self) -> float:
        """Count a restart and set when it is due: at once after a stable life, else after a backoff that
        doubles with each quick failure (:data:`RESTART_BACKOFF`). Returns the delay, s."""
        lived = time.monotonic() - self.started_at
        self.quick_failures = self.quick_failures + 1 if lived < STABLE_AFTER_S else 0
        delay = RESTART_BACKOFF.delay(self.quick_failures) if self.quick_failures else 0.0
        self.spawn_after = time.monotonic() + delay
        self.restarts += 1
        return delay

    def terminate(self) -> None:
        """SIGTERM: the child finishes what it holds and exits."""
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)

    def join(self, timeout_s: float) -> None:
        if self.process is not None:
            self.process.join(timeout_s)


def exit_description(code: int) -> str:
    """How a process with exit code ``code`` ended, for the log: "exited", "exited with code 1", "was killed by
    SIGKILL (perhaps out of memory?)" (a negative code is the signal's number)."""
    if code < 0:
        hint = " (perhaps out of memory?)" if -code == signal.SIGKILL else ""
        return f"was killed by {signal.Signals(-code).name}{hint}"
    return f"exited with code {code}" if code else "exited"


@contextmanager
def _signals_blocked() -> Iterator[None]:
    """Block the handled signals while spawning; the child unblocks them once its handlers are in."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def setup_logging(level: str, instance: str | None = None) -> None:
    """Log lines to stderr; with ``instance`` (``--instance``), each line names it, as ``NAME/processName[pid]``."""
    fmt = LOG_FORMAT.format(instance=f"{instance}/".replace("%", "%%") if instance else "")
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr, force=True)


class StopFlag:
    """Set by SIGTERM, or when the supervisor (our parent) has died.

    ``wakeup_fd`` turns readable when a signal comes (``signal.set_wakeup_fd``,
    installed by :func:`main`): a role asleep in ``poll()`` registers it and
    wakes at once, whichever of its threads the signal interrupted (Python
    runs the handler in the main thread only when that thread next runs).
    Read it empty with :func:`drain_wakeup`.
    """

    def __init__(self) -> None:
        self.requested = False
        self.parent = os.getppid()
        self.wakeup_fd, self._wakeup_w = os.pipe()
        os.set_blocking(self.wakeup_fd, False)
        os.set_blocking(self._wakeup_w, False)  # a handler must never block on a full pipe

    def install(self) -> None:
        """Handle SIGTERM and make signals write to the wakeup pipe (the main thread only)."""
        signal.signal(signal.SIGTERM, self.handle)
        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)

    def __call__(self) -> bool:
        return self.requested or os.getppid() != self.parent

    def handle(self, signum: int, frame: object) -> None:
        self.requested = True


def drain_wakeup(fd: int) -> None:
    """Read a wakeup pipe (:attr:`StopFlag.wakeup_fd`) empty, so the next ``poll()`` sleeps again."""
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def main(args: ChildArgs, log_level: str, instance: str | None = None) -> None:
    """Run the role ``args`` describes (its entry point, ``args.entry``); exits the process.

    Exit codes: EXIT_OK when the role's run returns, EXIT_BOOT_ERROR for a
    BootError (the supervisor halts), 1 for any other exception (logged with
    its traceback; the supervisor restarts the child).
    """
    setup_logging(log_level, instance)
    stop = StopFlag()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop.install()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
    log = logging.getLogger("ingestor.child")
    try:
        module, function = args.entry.split(":")
        getattr(importlib.import_module(module), function)(args, stop)
    except BootError as e:
        log.error("Cannot boot: %s", e)
        sys.exit(EXIT_BOOT_ERROR)
    except Exception:
        log.exception("Crashed")
        sys.exit(1)
    sys.exit(EXIT_OK)
