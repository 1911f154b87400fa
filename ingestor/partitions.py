"""Day partitions over their life: which to archive, retention that drops only what is archived, and the list.

What ``ingestor partitions list`` shows and the lifecycle child
(ingestor/lifecycle.py) does hourly, over ingestor/archive.py's verified
archive of one partition (docs/operations.md#the-archive-of-old-days).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import NamedTuple

import psycopg
from psycopg import sql

from . import archive
from .errors import ArchiveError
from .schema import day_partitions_before, one, set_search_path

log = logging.getLogger(__name__)


def unarchived_before(conn: psycopg.Connection, cutoff: dt.date) -> list[tuple[str, dt.date]]:
    """(partition, day) of the day partitions wholly before ``cutoff`` with no recorded archive, oldest first."""
    done = {p for (p,) in conn.execute("SELECT partition FROM ingestor_archives")}
    return [(p, d) for p, d in day_partitions_before(conn, cutoff) if p not in done]


def archive_before(dsn: str, schema: str, target: archive.Target, cutoff: dt.date) -> tuple[list[archive.Archived], list[str]]:
    """Archive every unarchived day partition wholly before ``cutoff``; return (archived, errors).

    One partition's failure (logged as an ERROR naming it) does not stop the
    others. Raises psycopg.Error when the database cannot be reached.
    """
    done, errors = [], []
    with psycopg.connect(dsn, autocommit=True) as conn:
        set_search_path(conn, schema)
        for partition, day in unarchived_before(conn, cutoff):
            try:
                done.append(archive.archive_partition(conn, target, partition, day))
            except (ArchiveError, OSError, psycopg.Error) as e:
                log.error("Archive of %s to %s failed; the partition stays in PostgreSQL: %s", partition, target.uri, e)
                if conn.closed:
                    raise  # the database went away: the others would fail alike
                errors.append(f"{partition}: {e}")
    return done, errors


class Retired(NamedTuple):
    dropped: list[tuple[str, int]]  #: (partition, rows)
    refused: list[tuple[str, str]]  #: (partition, why)


def retire(dsn: str, schema: str, cutoff: dt.date, target: archive.Target | None) -> Retired:
    """Retention: drop the day partitions wholly before ``cutoff``.

    Without a target, every one (``ingestor_drop_partitions_before``). With
    one, only those whose verified archive is recorded, lies under
    ``target``, is there with its recorded size, and read back now holds
    its recorded rows and checksum (a same-size corruption is caught:
    :func:`ingestor.archive.verify`, ~900,000 rows/s); the others are
    refused and logged as ERRORs. Raises psycopg.Error when the database
    cannot be reached.
    """
    dropped, refused = [], []
    with psycopg.connect(dsn, autocommit=True) as conn:
        set_search_path(conn, schema)
        if target is None:
            before = {p for p, _ in day_partitions_before(conn, cutoff)}
            conn.execute("SELECT ingestor_drop_partitions_before(%s)", (cutoff,))
            after = {p for p, _ in day_partitions_before(conn, cutoff)}
            dropped = [(p, -1) for p in sorted(before - after)]
        else:
            archives = {p: (loc, size, rows, int(checksum)) for p, loc, size, rows, checksum in conn.execute(
                "SELECT partition, location, file_bytes, rows, checksum FROM ingestor_archives")}
            for partition, _ in day_partitions_before(conn, cutoff):
                why = _why_not_droppable(target, partition, archives.get(partition))
                if why is None:
                    try:
                        rows = one(conn.execute("SELECT ingestor_drop_archived_partition(%s)", (partition,)))
                        dropped.append((partition, int(rows)))
                        continue
                    except psycopg.errors.ObjectNotInPrerequisiteState as e:
                        why = e.diag.message_primary or str(e)
                refused.append((partition, why))
                log.error("Retention refused to drop %s: %s", partition, why)
    if dropped:
        log.info("Retention: dropped %d day partition(s) before %s: %s", len(dropped), cutoff,
                 ", ".join(p for p, _ in dropped))
    return Retired(dropped, refused)


def _why_not_droppable(target: archive.Target, partition: str,
                       recorded: tuple[str, int, int, int] | None) -> str | None:
    name = archive.file_name(partition)
    if recorded is None:
        return f"no verified archive (archive it to {target.uri} first)"
    location, size, rows, checksum = recorded
    if location != target.location(name):
        return f"archived at {location}, not under --archive-to {target.uri}"
    try:
        found = target.size(name)
    except OSError as e:
        return f"cannot check {location}: {e}"
    if found != size:
        return f"{location} is {'missing' if found is None else f'{found} bytes'}, recorded {size} bytes"
    try:
        got = archive.verify(target, name)
    except (OSError, ArchiveError) as e:
        return f"cannot read {location} back: {e}"
    except Exception as e:  # pyarrow's and DuckDB's errors for a file that is not Parquet any more
        return f"cannot read {location} back: {' '.join(str(e).split())[:200]}"
    if got != (rows, checksum):
        return (f"{location} read back holds {got[0]} rows, checksum {got[1]}; recorded {rows} rows, checksum "
                f"{checksum}: changed since it was verified")
    return None


# -- what `ingestor partitions list` shows -------------------------------------------------------


class PartitionState(NamedTuple):
    partition: str
    day: dt.date | None
    rows: int | None  #: counted, or archived; None when only estimated
    rows_estimate: int  #: PostgreSQL's estimate (pg_class.reltuples), -1 when never analysed
    table_bytes: int | None  #: in PostgreSQL with indexes; None once dropped
    location: str | None
    file_bytes: int | None
    verified_at: dt.datetime | None


def partitions(dsn: str, schema: str, count: bool = False) -> list[PartitionState]:
    """The day partitions (live, and dropped but archived), oldest first; ``count``: count live rows exactly."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        set_search_path(conn, schema)
        archives = {r[0]: r[1:] for r in conn.execute(
            "SELECT partition, day, rows, location, file_bytes, verified_at FROM ingestor_archives")}
        live = conn.execute(
            "SELECT c.relname, pg_total_relation_size(c.oid), c.reltuples::bigint FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'weighing_logs'::regclass ORDER BY 1").fetchall()
        out = []
        for name, size, estimate in live:
            day = dt.datetime.strptime(name[-8:], "%Y%m%d").date() if name[-8:].isdigit() else None
            rows = None
            if count:
                rows = one(conn.execute(sql.SQL("SELECT count(*) FROM weighing_logs WHERE tableoid = {}::regclass")
                                        .format(sql.Literal(name))))
            a = archives.pop(name, None)
            out.append(PartitionState(name, day, rows, estimate, size, a[2] if a else None, a[3] if a else None,
                                      a[4] if a else None))
        for name, (day, rows, location, file_bytes, verified_at) in archives.items():
            out.append(PartitionState(name, day, rows, -1, None, location, file_bytes, verified_at))
    return sorted(out, key=lambda p: (p.day or dt.date.max, p.partition))


