"""Failpoints: named steps where a test makes the service fail on purpose.

The idea of TiKV's ``fail`` crate and etcd's gofail. A failpoint is a call
``failpoint("spool.fsync")`` at one step where a process does I/O or hands
work over. It does nothing unless armed; armed, it runs its *action* there:

=================  ==========================================================
``kill``           SIGKILL this process (a crash at exactly this step)
``enospc``         raise ``OSError(ENOSPC)`` (I/O steps only)
``eio``            raise ``OSError(EIO)`` (I/O steps only)
``disconnect``     the server drops this connection: ``pg_terminate_backend``
                   of its own backend, so the error is PostgreSQL's own
                   (database steps only)
``sleep(ms)``      stall for ``ms`` milliseconds
``off``            nothing (a placeholder in a chain)
=================  ==========================================================

An action may carry a count, ``3*eio`` (fire three times, then go on with
the next action, or stop firing), and actions chain with ``->``:
``2*enospc->kill``. That is the ``fail`` crate's grammar
``[cnt*]task[(arg)]``, without its percentages.

Arming: ``INGESTOR_FAILPOINTS="spool.fsync=1*eio;writer.after_commit=1*kill"``
in a process's environment (read at import; children inherit it), or
:func:`arm` in-process. When ``INGESTOR_FAILPOINTS_STATE`` names a directory
the passes and fires are counted there (a byte appended per pass to
``NAME.passes``, per fire to ``NAME.fired``; an ``O_APPEND`` write of one
byte and the descriptor's own offset give each pass its index atomically),
so a count holds across processes: a writer killed by ``1*kill`` is not
killed again by its successor, nor by the other writers.

Every failpoint is listed in :data:`FAILPOINTS` with the actions it takes, so
a test can enumerate them: adding a name here adds its cases to the matrix in
``tests/test_failpoints.py``. Unarmed, a failpoint costs one dict lookup
(``bench/test_micro.py`` measures it).
"""

from __future__ import annotations

import errno
import os
import re
import signal
import time
from typing import Any, NamedTuple

from .errors import ConfigError

# The actions each kind of step can take.
PROCESS = ("kill", "sleep")
IO = ("kill", "enospc", "eio", "sleep")
DB = ("kill", "disconnect", "sleep")
FILE = ("enospc", "eio", "sleep")  # a file of the supervisor's, kept on the side: an error is logged, not fatal

#: name -> (actions it takes, where it is)
FAILPOINTS: dict[str, tuple[tuple[str, ...], str]] = {
    "front.after_receive": (PROCESS, "front: frames received from ZeroMQ, not yet decoded or counted"),
    "front.after_place": (PROCESS, "front: a received batch placed in the ring or the spool"),
    "front.refill": (PROCESS, "front: a spool block put into the ring, not yet dropped from the spool"),
    "writer.dedup": (DB, "writer: before the dedup claim of a batch"),
    "writer.small_batch": (DB, "writer: before the one statement that writes a small batch (migration 007)"),
    "writer.copy": (DB, "writer: before the COPY into weighing_logs"),
    "writer.upsert": (DB, "writer: before the UPSERT of scale_current_states"),
    "writer.chain_heads": (DB, "writer: before the UPDATE of the claims' and the alibi chain's heads (migration 010)"),
    "writer.checkpoint": (DB, "writer: before the lane checkpoint, the transaction's last statement"),
    "writer.after_commit": (PROCESS, "writer: committed, records not yet counted or released"),
    "writer.after_release": (PROCESS, "writer: committed records released from the ring"),
    "writer.reject_checkpoint": (DB, "writer: a rejected row dead-lettered, checkpoint not yet moved past it"),
    "writer.after_reject": (PROCESS, "writer: checkpoint moved past a rejected row, not yet counted or released"),
    "deadletter.write": (IO, "dead-letter store: appending lines (front and writers)"),
    "deadletter.rotate": (IO, "dead-letter store: starting the next file, deleting the oldest past the bound"),
    "spool.create_segment": (IO, "spool: creating a segment file"),
    "spool.write": (IO, "spool: writing a block"),
    "spool.fsync": (IO, "spool: fsync of a written block"),
    "spool.read": (IO, "spool: reading the oldest block to move it into the ring"),
    "spool.position": (IO, "spool: recording the read position"),
    "spool.unlink": (IO, "spool: deleting a segment read to its end"),
    "archive.write": (IO, "archive: a row group written to the temporary Parquet file"),
    "archive.verify": (IO, "archive: reading the temporary Parquet file back to verify it"),
    "archive.move": (IO, "archive: the verified file about to be moved to its final name"),
    "archive.record": (DB, "archive: the file in place, its row in ingestor_archives not yet written"),
    "seal.database": (DB, "sealer: a seal signed, not yet stored in ingestor_seals"),
    "seal.file": (IO, "sealer: a seal stored in the database, not yet appended to the seal file"),
    "supervisor.drain": (PROCESS, "supervisor: the front stopped, the writers about to be told to drain"),
    "supervisor.spool_leftovers": (IO, "supervisor: putting what the ring holds at stop in front of the spool"),
    "commits.save": (FILE, "supervisor: writing the record of the last commits (every 2 s and at a clean stop)"),
}

