"""A writer process: one ring lane into PostgreSQL, one transaction per batch.

A batch of up to :data:`SMALL_BATCH` records whose keys continue each of
its scales' head run (the usual case at a low rate) is written by one
autocommitted statement, ``ingestor_write_small_batch`` (migration 007),
which does the four steps below in the database: one round trip instead of
eight. Any other batch, and a small one that function turns down, is written
in one transaction holding four statements:

0. the dedup claim of the batch's (scale_id, seq) keys (:mod:`ingestor.claims`:
   about one row per scale touched); the records already claimed are
   duplicates (docs/PROTOCOL.md §4), counted, not written;
1. ``COPY weighing_logs (...) FROM STDIN (FORMAT BINARY)`` of every record
   (payload from :mod:`ingestor.copy_payload`);
2. one UPSERT of ``scale_current_states`` over the batch's latest record per
   scale, which only replaces a stored state older by (``measured_at``,
   ``seq``) (docs/PROTOCOL.md §4: a late, older event never overwrites a newer state);
3. the lane's checkpoint: the ring position after this batch, in the row of
   (``--instance``, lane), so ingestors sharing a database keep apart.

With the alibi chain on (docs/alibi.md) the new records are linked into
their scales' chains from the heads the claim locked (:mod:`ingestor.chains`):
their record numbers and links go into the COPY, and the new heads into the
claims' UPDATE, which then comes after the UPSERT. The one-statement path
sends the heads this writer last committed; the function refuses the batch
when a head moved on, and the general path writes it.

Only after the commit are the records released from the ring. A writer
killed anywhere leaves its records in the lane; its successor reads the
checkpoint and releases what was already committed, so nothing is written
twice or lost. Two writers (of one instance or several) holding the same
scale take turns on it: the claim locks a batch's scales in ``scale_id``
order before anything else, so they cannot deadlock.

A batch holding acked records commits with ``synchronous_commit = on``
(whatever the role's setting): its replies are sent after the commit, so
with a synchronous standby they wait for the standby too, and a failover
never loses an acknowledged event. Fire-and-forget batches commit with the
role's setting.

Every new connection is checked against the last commit the writer saw
acknowledged: a server whose checkpoint for the lane is behind it (an
asynchronous standby promoted before it received the last commits) lacks
events the writer released, and perhaps acknowledged. They cannot be brought
back; they are counted (``lost_after_commit``), logged at ERROR as ``LOST n``
and turn ``/health`` red (docs/operations.md#scaling-out-and-failover).

Errors are classified by SQLSTATE class (PostgreSQL docs, Appendix A):
a data error (class 22 or 23) is isolated by bisecting the batch, so only
the rejected records are dead-lettered, with PostgreSQL's message and
SQLSTATE; anything else (connection loss, shutdown, deadlock, a missing
table) is retried with exponential backoff and jitter, without releasing.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Callable
from typing import NamedTuple

import msgspec
import numpy as np
import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from . import copy_payload
from .acks import AckTable
from .backoff import Backoff
from .chains import Chains, Reservation, Unreserved, locked_heads
from .claims import Claims
from .copy_payload import INT4_ARRAY_OID, INT8_ARRAY_OID, LINK_ARRAY_OID, BinaryArray
from .deadletter import DeadLetterWriter
from .failpoints import failpoint
from .protocol import DATA_FIELDS, EPOCH, Rejected
from .ring import Lane, Ring, whole
from .roles import WriterArgs
from .schema import one, set_search_path
from .stats import BATCH_MS_BOUNDS, BATCH_SIZE_BOUNDS, Counters, bucket_of, latency_buckets

log = logging.getLogger(__name__)

# Up to this many records a batch goes through the one-statement function: measured
# (issue 12, 300 scales), it took a writer ~2.5x less CPU and PostgreSQL ~1.3x less at
# 12 and 64 events; at 1,000 COPY took PostgreSQL ~10 % less.
SMALL_BATCH = 128
RETRY_MAX_S = 5.0  # a dead server is retried this often at most once backed off
RETRY = Backoff(first_s=0.2, max_s=RETRY_MAX_S, jitter=True)  # a failed write's retries
RESERVE_WAIT_S = 0.05  # a writer past the record numbers reserved looks again this often (the supervisor's loop)
DATA_ERROR_CLASSES = ("22", "23")  # data exception, integrity constraint violation

UPSERT_SQL = f"""
INSERT INTO scale_current_states AS s
    (scale_id, seq, measured_at, {", ".join(DATA_FIELDS)}, updated_at)
