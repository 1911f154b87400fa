"""Every plant into one central database, by PostgreSQL's logical replication
(docs/operations.md#every-plant-into-one-central-database).

Each edge keeps its own PostgreSQL as the durable buffer, with its tables in
a schema of its own (``--schema plant_17``). The edge *publishes*
``weighing_logs`` (through its partitioned root, ``publish_via_partition_root``)
and ``scale_current_states``; the central server *subscribes*, into tables of
the same schema made by the same migrations. PostgreSQL does the rest: the
subscription's replication slot on the edge keeps the WAL the central server
has not confirmed, so a WAN outage delays the central copy and never the
edge, and the copy resumes where it stopped, each row once.

Only inserts and updates are published: the edge's retention (dropping old
day partitions) and any TRUNCATE stay on the edge, and the central server
keeps the whole history. Both objects are named ``ingestor_<schema>``.

A subscription made again (after it was dropped, or its slot invalidated by
``max_slot_wal_keep_size``) copies the edge's tables anew into tables that
already hold most of them. So the central tables carry two triggers of their
own (:data:`ONCE_SQL`, fired by the apply and table-sync workers too:
``ENABLE ALWAYS``): a ``weighing_logs`` row whose (scale_id, seq,
created_at) is there already is skipped, and a ``scale_current_states`` row
of a scale that is there already updates it when it is as new or newer (by
measured_at, then seq: the table's rule). Every row stays once, and the
latest states keep following the edge.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import NamedTuple

import psycopg
from psycopg import sql

from . import schema as schema_mod
from .errors import DatabaseError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10
LAG_EVERY_S = 10.0  # how often a running service reads its central copy's lag

# The central server's own triggers (see the module's docstring). The (scale_id, seq) index serves the lookup;
# created_at in it prunes the lookup to the one day partition a copy of the row can be in.
ONCE_SQL = """
CREATE INDEX IF NOT EXISTS weighing_logs_scale_id_seq ON {schema}.weighing_logs (scale_id, seq);

CREATE OR REPLACE FUNCTION {schema}.ingestor_central_log_once() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT FROM {schema}.weighing_logs WHERE scale_id = NEW.scale_id AND seq = NEW.seq
               AND created_at = NEW.created_at) THEN
        RETURN NULL;  -- a copy of a row the central server holds already
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION {schema}.ingestor_central_state_once() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE {schema}.scale_current_states s SET seq = NEW.seq, measured_at = NEW.measured_at, data_1 = NEW.data_1,
        data_2 = NEW.data_2, data_3 = NEW.data_3, data_4 = NEW.data_4, data_5 = NEW.data_5, updated_at = NEW.updated_at
    WHERE s.scale_id = NEW.scale_id AND (s.measured_at, s.seq) <= (NEW.measured_at, NEW.seq);
    IF FOUND OR EXISTS (SELECT FROM {schema}.scale_current_states WHERE scale_id = NEW.scale_id) THEN
        RETURN NULL;  -- the scale's row is there: updated when this one is as new or newer
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER ingestor_central_log_once BEFORE INSERT ON {schema}.weighing_logs
    FOR EACH ROW EXECUTE FUNCTION {schema}.ingestor_central_log_once();
ALTER TABLE {schema}.weighing_logs ENABLE ALWAYS TRIGGER ingestor_central_log_once;
CREATE OR REPLACE TRIGGER ingestor_central_state_once BEFORE INSERT ON {schema}.scale_current_states
    FOR EACH ROW EXECUTE FUNCTION {schema}.ingestor_central_state_once();
ALTER TABLE {schema}.scale_current_states ENABLE ALWAYS TRIGGER ingestor_central_state_once;
"""
PUBLISHED = ("weighing_logs", "scale_current_states")


def name_of(schema: str) -> str:
    """The publication's, subscription's and replication slot's name for ``schema`` (at most 63 bytes)."""
    return f"ingestor_{schema}"[:63]


class Lag(NamedTuple):
    """The central copy of one edge schema, as the edge's replication slot tells it."""

    slot: str
    active: bool  #: the central server is connected and streaming
    lag_bytes: int | None  #: WAL the central server has not confirmed; None before its first confirmation
    confirmed: str | None = None  #: the slot's confirmed_flush_lsn, as text
    #: table-sync slots on the edge's database: tables of a central copy whose initial copy has not finished
    #: (one that fails again and again keeps its slot: an error loop of the central server shows here)
    syncing_tables: int = 0


