"""The last commits a service acknowledged, kept on its own disk and checked at its next start.

A writer checks each new connection against the last commit it saw
acknowledged (ingestor/writer.py), but only while the service runs. A
failover to an asynchronous standby, or a restore of the database to an
earlier point, while the service is stopped would take commits away unseen.
So the supervisor keeps, in ``<data_dir>/commits-<instance>-<schema>.json``,
each lane's last acknowledged checkpoint — written every
:data:`RECORD_EVERY_S` while running and at each clean stop, fsync'd and
atomically replaced — and at start compares it with the database's
``ingestor_checkpoints`` (docs/operations.md#loss-detected-at-start):

* same run (``ring_id``) and the database's position behind: the lane lacks
  ``persisted`` minus the database's;
* another run's row, or none: the lane lacks ``lifetime`` minus the
  database's (``lifetime`` counts the lane's commits over all runs, kept by a
  trigger, sql/011_commits_known_at_start.sql).

A record written at a clean stop is exact; one written while running (the
service was killed) may be older than the last commits, so the count is "at
least". A record of another database (``ingestor_database.id`` differs: a new,
empty one) is not compared.

The same record reserves the alibi chains' record numbers
(docs/alibi.md#after-a-restore), as PostgreSQL logs a sequence's values
ahead of their use: the writers commit no record number above
``records_reserved`` (published to them in the shared counters only after
the record holding it was written), and the supervisor raises it by
:data:`RESERVE` whenever a writer's number comes within half of it. When a
loss is found at start, or the last run was killed (its commits after the
record cannot be told from the record alone), every chain skips to the
reserved number (:func:`skip`): no number a receipt may name is given again.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path
from typing import NamedTuple

import msgspec
import psycopg

from .failpoints import failpoint
from .schema import one, row, set_search_path

log = logging.getLogger(__name__)

RECORD_EVERY_S = 2.0
RESERVE = 100_000  # record numbers reserved ahead of the greatest a writer used (a scale's ~1 day at 1 event/s)


class LaneCommit(msgspec.Struct):
    """One lane's last acknowledged checkpoint, as ``ingestor_checkpoints`` holds it."""

    ring_id: str  #: the run (its ring's id)
    position: int  #: ring position after the lane's last commit
    persisted: int  #: events the lane committed in this run
    lifetime: int  #: events the lane committed over all runs of the instance


class Record(msgspec.Struct):
    """The file's content."""

    database: str  #: ``ingestor_database.id`` of the database the commits went to
    instance: str
    schema: str
    clean: bool  #: written at a clean stop: nothing was committed after it
    written_at: str  #: RFC 3339, UTC
    lanes: dict[int, LaneCommit]
    records_reserved: int = 0  #: no alibi record number above this was given while the record held it


class Shortfall(NamedTuple):
    lane: int
    missing: int  #: events
    recorded: LaneCommit
    held: LaneCommit | None  #: the database's checkpoint; None: it has none for the lane


def path(data_dir: str | os.PathLike[str], instance: str, schema: str) -> Path:
    return Path(data_dir) / f"commits-{instance}-{schema}.json"


def load(file: Path) -> Record | None:
    """The record in ``file``; None when there is none. ValueError naming the file when it cannot be read."""
    try:
        return msgspec.json.decode(file.read_bytes(), type=Record)
    except FileNotFoundError:
        return None
    except (OSError, msgspec.DecodeError) as e:
        raise ValueError(f"cannot read the record of the last commits {file}: {e}") from None


