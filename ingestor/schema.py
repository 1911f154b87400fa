"""The database schema: versioned migrations from ``sql/`` and daily partitions.

Migrations are the files ``sql/NNN_name.sql``, applied in version order,
each in its own transaction together with its row in
``ingestor_schema_migrations``; a transaction-level advisory lock keeps two
starting services from applying the same one twice. Applying is idempotent:
a recorded version is skipped.
"""

from __future__ import annotations

import datetime as dt
import importlib.resources
import logging
import re
from typing import Any, NamedTuple

import psycopg
import psycopg.conninfo
from psycopg import sql

from .errors import DatabaseError, MigrationError

log = logging.getLogger(__name__)

PARTITIONS_AHEAD = 7  # days of weighing_logs partitions kept ready ahead of today
CONNECT_TIMEOUT_S = 10  # seconds per connection attempt of migrate()
_LOCK_KEY = 0x5CA1E  # advisory lock held while migrating
_FILE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


class Migration(NamedTuple):
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """The migrations shipped with this version, in version order."""
    found = []
    for entry in importlib.resources.files("ingestor.sql").iterdir():
        m = _FILE.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text()))
    return sorted(found)


def regular_field(column: str) -> str:
    """SQL that is true when jsonb ``column`` is NULL or exactly ``{"val": <string>}`` (docs/PROTOCOL.md §8), the one
    shape a writer stores; false for any other object, array or scalar. Never NULL, never an error, whatever the
    column holds."""
    # CASE evaluates in order, so '-' (an error on a scalar) only ever sees an object
    return (f"CASE WHEN {column} IS NULL THEN true WHEN jsonb_typeof({column}) <> 'object' THEN false "
            f"ELSE coalesce(jsonb_typeof({column}->'val') = 'string' AND {column} - 'val' = '{{}}'::jsonb, false) END")


def set_search_path(conn: psycopg.Connection, schema: str) -> None:
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))


def row(cursor: psycopg.Cursor[Any]) -> tuple[Any, ...]:
    """The one row of a statement that always returns one (an aggregate, a function call, ``SHOW``);
    DatabaseError when it returned none."""
    if (found := cursor.fetchone()) is None:
        raise DatabaseError("PostgreSQL returned no row for a statement that always returns one")
    return found


def one(cursor: psycopg.Cursor[Any]) -> Any:
    """The first column of :func:`row`."""
    return row(cursor)[0]


