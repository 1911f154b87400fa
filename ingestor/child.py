"""The one entry point of every child process (started with the ``spawn`` method).

The supervisor blocks SIGINT and SIGTERM while it spawns; here the child sets
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
import os
import signal
import sys

from .errors import BootError
from .roles import ChildArgs

# Named exit codes (gunicorn's WORKER_BOOT_ERROR idea): the supervisor halts
# instead of restarting a child that can never boot.
EXIT_OK = 0
EXIT_BOOT_ERROR = 3

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
LOG_FORMAT = "%(asctime)s %(levelname)-7s {instance}%(processName)s[%(process)d] %(message)s"


def setup_logging(level: str, instance: str | None = None) -> None:
    """Log lines to stderr; with ``instance`` (``--instance``), each line names it, as ``NAME/processName[pid]``."""
    fmt = LOG_FORMAT.format(instance=f"{instance}/".replace("%", "%%") if instance else "")
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr, force=True)


class StopFlag:
    """Set by SIGTERM, or when the supervisor (our parent) has died."""

    def __init__(self) -> None:
        self.requested = False
        self.parent = os.getppid()

    def __call__(self) -> bool:
        return self.requested or os.getppid() != self.parent

    def handle(self, signum: int, frame: object) -> None:
        self.requested = True


def main(args: ChildArgs, log_level: str, instance: str | None = None) -> None:
    """Run the role ``args`` describes (its entry point, ``args.entry``); exits the process.

    Exit codes: EXIT_OK when the role's run returns, EXIT_BOOT_ERROR for a
    BootError (the supervisor halts), 1 for any other exception (logged with
    its traceback; the supervisor restarts the child).
    """
    setup_logging(log_level, instance)
    stop = StopFlag()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, stop.handle)
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