def setup(edge_dsn: str, central_dsn: str, schema: str, publisher_dsn: str | None = None,
          partitions_ahead: int = schema_mod.PARTITIONS_AHEAD) -> tuple[bool, bool]:
    """Publish ``schema`` on the edge and subscribe to it on the central server; idempotent.

    ``publisher_dsn``: how the *central server* reaches the edge (default
    ``edge_dsn``): its host must be the edge's address as the central
    server sees it, and its password readable there (in the string, or the
    central server's own password file). Also migrates ``schema`` on the
    central server and creates its day partitions (run it daily there, as
    ``ingestor run`` does hourly on the edge). Returns (publication created,
    subscription created). Raises DatabaseError when the edge's
    ``wal_level`` is not ``logical``; psycopg.Error for what PostgreSQL refuses.
    """
    name = name_of(schema)
    with psycopg.connect(edge_dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as edge:
        level = schema_mod.one(edge.execute("SHOW wal_level"))
        if level != "logical":
            raise DatabaseError(
                f"the edge's wal_level is {level!r}; logical replication needs 'logical': "
                "ALTER SYSTEM SET wal_level = logical, then restart the edge's PostgreSQL")
        published = edge.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,)).fetchone() is None
        if published:
            edge.execute(sql.SQL(
                "CREATE PUBLICATION {} FOR TABLE {} WITH (publish = 'insert, update', publish_via_partition_root = true)"
            ).format(sql.Identifier(name), sql.SQL(", ").join(sql.Identifier(schema, t) for t in PUBLISHED)))
            log.info("Edge: publication %s of %s created", name, ", ".join(f"{schema}.{t}" for t in PUBLISHED))
    schema_mod.migrate(central_dsn, schema, partitions_ahead)
    with psycopg.connect(central_dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as central:
        with central.transaction():
            central.execute(sql.SQL(ONCE_SQL.replace("{schema}", "{0}")).format(sql.Identifier(schema)))
        subscribed = central.execute("SELECT 1 FROM pg_subscription WHERE subname = %s", (name,)).fetchone() is None
        if subscribed:
            # CREATE SUBSCRIPTION runs outside a transaction block (autocommit) and copies what
            # the edge already holds before it streams the rest.
            central.execute(sql.SQL("CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {}").format(
                sql.Identifier(name), sql.Literal(publisher_dsn or edge_dsn), sql.Identifier(name)))
            log.info("Central: subscription %s created", name)
    return published, subscribed


def lag(edge_dsn: str, schema: str) -> Lag | None:
    """The central copy's lag, read on the edge; None when the edge has no such replication slot.

    Raises psycopg.Error when the edge's database cannot be reached.
    """
    with psycopg.connect(edge_dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as edge:
        return read_lag(edge, schema)


def read_lag(edge: psycopg.Connection, schema: str) -> Lag | None:
    """:func:`lag` on an open (autocommit) connection to the edge."""
    row = edge.execute(
        "SELECT slot_name, active, pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, "
        "confirmed_flush_lsn::text, (SELECT count(*) FROM pg_replication_slots s WHERE s.database = current_database() "
        "AND s.slot_name ~ '^pg_[0-9]+_sync_[0-9]+_[0-9]+$')::int "
        "FROM pg_replication_slots WHERE slot_name = %s", (name_of(schema),)).fetchone()
    return Lag(*row) if row else None


class TableState(NamedTuple):
    """One table of a subscription, as the central server tells it (``central status --central-dsn``)."""

    table: str
    state: str  #: pg_subscription_rel.srsubstate: i(nit), d(ata copy), f(inished copy), s(ync), r(eady)


class Subscription(NamedTuple):
    """The subscription on the central server: its tables and the errors it has counted (PostgreSQL 15+)."""

    enabled: bool
    tables: list[TableState]
    apply_errors: int | None  #: pg_stat_subscription_stats.apply_error_count; None before PostgreSQL 15
    sync_errors: int | None  #: … .sync_error_count: failures of the initial copy of a table

    @property
    def failing(self) -> bool:
        """Errors counted while a table is not ready (or the subscription is disabled): the copy is not following."""
        return not self.enabled or (any(t.state != "r" for t in self.tables) and bool(self.sync_errors)) \
            or bool(self.apply_errors)


STATES = {"i": "initializing", "d": "copying data", "f": "copy finished", "s": "synchronized", "r": "ready"}


def subscription(central_dsn: str, schema: str) -> Subscription | None:
    """The subscription of ``schema`` on the central server; None when there is none. psycopg.Error otherwise."""
    with psycopg.connect(central_dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as central:
        row = central.execute("SELECT oid, subenabled FROM pg_subscription WHERE subname = %s",
                              (name_of(schema),)).fetchone()
        if row is None:
            return None
        tables = [TableState(t, st) for t, st in central.execute(
            "SELECT srrelid::regclass::text, srsubstate FROM pg_subscription_rel WHERE srsubid = %s ORDER BY 1",
            (row[0],))]
        errors = (None, None)
        if central.info.server_version >= 150000:
            errors = central.execute("SELECT apply_error_count, sync_error_count FROM pg_stat_subscription_stats "
                                     "WHERE subid = %s", (row[0],)).fetchone() or (0, 0)
        return Subscription(row[1], tables, *errors)


class LagWatch(threading.Thread):
    """Reads the central copy's lag every LAG_EVERY_S in a daemon thread, for the stats (``central_lag_bytes``).

    A thread, not the supervisor's loop: a connection attempt to a database
    that went away may take seconds, and the loop must keep answering
    signals and stats. :attr:`latest` is None while there is no
    subscription (or the database is unreachable).
    """

    def __init__(self, dsn: str, schema: str) -> None:
        super().__init__(name="central-lag", daemon=True)
        self.dsn, self.schema = dsn, schema
        self.latest: Lag | None = None
        self._stop = threading.Event()
        self._unconfirmed_since: float | None = None  # when the slot's confirmation last stopped moving under lag

    @property
    def stalled_s(self) -> float:
        """Seconds the central server has confirmed nothing while WAL waited for it (down, or failing again and
        again); 0 while it follows."""
        since = self._unconfirmed_since
        return 0.0 if since is None else round(time.monotonic() - since, 1)

    def _observe(self, lag: Lag | None) -> None:
        previous, self.latest = self.latest, lag
        if lag is None or not lag.lag_bytes:
            self._unconfirmed_since = None
        elif previous is None or previous.confirmed != lag.confirmed:
            self._unconfirmed_since = None if previous is not None else time.monotonic()
        elif self._unconfirmed_since is None:
            self._unconfirmed_since = time.monotonic()

    def run(self) -> None:
        conn: psycopg.Connection | None = None  # kept between reads; opened again after an error
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=2)
                self._observe(read_lag(conn, self.schema))
            except psycopg.Error as e:
                self._observe(None)
                log.debug("Central copy's lag unknown: %s", e)
                if conn is not None:
                    conn.close()
                    conn = None
            self._stop.wait(LAG_EVERY_S)
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
