"""The history's lifecycle child: archive old day partitions, then retention (docs/operations.md#the-archive-of-old-days).

Once at start and then every ``every_s`` (an hour), in this order:

1. with ``--archive-after-days N``: archive each day partition wholly older
   than N days that has no archive yet (:func:`ingestor.partitions.archive_before`);
2. with ``--retention-days M``: drop the day partitions wholly older than M
   days; with ``--archive-to``, only those whose verified archive is
   recorded and present, the others refused and logged as ERRORs
   (:func:`ingestor.partitions.retire`).

A child process, not a thread of the supervisor: an archive reads a whole
day (26 million rows at the plant's rate) through pyarrow and DuckDB, which
must not stall the supervisor's loop, and runs at a lower CPU priority
(``NICE``) so the writers keep theirs on a small box. SIGTERM abandons the
partition in hand (its temporary file removed, nothing recorded, the next
start archives it again).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import time
from collections.abc import Callable

import psycopg

from . import archive, partitions
from .roles import LifecycleArgs
from .stats import Counters

log = logging.getLogger(__name__)

NICE = 10  # added to the child's nice value: the writers come first
RETRY_AFTER_S = 300.0  # after a pass the database refused, instead of an hour


class Stopped(Exception):
    """SIGTERM arrived: leave the partition in hand."""


def run_lifecycle(args: LifecycleArgs, stop: Callable[[], bool]) -> None:
    """Run passes until SIGTERM or the supervisor's death; returns to exit 0."""
    os.nice(NICE)

    def on_sigterm(signum: int, frame: object) -> None:
        raise Stopped()

    signal.signal(signal.SIGTERM, on_sigterm)
    target = archive.Target(args.archive_to, args.archive_endpoint) if args.archive_to else None
    counters = Counters.attach(args.counters, args.lanes) if args.counters else None
    next_pass = 0.0
    try:
        while not stop():
            if time.monotonic() >= next_pass:
                ok = run_pass(args, target, counters)
                next_pass = time.monotonic() + (args.every_s if ok else RETRY_AFTER_S)
            time.sleep(1.0)
    except Stopped:
        log.info("Stopped")
    finally:
        if counters is not None:
            counters.close()


def run_pass(args: LifecycleArgs, target: archive.Target | None, counters: Counters | None = None,
             today: dt.date | None = None) -> bool:
    """One pass: archive, then retention, counted in ``counters`` (archived_partitions, archive_failures,
    retention_refused). False when the database could not be reached (retried sooner)."""
    today = today or dt.datetime.now(dt.UTC).date()
    front = counters.front if counters is not None else None
    try:
        if target is not None and args.archive_after_days:
            done, errors = partitions.archive_before(args.dsn, args.schema, target,
                                                  today - dt.timedelta(days=args.archive_after_days))
            if front is not None:
                front["archived_partitions"] += len(done)
                front["archive_failures"] += len(errors)
        if args.retention_days:
            retired = partitions.retire(args.dsn, args.schema, today - dt.timedelta(days=args.retention_days), target)
            if front is not None:
                front["retention_refused"] = len(retired.refused)
    except psycopg.Error as e:
        log.error("Archive and retention pass failed (again in %.0f s): %s", RETRY_AFTER_S, e)
        return False
    return True
