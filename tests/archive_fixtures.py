"""Day partitions of past days filled with rows, and an S3-compatible server, for the archive tests."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import psycopg
import pytest

from .fix_service import free_port

# Values the archive must carry through CSV and Parquet unchanged.
ODD_VALUES = ["", "0", "12.50", "kg", "°C", "a,b", 'say "hi"', "line\nbreak", "tab\there", "pipe|and:colon",
              "back\\slash", "ünïcødé ✓", "-", "1:x", "NULL", "\\N"]


def past_day(days_ago: int) -> dt.date:
    return dt.datetime.now(dt.UTC).date() - dt.timedelta(days=days_ago)


def partition_name(day: dt.date) -> str:
    return f"weighing_logs_p{day:%Y%m%d}"


def fill_day(conn: psycopg.Connection, day: dt.date, scales: int = 7, per_scale: int = 40, seq_from: int = 1) -> int:
    """Create the day partition of ``day`` (a past day) and store ``scales`` × ``per_scale`` rows in it; return rows.

    Rows are stored out of (scale, time) order, with NULL fields and ODD_VALUES; the even scales' rows carry
    alibi record numbers and links (migration 010), the odd ones' NULLs (written with the chain off).
    """
    start = dt.datetime.combine(day, dt.time(), dt.UTC)
    name = partition_name(day)
    conn.execute(f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF weighing_logs "
                 f"FOR VALUES FROM ('{start.isoformat()}') TO ('{(start + dt.timedelta(days=1)).isoformat()}')")
    rows = []
    for i in range(per_scale):
        for scale in range(1, scales + 1):
            n = len(rows)
            when = start + dt.timedelta(seconds=i * 60 + scale, microseconds=n % 1000)
            fields = [None if (n + k) % 5 == 0 else {"val": ODD_VALUES[(n + k) % len(ODD_VALUES)]} for k in range(5)]
            chain = (seq_from + i, hashlib.sha256(b"%d/%d" % (scale, i)).digest()) if scale % 2 == 0 else (None, None)
            rows.append((scale, seq_from + i, when, when + dt.timedelta(milliseconds=3), *chain, *fields))
    rows.reverse()  # the heap order is not the archive's order
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO weighing_logs (scale_id, seq, measured_at, created_at, record_no, link, data_1, data_2, data_3, "
            "data_4, data_5) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [(*r[:6], *(psycopg.types.json.Jsonb(f) if f is not None else None for f in r[6:])) for r in rows])
    return len(rows)


def rows_of_day(conn: psycopg.Connection, day: dt.date) -> list[tuple]:
    """The day's rows as the archive holds them: data fields as their val strings, ordered by id."""
    start = dt.datetime.combine(day, dt.time(), dt.UTC)
    return conn.execute(
        "SELECT id, scale_id, seq, measured_at, created_at, data_1->>'val', data_2->>'val', data_3->>'val', "
        "data_4->>'val', data_5->>'val', record_no, encode(link, 'hex') FROM weighing_logs "
        "WHERE created_at >= %s AND created_at < %s ORDER BY id",
        (start, start + dt.timedelta(days=1))).fetchall()


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    """A local S3-compatible server (moto in server mode, a stand-in for the plant's store); yields its URL.

    Credentials are dummies put in the environment, where the service reads them from.
    """
    mp = pytest.MonkeyPatch()
    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_EC2_METADATA_DISABLED": "true"}.items():
        mp.setenv(k, v)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                mp.undo()
                raise RuntimeError(f"moto_server did not start on port {port}") from None
            time.sleep(0.1)
    try:
        yield url
    finally:
        mp.undo()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def make_bucket(endpoint: str, bucket: str) -> None:
    import pyarrow.fs as pafs

    host = endpoint.split("://", 1)[1]
    pafs.S3FileSystem(endpoint_override=host, scheme="http", allow_bucket_creation=True).create_dir(bucket)