SELECT u.scale_id, u.seq,
       timestamptz 'epoch' + u.measured_us * interval '1 microsecond',
       {", ".join(f"CASE WHEN u.d{k} IS NULL THEN NULL ELSE jsonb_build_object('val', u.d{k}) END" for k in range(1, 6))},
       now()
FROM unnest(%b::int4[], %b::int8[], %b::int8[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[])
     AS u(scale_id, seq, measured_us, d1, d2, d3, d4, d5)
ON CONFLICT (scale_id) DO UPDATE SET
    seq = EXCLUDED.seq, measured_at = EXCLUDED.measured_at,
    {", ".join(f"{f} = EXCLUDED.{f}" for f in DATA_FIELDS)},
    updated_at = EXCLUDED.updated_at
WHERE (EXCLUDED.measured_at, EXCLUDED.seq) > (s.measured_at, s.seq)
"""

CHECKPOINT_SQL = """
INSERT INTO ingestor_checkpoints (instance, lane, ring_id, position, persisted, duplicates, failed, updated_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, now())
ON CONFLICT (instance, lane) DO UPDATE SET ring_id = EXCLUDED.ring_id, position = EXCLUDED.position,
    persisted = EXCLUDED.persisted, duplicates = EXCLUDED.duplicates, failed = EXCLUDED.failed,
    updated_at = EXCLUDED.updated_at
"""

class SmallBatch(NamedTuple):
    """The arguments of ``ingestor_write_small_batch`` (sql/010_alibi_chain.sql), each named as its parameter
    without ``p_``, in its order: the statement passes them by name (tests/test_writer.py checks the names and
    the order against the function in the database)."""

    instance: str
    lane: int
    ring_id: str
    position: int  #: the lane's checkpoint once this batch is written
    persisted: int
    duplicates: int
    failed: int
    new_scales: BinaryArray | None  #: int4[] of the scales without a claims row yet
    run_scale: BinaryArray  #: int4[], ascending: the batch's scales, one run of seqs each
    run_lo: BinaryArray  #: int8[]
    run_hi: BinaryArray  #: int8[]
    prev_no: BinaryArray | None  #: int8[], each scale's head record number the links were made on; None: no chain
    head_no: BinaryArray | None  #: int8[], the heads after the batch
    head_link: BinaryArray | None  #: bytea[]
    scale: BinaryArray  #: int4[], the new events
    seq: BinaryArray  #: int8[]
    measured_us: BinaryArray  #: int8[], µs since the Unix epoch
    created_us: int
    d1: BinaryArray  #: text[]
    d2: BinaryArray
    d3: BinaryArray
    d4: BinaryArray
    d5: BinaryArray
    record_no: BinaryArray | None  #: int8[], the new events' record numbers; None: no chain
    link: BinaryArray | None  #: bytea[]


# psycopg's %s lets it choose the format (text for str and int); the arrays go as binary (%b)
_AUTO_FORMAT = {"instance", "lane", "ring_id", "position", "persisted", "duplicates", "failed", "created_us"}
WRITE_SMALL_BATCH_SQL = "SELECT ingestor_write_small_batch({})".format(
    ", ".join(f"p_{name} => %({name}){'s' if name in _AUTO_FORMAT else 'b'}" for name in SmallBatch._fields))


def latest_per_scale(records: np.ndarray) -> np.ndarray:
    """Indices into ``records`` of each scale's greatest (measured_us, seq) record, one per scale."""
    order = np.lexsort((records["seq"], records["measured_us"], records["scale_id"]))
    scales = records["scale_id"][order]
    last = np.ones(len(order), bool)
    last[:-1] = scales[1:] != scales[:-1]
    return order[last]


def upsert_params(records: np.ndarray) -> list[BinaryArray]:
    latest = whole(records)[latest_per_scale(records)].view(records.dtype)
    return [
        BinaryArray(latest["scale_id"], INT4_ARRAY_OID),
        BinaryArray(latest["seq"], INT8_ARRAY_OID),
        BinaryArray(latest["measured_us"], INT8_ARRAY_OID),
        *(BinaryArray.texts(latest, k) for k in range(len(DATA_FIELDS))),
    ]


def _sqlstate(error: BaseException) -> str:
    return getattr(error, "sqlstate", None) or ""


class Writer:
    """Writes lane ``lane.index`` of the ring; ``run()`` returns once ``draining()`` and the lane is written out."""

    def __init__(self, args: WriterArgs, lane: Lane, counters: np.ndarray, draining: Callable[[], bool], *,
                 acks: AckTable | None = None, reservation: Reservation | None = None) -> None:
        """``args``: the role's inputs (ingestor/roles.py); ``lane``: ring lane ``args.index``, attached;
        ``counters``: this writer's 0-d record of ``stats.WRITER_DTYPE``; ``draining()``: True once the
        lane is to be written out and the loop ended; ``acks``: acked mode's table, None when off;
        ``reservation``: the front's record-number reservation (the alibi chain), None: unbounded."""
        self.lane = lane
        self.instance = args.instance
        self.acks = acks
        self.ring_id = args.shared.ring.ring_id
        self.batch_size = args.batch_size
        self.batch_interval_s = args.batch_timeout_ms / 1000
        self.counters = counters
        self.dead_letters = DeadLetterWriter(args.dead_letters.directory, args.name, args.dead_letters.max_bytes)
        self.draining = draining
        schema = args.schema
        self.pool = ConnectionPool(
            args.dsn,
            min_size=1,
            max_size=1,
            open=False,
            name=args.name,
            configure=lambda conn: self._configure(conn, schema),
            # A round trip per batch to test a connection that just worked costs
            # ~100 µs of CPU a transaction; after a failure it is tested first.
            check=lambda conn: ConnectionPool.check_connection(conn) if self._failures else None,
            # The pool's own reconnect backoff doubles without bound for up to
            # reconnect_timeout (300 s by default), so after a long outage it could
            # sleep a minute after the server is back. Giving up early hands
            # reconnection to our circuit breaker: its next probe grows the pool
            # with a fresh, immediate attempt.
            reconnect_timeout=RETRY_MAX_S,
        )
        self.claims = Claims()
        self.chains = Chains(reservation) if args.alibi else None  # the alibi chain (ingestor/chains.py); None: off
        self._waiting_since: float | None = None  # when the writer began waiting for record numbers
        self._failures = 0
        self._offline_since: float | None = None  # when the circuit opened (connection errors)
        # (position, persisted) of the lane's last checkpoint a server acknowledged; None before any,
        # or once a loss against it is counted
        self._acknowledged: tuple[int, int] | None = None
        self._synchronous = False  # the connection's synchronous_commit is "on" (set for acked batches)

    # -- the loop -----------------------------------------------------------

    def run(self) -> None:
        self.pool.open(wait=False)
        try:
            self._retrying(self._recover)
            while True:
                n = self.lane.wait_batch(self.batch_size, self.batch_interval_s, lambda: not self.draining())
                if n == 0:
                    if self.draining() and self.lane.used() == 0:
                        log.info("Lane %d drained; writer exiting", self.lane.index)
                        return
                    continue
                self.write_batch(self.lane.peek(n))
        finally:
            self.pool.close()

    def write_batch(self, records: np.ndarray) -> None:
        """Commit ``records`` (the lane's oldest), isolating rejected ones, then release them."""
        started = time.perf_counter()
        self._write_range(records, self.lane.tail)
        elapsed_us = int((time.perf_counter() - started) * 1e6)
        c = self.counters
        c["batches"] += 1
        c["batch_us_total"] += elapsed_us
        c["last_batch_us"] = elapsed_us
        c["batch_size_hist"][bucket_of(len(records), BATCH_SIZE_BOUNDS)] += 1
        c["batch_ms_hist"][bucket_of(elapsed_us / 1000, BATCH_MS_BOUNDS)] += 1
        log.debug("[BATCH] Persisted %d events in %d ms", len(records), round(elapsed_us / 1000))

    def _write_range(self, records: np.ndarray, first: int) -> None:
        """Commit ``records``, the lane's records at absolute positions ``first`` … ``first + len - 1``.

        Positions are absolute, not relative to the lane's tail: the tail moves
        as each half of a bisect is released, so the checkpoint of the second
        half must not be counted from it again.
        """
        try:
            self._retrying(lambda: self._commit(records, first))
        except _DataError as e:
            if len(records) > 1:
                half = len(records) // 2
                self._write_range(records[:half], first)
                self._write_range(records[half:], first + half)
                return
            self._reject(records, first, e.error)

    def _commit(self, records: np.ndarray, first: int) -> None:
        position = first + len(records)
        created_us = time.time_ns() // 1000
        with self.pool.connection(timeout=RETRY_MAX_S) as conn:
            try:
                failpoint("writer.dedup", conn)
                self._set_synchronous_commit(conn, bool(records["tag"].any()))
                written = self._write_small(conn, records, position, created_us) if len(records) <= SMALL_BATCH else None
                if written is None:
                    written = self._write_general(conn, records, position, created_us)
            except psycopg.Error as e:
                if _sqlstate(e)[:2] in DATA_ERROR_CLASSES:
                    raise _DataError(e) from e
                raise
        self.claims.committed()
        if self.chains is not None:
            self.chains.committed()
        self._committed(records, *written)

    def _set_synchronous_commit(self, conn: psycopg.Connection, acked: bool) -> None:
        """``synchronous_commit = on`` while the batch holds acked records; the role's own setting otherwise.

        A reply says "committed" (docs/PROTOCOL.md §5): not before the WAL is
        flushed, whatever the server's default, and with a synchronous standby
        (``synchronous_standby_names``) not before the standby has it, so a
        failover never loses an acknowledged event. Fire-and-forget batches
        keep the role's setting (``local`` or ``off`` for speed). One SET per
        change of kind, not per batch: a plant's senders are mostly of one kind.
        """
        if acked != self._synchronous:
            conn.execute("SET synchronous_commit = on" if acked else "RESET synchronous_commit")
            self._synchronous = acked

    def _counts(self, records: np.ndarray, fresh: np.ndarray) -> tuple[int, int, np.ndarray]:
        """(persisted, duplicates) as they are once ``records`` commit with ``fresh`` new, and ``fresh``."""
        new = int(np.count_nonzero(fresh))
        return int(self.counters["persisted"]) + new, int(self.counters["duplicates"]) + len(records) - new, fresh

    def _write_small(self, conn: psycopg.Connection, records: np.ndarray, position: int,
                     created_us: int) -> tuple[int, int, np.ndarray] | None:
        """Write ``records`` in one autocommitted statement; None, with nothing written, when it does not apply."""
        runs = self.claims.runs(records["scale_id"], records["seq"])
        if runs is None:
            return None
        fresh = np.zeros(len(records), bool)
        fresh[runs.positions] = True
        new = records[runs.positions]
        chain: dict[str, BinaryArray | None] = dict.fromkeys(("prev_no", "head_no", "head_link", "record_no", "link"))
        if self.chains is not None:
            scales = runs.scale_ids
            heads = self.chains.guess(scales)
            chained = self.chains.link(new, created_us, heads)
            after = self.chains.moved_heads()
            chain = dict(prev_no=BinaryArray(np.array([heads[s].record_no for s in scales], np.int64), INT8_ARRAY_OID),
                         head_no=BinaryArray(np.array([after[s][0] for s in scales], np.int64), INT8_ARRAY_OID),
                         head_link=copy_payload.link_array([after[s][1] for s in scales]),
                         record_no=BinaryArray(chained.record_no, INT8_ARRAY_OID),
                         link=BinaryArray(chained.link, LINK_ARRAY_OID))
        persisted, duplicates, _ = counts = self._counts(records, fresh)
        d1, d2, d3, d4, d5 = (BinaryArray.texts(new, k) for k in range(len(DATA_FIELDS)))
        batch = SmallBatch(
            instance=self.instance, lane=self.lane.index, ring_id=self.ring_id, position=position, persisted=persisted,
            duplicates=duplicates, failed=int(self.counters["failed"]), new_scales=runs.new_scales,
            run_scale=runs.scales, run_lo=runs.first, run_hi=runs.last, scale=BinaryArray(new["scale_id"], INT4_ARRAY_OID),
            seq=BinaryArray(new["seq"], INT8_ARRAY_OID), measured_us=BinaryArray(new["measured_us"], INT8_ARRAY_OID),
            created_us=created_us, d1=d1, d2=d2, d3=d3, d4=d4, d5=d5, **chain)
        failpoint("writer.small_batch", conn)
        written = one(conn.execute(WRITE_SMALL_BATCH_SQL, batch._asdict()))
        self.claims.committed()  # the new scales' rows are there whatever it returned
        return counts if written else None

    def _write_general(self, conn: psycopg.Connection, records: np.ndarray, position: int,
                       created_us: int) -> tuple[int, int, np.ndarray]:
        """Write ``records`` in one transaction of four statements (the module doc)."""
        with conn.transaction(), conn.cursor() as cur:
            # with the chain on, the claims' heads are written with the chain's below, in one UPDATE
            fresh = self.claims.claim(cur, records["scale_id"], records["seq"], write_heads=self.chains is None)
            new = whole(records)[fresh].view(records.dtype)
            chained = None
            if self.chains is not None:
                chained = self.chains.link(new, created_us, locked_heads(self.claims.chain_heads,
                                                                        self.chains.reservation.floor()))
            persisted, duplicates, _ = counts = self._counts(records, fresh)
            if len(new):
                failpoint("writer.copy", conn)
                with cur.copy(copy_payload.COPY_SQL) as copy:
                    copy.write(copy_payload.build(new, created_us, chained))
                failpoint("writer.upsert", conn)
                cur.execute(UPSERT_SQL, upsert_params(new))
            if self.chains is not None:
                failpoint("writer.chain_heads", conn)
                self.claims.write_heads(cur, self.chains.moved_heads())
            failpoint("writer.checkpoint", conn)
            cur.execute(CHECKPOINT_SQL, (self.instance, self.lane.index, self.ring_id, position, persisted, duplicates,
                                         int(self.counters["failed"])))
        return counts

    def _committed(self, records: np.ndarray, persisted: int, duplicates: int, fresh: np.ndarray) -> None:
        failpoint("writer.after_commit")
        if self.acks is not None:
            self.acks.count(self.lane.index, records["tag"], ~fresh)
        now_ns = time.time_ns()
        c = self.counters
        c["persisted"] = persisted
        c["duplicates"] = duplicates
        c["last_commit_ns"] = now_ns
        c["latency_hist"] += latency_buckets(now_ns - records["received_ns"])
        self.lane.release(len(records))
        self._acknowledge(self.lane.tail, persisted)
        failpoint("writer.after_release")

    def _reject(self, records: np.ndarray, first: int, error: psycopg.Error) -> None:
        """Dead-letter the record PostgreSQL refused (lane position ``first``), and move the checkpoint past it.

        A dead letter that cannot be written is logged whole instead
        (:meth:`DeadLetterWriter.write`); the lane goes on either way.
        """
        r = records[0]
        state = _sqlstate(error)
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        rejected = Rejected(
            "rejected_by_database", f"PostgreSQL rejected the row: {message}", int(r["scale_id"]),
            _record_json(r), None,
        )
        self.dead_letters.write([rejected], sqlstate=state)
        self.dead_letters.count_into(self.counters)
        position = first + 1
        c = self.counters
        # failed goes into the checkpoint with the position: a successor of a writer
        # killed after this commit restores it (the identity of docs/operations.md#stats), as it does persisted
        checkpoint = (self.instance, self.lane.index, self.ring_id, position, int(c["persisted"]), int(c["duplicates"]),
                      int(c["failed"]) + 1)

        def advance() -> None:
            with self.pool.connection(timeout=RETRY_MAX_S) as conn:
                failpoint("writer.reject_checkpoint", conn)
                conn.execute(CHECKPOINT_SQL, checkpoint)
                conn.commit()

        self._retrying(advance)
        failpoint("writer.after_reject")
        if self.acks is not None:
            self.acks.count(self.lane.index, records[:1]["tag"], failed=True)
        c["failed"] = checkpoint[-1]
        self.lane.release(1)
        self._acknowledge(position, int(c["persisted"]))
        log.warning("Dead-lettered scale %d seq %d: SQLSTATE %s %s", r["scale_id"], r["seq"], state, message)

    # -- recovery and retries ---------------------------------------------

    def _recover(self) -> None:
        """Release what a crashed predecessor committed but did not release."""
        with self.pool.connection(timeout=RETRY_MAX_S) as conn:
            row = conn.execute(
                "SELECT ring_id, position, persisted, duplicates, failed FROM ingestor_checkpoints "
                "WHERE instance = %s AND lane = %s",
                (self.instance, self.lane.index),
            ).fetchone()
            conn.commit()
        if row is None or row[0] != self.ring_id:
            return
        _, position, persisted, duplicates, failed = row
        self._acknowledge(position, persisted)
        self.counters["persisted"] = persisted
        self.counters["duplicates"] = duplicates
        self.counters["failed"] = failed
        committed = position - self.lane.tail
        if committed > self.lane.used():
            # A checkpoint past what the lane holds would release records never written:
            # refuse, loudly, rather than lose them (they are written again: duplicates at worst).
            log.error("Lane %d: checkpoint position %d is past the lane's head %d; not releasing from it",
                      self.lane.index, position, self.lane.tail + self.lane.used())
            return
        if committed > 0:
            self.lane.release(committed)
            log.warning("Lane %d: released %d events committed before the last writer died", self.lane.index, committed)

    def _retrying(self, attempt: Callable[[], None]) -> None:
        """Run ``attempt`` until it succeeds; retry transient errors with backoff and jitter.

        _DataError propagates at once: retrying a rejected row cannot help.
        Connection errors (SQLSTATE classes 08 and 57, or no connection at
        all) open the circuit: ``connected`` goes to 0 and the server is
        probed at most every RETRY_MAX_S until an attempt succeeds again.
        """
        while True:
            try:
                attempt()
            except _DataError:
                raise
            except Unreserved as e:  # rolled back: wait for the supervisor's record (ingestor/commits.py)
                if self._waiting_since is None:
                    self._waiting_since = time.monotonic()
                    log.warning("Lane %d: waiting for record numbers past %d to be reserved on disk (record %d "
                                "wanted)", self.lane.index, e.reserved, e.wanted)
                time.sleep(RESERVE_WAIT_S)
                continue
            except (psycopg.Error, PoolTimeout) as e:
                self._failures += 1
                connection = _is_connection_error(e)
                if connection and self._offline_since is None:
                    self._offline_since = time.monotonic()
                    self.counters["connected"] = 0
                    log.error("Lane %d: database unreachable; circuit open, probing with backoff up to %.0f s",
                              self.lane.index, RETRY_MAX_S)
                delay = RETRY.delay(self._failures)
                log.warning(
                    "Lane %d: write failed (%s%s); retry %d in %.1f s",
                    self.lane.index, f"SQLSTATE {_sqlstate(e)}: " if _sqlstate(e) else "",
                    str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__,
                    self._failures, delay,
                )
                time.sleep(delay)
                continue
            self._failures = 0
            if self._waiting_since is not None:
                log.info("Lane %d: record numbers reserved after %.1f s", self.lane.index,
                         time.monotonic() - self._waiting_since)
                self._waiting_since = None
            if self._offline_since is not None:
                log.info("Lane %d: database reachable again after %.1f s; circuit closed",
                         self.lane.index, time.monotonic() - self._offline_since)
                self._offline_since = None
            self.counters["connected"] = 1
            return


    # -- each new connection ------------------------------------------------

    def _configure(self, conn: psycopg.Connection, schema: str) -> None:
        """Prepare a new connection (the pool's ``configure``), and check its server kept our commits."""
        copy_payload.register_dumpers(conn)
        set_search_path(conn, schema)
        # The texts of the UPSERT and of a small batch go as binary text[] of UTF-8 bytes, which
        # PostgreSQL reads in the client encoding: a DSN's client_encoding (LATIN1, say) would mangle them.
        conn.execute("SET client_encoding TO 'UTF8'")
        conn.commit()
        # A small batch is one statement: autocommit spares it BEGIN and COMMIT, two
        # round trips; the general path opens its transaction itself.
        conn.autocommit = True
        self._synchronous = False  # a new session: the role's own synchronous_commit
        self._check_commits_kept(conn)

    def _acknowledge(self, position: int, persisted: int) -> None:
        """The lane's commits up to ring ``position`` (``persisted`` events this run) are acknowledged."""
        self._acknowledged = (position, persisted)
        self._publish_acknowledged(position, persisted)

    def _publish_acknowledged(self, position: int, persisted: int) -> None:
        """Store the pair under the sequence lock :func:`ingestor.stats.acknowledged` reads."""
        c = self.counters
        c["acknowledged"] += 1 + c["acknowledged"] % 2  # odd: being written (still odd if a predecessor died writing)
        c["acknowledged_position"], c["acknowledged_persisted"] = position, persisted
        c["acknowledged"] += 1

    def _check_commits_kept(self, conn: psycopg.Connection) -> None:
        """Count and log the committed events this connection's server lacks (an asynchronous failover).

        Runs in the pool's thread. Reading our last acknowledged checkpoint
        *before* the server's makes a race with a commit harmless: the server
        then holds that checkpoint or a later one.
        """
        # The new server may be another one: its claim rows and chain heads are learnt again.
        self.claims.forget()
        if self.chains is not None:
            self.chains.forget()
        acknowledged = self._acknowledged
        if acknowledged is None:
            return
        position, persisted = acknowledged
        row = conn.execute(
            "SELECT ring_id, position, persisted FROM ingestor_checkpoints WHERE instance = %s AND lane = %s",
            (self.instance, self.lane.index),
        ).fetchone()
        if row is not None and row[0] == self.ring_id and row[1] >= position:
            return
        # This run's checkpoints count from 0: a server without any of them lacks them all.
        kept_position, kept = (row[1], row[2]) if row is not None and row[0] == self.ring_id else (None, 0)
        missing = persisted - kept
        self._acknowledged = None  # counted once; the next commit sets it again
        self.counters["lost_after_commit"] += missing
        self._publish_acknowledged(kept_position or 0, kept)  # the supervisor's record follows the database
        info = conn.info
        # Another run's row: a server without any commit of this run, or another service
        # writing this database under the same --instance name (overwriting our rows).
        other = (f"; it holds the checkpoint of another run ({row[0]}): is another service writing this "
                 f"database with --instance {self.instance}?") if row is not None and row[0] != self.ring_id else ""
        log.error(
            "LOST %d committed events: the database at %s:%s lacks lane %d's commits after ring position %s, "
            "up to %d (an asynchronous standby promoted before it received them?); they were released from the "
            "ring (and answered, those sent in acked mode) and cannot be written again "
            "(counted in stats 'lost_after_commit')%s",
            missing, info.host, info.port, self.lane.index, kept_position if kept_position is not None else "0",
            position, other,
        )


class _DataError(Exception):
    """PostgreSQL rejected the data of a batch (SQLSTATE class 22 or 23)."""

    def __init__(self, error: psycopg.Error) -> None:
        super().__init__(str(error))
        self.error = error


def _is_connection_error(e: BaseException) -> bool:
    return isinstance(e, (psycopg.OperationalError, PoolTimeout)) or _sqlstate(e)[:2] in ("08", "57")




def _record_json(r: np.void) -> bytes:
    """The record as a JSON event a sender could have sent (ts as RFC 3339, to the microsecond)."""
    ts = EPOCH + dt.timedelta(microseconds=int(r["measured_us"]))
    event = {"scale_id": int(r["scale_id"]), "seq": int(r["seq"]), "ts": ts.isoformat()}
    for k, name in enumerate(DATA_FIELDS):
        if r["text_len"][k] >= 0:
            event[name] = bytes(r["text"][k]).decode()
    return msgspec.json.encode(event)


def run_writer(args: WriterArgs, stop: Callable[[], bool] | None = None) -> None:
    """Child entry (see :mod:`ingestor.child`): attach to the shared blocks and write lane ``args.index``.

    ``stop`` is not read: SIGTERM alone does not stop a writer: it writes until the supervisor sets
    the ring's draining flag (after the front has stopped) and its lane is
    empty, or until the supervisor itself is gone.
    """
    with args.shared.attached() as (ring, counters, acks):
        _write(args, ring, counters, acks)  # its views into the blocks are gone when it returns


def _write(args: WriterArgs, ring: Ring, counters: Counters, acks: AckTable) -> None:
    mine = counters.writers[args.index : args.index + 1].reshape(())
    mine["pid"] = os.getpid()
    parent = os.getppid()
    Writer(args, ring.lanes[args.index], mine, lambda: ring.draining or os.getppid() != parent,
           acks=acks, reservation=Reservation(counters.front, mine)).run()