class Verdict(NamedTuple):
    partition: str
    location: str
    ok: bool
    detail: str  #: "N rows" when ok, else what differs or why it could not be read


def verify_archives(dsn: str, schema: str, endpoint: str = "") -> list[Verdict]:
    """Read every recorded archive back and compare its rows and checksum with the record, oldest first.

    A file that is missing, unreadable, or holds other rows than recorded
    gets ``ok`` False. Raises psycopg.Error when the database cannot be reached.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        set_search_path(conn, schema)
        recorded = conn.execute("SELECT partition, location, rows, checksum FROM ingestor_archives ORDER BY day").fetchall()
    out = []
    for partition, location, rows, checksum in recorded:
        try:
            target, name = archive.Target.of_location(location, endpoint)
            if target.size(name) is None:
                out.append(Verdict(partition, location, False, "missing"))
                continue
            got_rows, got_checksum = archive.verify(target, name)
        except (OSError, ArchiveError) as e:
            out.append(Verdict(partition, location, False, f"unreadable: {e}"))
            continue
        if (got_rows, got_checksum) == (rows, int(checksum)):
            out.append(Verdict(partition, location, True, f"{rows} rows"))
        else:
            out.append(Verdict(partition, location, False, f"CHANGED: {got_rows} rows, checksum {got_checksum}; "
                                                           f"recorded {rows} rows, checksum {checksum}"))
    for v in out:
        if not v.ok:
            log.error("Archive of %s at %s does not verify: %s", v.partition, v.location, v.detail)
    return out


def format_partitions(states: list[PartitionState]) -> str:
    """The table of ``ingestor partitions list``: estimated rows carry a ``~``; sizes in MiB."""
    def mib(n: int | None) -> str:
        return "-" if n is None else f"{n / 2**20:.1f}"

    lines = [f"{'PARTITION':<33} {'ROWS':>12} {'PG MiB':>9} {'FILE MiB':>9}  {'VERIFIED (UTC)':<19}  ARCHIVED AT"]
    for p in states:
        rows = (f"{p.rows:,}" if p.rows is not None
                else f"~{p.rows_estimate:,}" if p.rows_estimate >= 0 else "?")
        where = p.location or ("-" if p.table_bytes is not None else "")
        when = p.verified_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if p.verified_at else "-"
        name = p.partition + ("" if p.table_bytes is not None else " (dropped)")
        lines.append(f"{name:<33} {rows:>12} {mib(p.table_bytes):>9} {mib(p.file_bytes):>9}  {when:<19}  {where}")
    return "\n".join(lines)