ENV = "INGESTOR_FAILPOINTS"
STATE_ENV = "INGESTOR_FAILPOINTS_STATE"


class Step(NamedTuple):
    fires: int | None  # fires of this step, None = for ever
    task: str
    arg: int | None


_ACTION = re.compile(r"^(?:(\d+)\*)?([a-z]+)(?:\((\d+)\))?$")
_armed: dict[str, list[Step]] = {}
_passes: dict[str, int] = {}  # in-process counts (no state directory)
_fired: dict[str, int] = {}


def parse(name: str, action: str) -> list[Step]:
    """The steps of ``action`` for failpoint ``name``; ConfigError naming what is wrong."""
    if name not in FAILPOINTS:
        raise ConfigError(f"unknown failpoint {name!r} (known: {', '.join(sorted(FAILPOINTS))})")
    allowed = FAILPOINTS[name][0] + ("off",)
    steps = []
    for part in action.split("->"):
        m = _ACTION.match(part.strip())
        if not m:
            raise ConfigError(f"failpoint {name}: action {part!r} is not [count*]task[(arg)]")
        count, task, arg = m.groups()
        if task not in allowed:
            raise ConfigError(f"failpoint {name}: action {task!r} is not one of {', '.join(allowed)}")
        if (task == "sleep") != (arg is not None):
            raise ConfigError(f"failpoint {name}: only sleep takes an argument (milliseconds): {part!r}")
        steps.append(Step(int(count) if count else None, task, int(arg) if arg else None))
    return steps


def arm(name: str, action: str) -> None:
    """Arm failpoint ``name`` in this process (``off`` disarms it)."""
    _armed[name] = parse(name, action)
    _passes[name] = _fired[name] = 0


def disarm_all() -> None:
    _armed.clear()
    _passes.clear()
    _fired.clear()


def arm_from_environment(value: str | None = None) -> None:
    """Arm what ``INGESTOR_FAILPOINTS`` (or ``value``) says: ``name=action;name=action``."""
    text = os.environ.get(ENV, "") if value is None else value
    for item in filter(None, (s.strip() for s in text.split(";"))):
        name, sep, action = item.partition("=")
        if not sep:
            raise ConfigError(f"{ENV}: {item!r} is not name=action")
        arm(name.strip(), action)


def failpoint(name: str, conn: Any = None) -> None:
    """Run the action armed at ``name``, if any; ``conn`` is the psycopg connection of a database step."""
    if name in _armed:
        _fire(name, conn)


def _fire(name: str, conn: Any) -> None:
    k = _next_pass(name)  # which pass this is, counted over every process sharing the state directory
    for step in _armed[name]:
        if step.fires is None or k < step.fires:
            if step.task != "off":
                _record_fire(name)
            _run(name, step, conn)
            return
        k -= step.fires
    # every counted step used up: nothing happens


def _state_path(name: str, suffix: str, state_dir: str | os.PathLike[str] | None = None) -> str | None:
    directory = state_dir or os.environ.get(STATE_ENV)
    return os.path.join(directory, name + suffix) if directory else None


def _append_byte(path: str) -> int:
    """Append one byte to ``path``; return its index (atomic across processes: O_APPEND, then our own offset)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, b"x")
        return os.lseek(fd, 0, os.SEEK_CUR) - 1  # this descriptor's offset: just past our byte
    finally:
        os.close(fd)


def _next_pass(name: str) -> int:
    path = _state_path(name, ".passes")
    if path is None:
        _passes[name] = _passes.get(name, 0) + 1
        return _passes[name] - 1
    return _append_byte(path)


def _record_fire(name: str) -> None:
    path = _state_path(name, ".fired")
    if path is None:
        _fired[name] = _fired.get(name, 0) + 1
    else:
        _append_byte(path)


def fired(name: str, state_dir: str | os.PathLike[str] | None = None) -> int:
    """How often ``name``'s action ran: in this process, or in every process sharing the state directory
    (``state_dir``, else ``$INGESTOR_FAILPOINTS_STATE``)."""
    path = _state_path(name, ".fired", state_dir)
    if path is None:
        return _fired.get(name, 0)
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def _run(name: str, step: Step, conn: Any) -> None:
    task = step.task
    if task == "off":
        return
    if task == "sleep":
        time.sleep((step.arg or 0) / 1000)  # parse() gives sleep its argument
    elif task == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)  # pragma: no cover - SIGKILL is not deliverable late, but never go on
    elif task in ("enospc", "eio"):
        code = errno.ENOSPC if task == "enospc" else errno.EIO
        raise OSError(code, f"{os.strerror(code)} (failpoint {name})")
    elif task == "disconnect":
        # The server ends the session: the error that follows is PostgreSQL's own (57P01).
        conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")


arm_from_environment()
