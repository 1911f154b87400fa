#!/usr/bin/env python3
"""What one call of the small-batch statement costs the writer's process, by the way it is called.

    python bench/statement_call.py --calls 2000 --rounds 3

Issue 31 asked which of a prepared statement, binary parameters and pipeline
mode serve the one-statement path of small batches (ingestor/writer.py). A
real :class:`ingestor.writer.Writer` on a throwaway PostgreSQL writes batches
of 12 single events; the arguments of its ``ingestor_write_small_batch``
calls are captured and replayed against a function with the same 25
parameters that does nothing (so PostgreSQL's work is the same small constant
in every way), by each way of calling it, interleaved over ``--rounds``:

- ``execute``: ``Connection.execute`` as the writer calls it (psycopg
  prepares the statement from its 5th call: ``prepare_threshold``);
- ``unprepared``: the same with ``prepare=False`` (parsed and planned per call);
- ``cursor``: one long-lived cursor (its adapters found once, not per call);
- ``pipeline``: each call in ``Connection.pipeline()`` (one statement per sync);
- ``libpq``: the arguments dumped to bytes once, then only
  ``PGconn.exec_prepared`` (the floor: what psycopg adds is the difference).

Prints the writer process's CPU µs per call (``time.process_time``) and the
wall µs per call, per way and round.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from throughput import fresh_db, throwaway_server  # noqa: E402

from ingestor import copy_payload  # noqa: E402
from ingestor.protocol import RECORD_DTYPE, Event, RecordBuilder  # noqa: E402
from ingestor.ring import Ring  # noqa: E402
from ingestor.roles import DeadLetterArgs, SharedBlocks, WriterArgs  # noqa: E402
from ingestor.stats import WRITER_DTYPE  # noqa: E402
from ingestor.writer import WRITE_SMALL_BATCH_SQL, SmallBatch, Writer  # noqa: E402

BATCH = 12
SCALES = 300
NOOP_SQL = WRITE_SMALL_BATCH_SQL.replace("ingestor_write_small_batch", "bench_noop_small_batch")


def captured_calls(dsn: str, n: int) -> list[dict]:
    """The arguments of ``n`` small-batch calls a real writer made, in order (batches of BATCH events)."""
    calls: list[dict] = []
    execute = psycopg.Connection.execute

    def capture(self, query, params=None, **kw):
        if query == WRITE_SMALL_BATCH_SQL:
            calls.append(params)
        return execute(self, query, params, **kw)

    ring = Ring.create(lanes=1, lane_capacity=1 << 16, dtype=RECORD_DTYPE)
    psycopg.Connection.execute = capture  # type: ignore[method-assign]
    try:
        args = WriterArgs(shared=SharedBlocks(ring.spec, None, "", ""), index=0, instance="bench", dsn=dsn,
                          schema="public", batch_size=1000, batch_timeout_ms=40,
                          dead_letters=DeadLetterArgs(tempfile.mkdtemp(), 1 << 20), alibi=True)
        writer = Writer(args, ring.lanes[0], np.zeros((), WRITER_DTYPE), lambda: True)
        writer.pool.open(wait=True)
        writer._retrying(writer._recover)
        seqs = dict.fromkeys(range(SCALES), 0)
        for b in range(n):
            builder = RecordBuilder()
            now_us = time.time_ns() // 1000
            for i in range(BATCH):
                scale = (b * BATCH + i) % SCALES
                seqs[scale] += 1
                builder.add(Event(scale_id=scale, seq=seqs[scale], ts=now_us // 1000, data_1="12.5", data_2="kg"),
                            now_us)
            ring.lanes[0].put_all(builder.build(time.time_ns()))
            writer.write_batch(ring.lanes[0].peek(BATCH))
        writer.pool.close()
    finally:
        psycopg.Connection.execute = execute  # type: ignore[method-assign]
        ring.unlink()
        ring.close()
    return calls


def create_noop(conn: psycopg.Connection) -> None:
    signature = conn.execute(
        "SELECT pg_get_function_arguments('ingestor_write_small_batch'::regproc)").fetchone()[0]
    conn.execute(f"CREATE FUNCTION bench_noop_small_batch({signature}) RETURNS boolean LANGUAGE sql AS 'SELECT true'")


def timed(calls: list[dict], call) -> tuple[float, float]:
    """(CPU µs, wall µs) per call of ``call(params)`` over ``calls``."""
    cpu, wall = time.process_time(), time.perf_counter()
    for params in calls:
        call(params)
    n = len(calls)
    return (time.process_time() - cpu) / n * 1e6, (time.perf_counter() - wall) / n * 1e6


def ways(conn: psycopg.Connection, calls: list[dict]) -> dict:
    """Each way of calling (module doc) as a function of one call's arguments."""
    cursor = conn.cursor()
    # the libpq floor: psycopg's own conversion of the query and dumping, done once per call's arguments
    query = psycopg._queries.PostgresQuery(psycopg.adapt.Transformer(conn))
    query.convert(NOOP_SQL, calls[0])
    dumped = []
    for params in calls:
        query.dump(params)
        dumped.append((query.params, query.formats))
    conn.pgconn.prepare(b"bench_noop", query.query, query.types)

    replayed = itertools.cycle(dumped)

    def libpq(params: dict) -> None:
        values, formats = next(replayed)
        result = conn.pgconn.exec_prepared(b"bench_noop", values, formats)
        assert result.status == psycopg.pq.ExecStatus.TUPLES_OK, result.error_message

    def pipeline(params: dict) -> None:
        with conn.pipeline():
            conn.execute(NOOP_SQL, params)

    return {
        "execute": lambda params: conn.execute(NOOP_SQL, params).fetchone(),
        "unprepared": lambda params: conn.execute(NOOP_SQL, params, prepare=False).fetchone(),
        "cursor": lambda params: cursor.execute(NOOP_SQL, params).fetchone(),
        "pipeline": pipeline,
        "libpq": libpq,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    assert SmallBatch._fields  # the captured dicts are keyed by these
    workdir, server = throwaway_server("statement-call")
    try:
        dsn = fresh_db(server, "call")
        calls = captured_calls(dsn, a.calls)
        with psycopg.connect(dsn, autocommit=True) as conn:
            copy_payload.register_dumpers(conn)
            create_noop(conn)
            by_way = ways(conn, calls)
            for call in by_way.values():  # warm: psycopg prepares from the 5th call
                for params in calls[:10]:
                    call(params)
            figures: dict[str, list[tuple[float, float]]] = {w: [] for w in by_way}
            for r in range(a.rounds):
                for way, call in by_way.items():
                    figures[way].append(timed(calls, call))
                    print(f"round {r + 1} {way:>10}: {figures[way][-1][0]:6.1f} µs CPU, "
                          f"{figures[way][-1][1]:6.1f} µs wall per call", flush=True)
        print(f"\n{len(calls)} calls of {BATCH} events per way and round; medians over {a.rounds} rounds:")
        print("| way | CPU µs per call | wall µs per call |\n|---|---:|---:|")
        for way, runs in figures.items():
            print(f"| {way} | {statistics.median(c for c, _ in runs):.1f} | {statistics.median(w for _, w in runs):.1f} |")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