def migrate(dsn: str, schema: str = "public", partitions_ahead: int = PARTITIONS_AHEAD) -> list[Migration]:
    """Bring the schema ``schema`` of database ``dsn`` up to date; return what was applied.

    Raises MigrationError (naming the migration) when one fails; its
    transaction is rolled back and later migrations are not tried.
    DatabaseError when the database is not UTF8 (:func:`check_encoding`).
    psycopg.OperationalError when the server cannot be reached (within
    CONNECT_TIMEOUT_S unless ``dsn`` sets its own ``connect_timeout``).
    """
    applied = []
    # a host that does not answer would otherwise hold the start for the kernel's TCP timeout (minutes)
    given = "connect_timeout" in psycopg.conninfo.conninfo_to_dict(dsn)
    with psycopg.connect(dsn, autocommit=True, connect_timeout=None if given else CONNECT_TIMEOUT_S) as conn:
        check_encoding(conn)
        # Look before creating: PostgreSQL checks the CREATE privilege even for
        # IF NOT EXISTS, and a least-privilege role (sql/roles.sql) has none.
        if one(conn.execute("SELECT to_regnamespace(%s)", (schema,))) is None:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        set_search_path(conn, schema)
        if one(conn.execute("SELECT to_regclass('ingestor_schema_migrations')")) is None:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS ingestor_schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
        done_versions = {v for (v,) in conn.execute("SELECT version FROM ingestor_schema_migrations")}
        for migration in migrations():
            if migration.version in done_versions:
                continue  # without taking the lock: nothing to do, and no privilege needed
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                done = conn.execute(
                    "SELECT 1 FROM ingestor_schema_migrations WHERE version = %s", (migration.version,)
                ).fetchone()
                if done:
                    continue
                try:
                    conn.execute(migration.sql)
                except psycopg.Error as e:
                    raise MigrationError(
                        f"migration {migration.version:03d}_{migration.name} failed: {e}"
                    ) from e
                conn.execute(
                    "INSERT INTO ingestor_schema_migrations (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
                log.info("Applied migration %03d_%s", migration.version, migration.name)
                applied.append(migration)
        ensure_partitions(conn, partitions_ahead)
    return applied


def check_encoding(conn: psycopg.Connection) -> None:
    """DatabaseError unless the database's encoding is UTF8.

    The binary COPY writes jsonb as UTF-8 bytes whatever the encoding
    (PostgreSQL docs, "COPY", binary format), while the UPSERT's text goes
    through the client encoding: in a LATIN1 database history and latest
    state would disagree ("°C" stored as "Â°C"), and characters LATIN1 lacks
    could not be stored at all. Refused at start, never mangled.
    """
    found = row(conn.execute("SELECT pg_encoding_to_char(encoding), datname FROM pg_database "
                             "WHERE datname = current_database()"))
    # in a SQL_ASCII database psycopg cannot decode text and returns bytes
    encoding, database = (v.decode(errors="replace") if isinstance(v, bytes) else v for v in found)
    if encoding != "UTF8":
        raise DatabaseError(f"database {database!r} has encoding {encoding}; scale-ingestor stores UTF-8 text "
                            f"and needs a UTF8 database (CREATE DATABASE … ENCODING 'UTF8' TEMPLATE template0)")


def ensure_partitions(conn: psycopg.Connection, days_ahead: int = PARTITIONS_AHEAD) -> int:
    """Create the missing daily partitions from today to ``days_ahead`` days on; return how many."""
    row = conn.execute("SELECT ingestor_ensure_partitions(%s)", (days_ahead,)).fetchone()
    created = int(row[0]) if row else 0
    if created:
        log.info("Created %d daily partition(s) of weighing_logs", created)
    return created


REBUILD_STATE_SQL = """
INSERT INTO scale_current_states (scale_id, seq, measured_at, data_1, data_2, data_3, data_4, data_5, updated_at)
SELECT DISTINCT ON (scale_id) scale_id, seq, measured_at, data_1, data_2, data_3, data_4, data_5, now()
FROM weighing_logs
ORDER BY scale_id, measured_at DESC, seq DESC
"""


def rebuild_state(dsn: str, schema: str = "public") -> int:
    """Recompute ``scale_current_states`` from ``weighing_logs`` (the seed system's reindex); return its rows.

    One transaction: the table is emptied and refilled with each scale's
    greatest (measured_at, seq) row still in the history. Writers running
    meanwhile wait on the rows and then apply their own (ts, seq) guard.
    """
    with psycopg.connect(dsn) as conn:
        set_search_path(conn, schema)
        with conn.transaction():
            conn.execute("LOCK TABLE scale_current_states IN SHARE ROW EXCLUSIVE MODE")
            conn.execute("DELETE FROM scale_current_states")
            rows = conn.execute(REBUILD_STATE_SQL).rowcount
    log.info("Rebuilt scale_current_states: %d scales", rows)
    return rows


def day_partitions_before(conn: psycopg.Connection, cutoff: dt.date) -> list[tuple[str, dt.date]]:
    """(name, day) of the day partitions of weighing_logs wholly before ``cutoff``, oldest first."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'weighing_logs'::regclass AND c.relname ~ '^weighing_logs_p[0-9]{8}$' ORDER BY 1"
    ).fetchall()
    days = [(name, dt.datetime.strptime(name[-8:], "%Y%m%d").date()) for (name,) in rows]
    return [(name, day) for name, day in days if day < cutoff]


def maintain_partitions(dsn: str, schema_name: str, partitions_ahead: int) -> None:
    """Create the day partitions of today and ``partitions_ahead`` days ahead (the supervisor, hourly).

    Archive and retention are ingestor/lifecycle.py's. Raises psycopg.Error
    when the database cannot be reached or refuses.
    """
    with psycopg.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
        set_search_path(conn, schema_name)
        ensure_partitions(conn, partitions_ahead)