def save(file: Path, record: Record) -> None:
    """Replace ``file`` with ``record`` atomically and durably (write, fsync, rename, fsync the directory).

    Raises OSError (ENOSPC, EIO, …); ``file`` then still holds the previous record.
    """
    tmp = file.with_name(file.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        failpoint("commits.save")
        os.write(fd, msgspec.json.encode(record))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, file)
    directory = os.open(file.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def database_state(conn: psycopg.Connection, schema: str, instance: str) -> tuple[str, dict[int, LaneCommit]]:
    """(``ingestor_database.id``, the instance's checkpoints by lane) of the database ``conn`` reaches."""
    set_search_path(conn, schema)
    database = one(conn.execute("SELECT id::text FROM ingestor_database"))
    rows = conn.execute("SELECT lane, ring_id, position, persisted, lifetime FROM ingestor_checkpoints "
                        "WHERE instance = %s", (instance,)).fetchall()
    return database, {lane: LaneCommit(ring_id, position, persisted, lifetime)
                      for lane, ring_id, position, persisted, lifetime in rows}


def shortfalls(record: Record, held: dict[int, LaneCommit]) -> list[Shortfall]:
    """Each lane whose recorded commits the database's checkpoints ``held`` lack (rules of the module docstring)."""
    out = []
    for lane, mine in sorted(record.lanes.items()):
        theirs = held.get(lane)
        if theirs is not None and theirs.ring_id == mine.ring_id:
            missing = mine.persisted - theirs.persisted if theirs.position < mine.position else 0
        else:
            missing = mine.lifetime - (theirs.lifetime if theirs is not None else 0)
        if missing > 0:
            out.append(Shortfall(lane, missing, mine, theirs))
    return out


def skip(conn: psycopg.Connection, floor: int, instance: str, lost: int) -> int:
    """Every chain of the database ``conn`` reaches continues after ``floor`` (docs/alibi.md#after-a-restore).

    In one transaction: the skip recorded in ``ingestor_alibi_skips`` and each
    head below ``floor`` moved to it, its link kept (the next record links to
    the last one stored), locked in ``scale_id`` order like every claim.
    Returns the number of chains moved. Raises psycopg.Error (nothing changed).
    """
    with conn.transaction():
        conn.execute("INSERT INTO ingestor_alibi_skips (floor, instance, lost) VALUES (%s, %s, %s) "
                     "ON CONFLICT (floor) DO NOTHING", (floor, instance, lost))
        conn.execute("SELECT FROM ingestor_claims WHERE record_no < %s ORDER BY scale_id FOR UPDATE", (floor,))
        return conn.execute("UPDATE ingestor_claims SET record_no = %s WHERE record_no < %s", (floor, floor)).rowcount


def numbers_held(conn: psycopg.Connection) -> tuple[int, int]:
    """(the greatest record number of any chain's head, the greatest skip floor) the database holds; 0 for none."""
    held, floor = row(conn.execute("SELECT (SELECT coalesce(max(record_no), 0) FROM ingestor_claims), "
                                   "(SELECT coalesce(max(floor), 0) FROM ingestor_alibi_skips)"))
    return int(held), int(floor)


class Keeper:
    """The supervisor's side: :meth:`check` once at start, then :meth:`keep` every RECORD_EVERY_S and at a clean stop.

    ``reserved`` and ``floor`` are for the writers (0 until :meth:`check` succeeded): the greatest record number
    they may commit, and where a chain begun now starts.
    """

    def __init__(self, data_dir: str | os.PathLike[str], instance: str, schema: str, alibi: bool = True) -> None:
        self.file = path(data_dir, instance, schema)
        self.instance, self.schema, self.alibi = instance, schema, alibi
        self._database: str | None = None  # known once check() succeeded: no record is written before
        self._lanes: dict[int, LaneCommit] = {}
        self._failing = False
        self.reserved = 0
        self.floor = 0
        self.skipped = False  #: check() moved the chains to a new floor (the supervisor seals them before going on)

    @property
    def checked(self) -> bool:
        return self._database is not None

    def check(self, dsn: str) -> int:
        """Compare the record left by the last run with the database; log each shortfall at ERROR as ``LOST``.

        With the chains on, a loss found or a record left by a killed run makes
        every chain skip to the numbers the last run reserved (:func:`skip`).
        Returns the events missing (0 when none, no record, or a record of
        another database). Raises psycopg.Error when the database cannot be
        read or the skip written (nothing was logged: call again later).
        """
        try:
            record = load(self.file)
        except ValueError as e:
            log.error("%s: a loss while the service was stopped cannot be told", e)
            record = None
        with psycopg.connect(dsn, autocommit=True) as conn:
            database, held = database_state(conn, self.schema, self.instance)
            host, port = conn.info.host, conn.info.port
            top, floor = numbers_held(conn) if self.alibi else (0, 0)
            if record is not None and record.database != database:
                log.warning("%s records commits to another database (%s; this one is %s): not compared",
                            self.file, record.database, database)
                record = None
            found = shortfalls(record, held) if record is not None else []
            lost = sum(s.missing for s in found)
            reserved = max(record.records_reserved if record is not None else 0, top, floor)
            if self.alibi and record is not None and (lost or not record.clean):
                if reserved > floor:
                    moved = skip(conn, reserved, self.instance, lost)
                    log.warning("Alibi chains skip to record %d (%d chain(s) moved): %s, so record numbers up to "
                                "%d may have been given to weighings the database no longer holds (docs/alibi.md"
                                "#after-a-restore)", reserved + 1, moved, f"{lost} committed events are missing"
                                if lost else "the last run was killed", reserved)
                    floor = reserved
                self.skipped = True  # sealed before the writers go on (again, if a run died before it could)
        self._database, self._lanes = database, dict(held)  # this run starts from what the database holds
        self.reserved, self.floor = reserved + RESERVE, floor
        for s in found:  # found only with a record
            assert record is not None
            behind = (f"position {s.held.position} of the same run" if s.held is not None and s.held.ring_id ==
                      s.recorded.ring_id else f"another run's checkpoint ({s.held.ring_id})" if s.held else "nothing")
            log.error(
                "LOST %s%d committed events: the database at %s:%s holds %s for lane %d, but this service recorded "
                "its commits up to position %d of run %s at %s (a failover or a restore while the service was "
                "stopped?); they were released and answered, and cannot be written again (counted in stats "
                "'lost_after_commit')", "" if record.clean else "at least ", s.missing, host, port, behind, s.lane,
                s.recorded.position, s.recorded.ring_id, record.written_at)
        return lost

    def keep(self, ring_id: str, acknowledged: list[tuple[int, int] | None], clean: bool = False,
             numbers_used: int = 0) -> None:
        """Record each lane's last acknowledged ``(position, persisted)`` of run ``ring_id`` (None: none yet), and
        the record numbers reserved: raised to ``numbers_used`` + RESERVE when the greatest a writer used is within
        half of RESERVE of them.

        Nothing is written before :meth:`check` succeeded. An OSError is logged (once per episode), not raised:
        the service goes on, and a loss while it is stopped is then told from an older record.
        """
        if self._database is None:
            return
        if self.wants_reserve(numbers_used):
            self.reserved = numbers_used + RESERVE
        for lane, ack in enumerate(acknowledged):
            if ack is None:
                continue
            position, persisted = ack
            before = self._lanes.get(lane)
            base = before.lifetime - (before.persisted if before.ring_id == ring_id else 0) if before else 0
            self._lanes[lane] = LaneCommit(ring_id, position, persisted, base + persisted)
        record = Record(self._database, self.instance, self.schema, clean,
                        dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), self._lanes, self.reserved)
        try:
            save(self.file, record)
        except OSError as e:
            if not self._failing:
                log.error("Cannot record the last commits in %s (%s): a loss while the service is stopped would be "
                          "told only from an older record, and record numbers up to %d could be given again after "
                          "a restore; retrying every %.0f s", self.file, e, self.reserved, RECORD_EVERY_S)
            self._failing = True
            return
        if self._failing:
            log.info("Recording the last commits in %s again", self.file)
        self._failing = False

    def wants_reserve(self, numbers_used: int) -> bool:
        """Whether ``numbers_used`` (the greatest record number a writer linked) comes within RESERVE / 2 of the
        numbers reserved."""
        return self.checked and numbers_used > self.reserved - RESERVE // 2
