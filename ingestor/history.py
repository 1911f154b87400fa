"""One scale's history across the archive and PostgreSQL (docs/operations.md#querying-the-archive).

Days still in PostgreSQL are read from it; days retention dropped are read
from their Parquet archives (``ingestor_archives`` says where), through a
pyarrow dataset whose row-group statistics on ``scale_id`` and
``measured_at`` let it skip the other scales' row groups. DuckDB joins the
two with :data:`HISTORY_SQL`, the query docs/operations.md shows.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

import psycopg

from . import archive
from .errors import ArchiveError
from .schema import set_search_path

# `archived` (a pyarrow dataset of Parquet archives) and `live` (the rows PostgreSQL
# still holds) have the same columns (archive.arrow_schema). UNION, not UNION ALL:
# a day dropped while this runs may be in both, and rows are unique by id.
HISTORY_SQL = """
SELECT * FROM archived WHERE scale_id = $scale AND measured_at >= $since AND measured_at < $until
UNION
SELECT * FROM live WHERE scale_id = $scale AND measured_at >= $since AND measured_at < $until
ORDER BY measured_at, seq
"""
LIVE_COPY = (f"COPY ({archive.ROWS_SELECT} WHERE scale_id = %(scale)s AND measured_at >= %(since)s "
             "AND measured_at < %(until)s) TO STDOUT (FORMAT csv)")
# An event's created_at (its partition's day) is at most this much before its measured_at
# (docs/PROTOCOL.md §3: ts at most 24 h ahead); archives of earlier days cannot hold it.
FUTURE_TOLERANCE = dt.timedelta(hours=24)


def history(dsn: str, schema: str, scale_id: int, since: dt.datetime, until: dt.datetime, endpoint: str = ""):
    """Scale ``scale_id``'s rows with ``since <= measured_at < until`` (aware datetimes), ordered by
    (measured_at, seq), as a ``pyarrow.Table`` of :func:`ingestor.archive.arrow_schema`.

    ``endpoint``: the S3-compatible store's URL for archives under ``s3://``.
    Raises psycopg.Error from PostgreSQL; ArchiveError naming the archive when one cannot be read (the history
    would be incomplete).
    """
    import duckdb
    import pyarrow as pa
    import pyarrow.dataset as ds

    params = {"scale": scale_id, "since": since, "until": until}
    with psycopg.connect(dsn, autocommit=True) as conn:
        set_search_path(conn, schema)
        with conn.cursor().copy(LIVE_COPY, params) as copy:
            live = pa.Table.from_batches(list(archive.arrow_batches(copy)), schema=archive.arrow_schema())
        # listed after the copy: a day dropped meanwhile is then read from its archive too (UNION)
        dropped = conn.execute(
            "SELECT location FROM ingestor_archives a WHERE day >= %s AND NOT EXISTS (SELECT FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'weighing_logs'::regclass "
            "AND c.relname = a.partition) ORDER BY day", (_day_before(since),)).fetchall()
    by_directory: dict[str, list[str]] = defaultdict(list)
    for (location,) in dropped:
        by_directory[location.rsplit("/", 1)[0]].append(location)
    con = duckdb.connect()
    try:
        parts = []
        for locations in by_directory.values():
            targets = [archive.Target.of_location(loc, endpoint) for loc in locations]
            fs = targets[0][0].fs
            parts.append(ds.dataset([t.path(n) for t, n in targets], schema=archive.arrow_schema(),
                                    format="parquet", filesystem=fs))
        archived = ds.dataset(parts, schema=archive.arrow_schema()) if parts else archive.arrow_schema().empty_table()
        con.register("archived", archived)
        con.register("live", live)
        return con.sql(HISTORY_SQL, params=params).to_arrow_table()
    except (OSError, pa.ArrowException, duckdb.Error) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else " ".join(str(e).split())[:300] \
            or type(e).__name__
        where = getattr(e, "filename", None) or ", ".join(loc for (loc,) in dropped)
        raise ArchiveError(f"an archive of a dropped day cannot be read ({where}: {reason}): the history across it "
                           "would be incomplete; 'ingestor partitions verify' checks every archive") from None
    finally:
        con.close()


def _day_before(since: dt.datetime) -> dt.date:
    """The first UTC day whose archive can hold a row measured at ``since`` or later."""
    try:
        return (since - FUTURE_TOLERANCE).date()
    except OverflowError:  # since the year 1: every day
        return dt.date.min
