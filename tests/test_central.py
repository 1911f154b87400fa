"""Every plant into one central database (docs/operations.md#every-plant-into-one-central-database).

Two edges, each a real PostgreSQL with ``wal_level = logical`` and its own
ingestor writing schema ``plant_N``; one central server subscribed to both
by ``ingestor central setup``. The central server is stopped for 60 s
mid-stream: the edges go on as before, and afterwards the central server
holds every row of both plants exactly once.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import msgspec
import psycopg
import pytest

from ingestor.embedded_pg import EmbeddedPostgres

from .replication import FAST

pytestmark = pytest.mark.slow
START_MS = 1_700_000_000_000
SCALES = 20
OUTAGE_S = 60


@pytest.fixture
def edges_and_central() -> Iterator[tuple[list[EmbeddedPostgres], EmbeddedPostgres]]:
    dirs = [tempfile.mkdtemp(prefix="ingestor-central-pg-") for _ in range(3)]
    for d in dirs:
        os.chmod(d, 0o755)  # reachable by the postgres user when the tests run as root
    edges = [EmbeddedPostgres(d, settings={**FAST, "wal_level": "logical"}) for d in dirs[:2]]
    central = EmbeddedPostgres(dirs[2], settings=FAST)
    try:
        for server in (*edges, central):
            server.start()
        yield edges, central
    finally:
        for server in (central, *edges):
            server.stop("immediate")
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


def frames(first_seq: int, count: int) -> list[bytes]:
    """``count`` events per scale, seqs ``first_seq`` … ``first_seq + count - 1``, one frame per seq."""
    return [msgspec.msgpack.encode([{"scale_id": scale, "seq": seq, "ts": START_MS + seq, "data_1": f"{seq}"}
                                    for scale in range(1, SCALES + 1)])
            for seq in range(first_seq, first_seq + count)]


def ingestor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ingestor.cli", *args], capture_output=True, text=True, timeout=120)


def central_rows(central: EmbeddedPostgres, schema: str) -> tuple[int, int]:
    with psycopg.connect(central.dsn, autocommit=True) as c:
        return c.execute(f"SELECT count(*), count(DISTINCT (scale_id, seq)) FROM {schema}.weighing_logs").fetchone()


def wait_central(central: EmbeddedPostgres, schema: str, n: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while (rows := central_rows(central, schema)) != (n, n):
        assert time.monotonic() < deadline, f"{schema} on the central server: {rows}, not {n} rows once each"
        time.sleep(0.2)


def test_two_edges_into_one_central_server_stopped_60_s_mid_stream_hold_every_row_once(
        edges_and_central, service_factory):
    edges, central = edges_and_central
    plants = {}
    for k, edge in enumerate(edges, 1):
        schema = f"plant_{k}"
        svc = service_factory("--dsn", edge.dsn, "--schema", schema, "--writers", "2", box=schema)
        svc.wait_ready()
        plants[schema] = (edge, svc)
        password = edge.passfile.read_text().strip().rsplit(":", 1)[1]
        # the central server reaches the edge with a password it can read: here, in the string
        publisher = f"host=127.0.0.1 port={edge.port} user=postgres dbname=postgres password={password}"
        done = ingestor("central", "setup", "--edge-dsn", edge.dsn, "--central-dsn", central.dsn,
                        "--publisher-dsn", publisher, "--schema", schema)
        assert done.returncode == 0, done.stderr
        assert f"publication ingestor_{schema} on the edge: created" in done.stdout
        again = ingestor("central", "setup", "--edge-dsn", edge.dsn, "--central-dsn", central.dsn,
                         "--publisher-dsn", publisher, "--schema", schema)
        assert again.returncode == 0 and "already there; subscription" in again.stdout, again.stdout + again.stderr

    sent = 0
    for _, svc in plants.values():
        svc.send(*frames(1, 50))
    sent = 50 * SCALES
    for schema, (_, svc) in plants.items():
        svc.wait_for(lambda s: s["persisted"] == sent)
        wait_central(central, schema, sent)

    central.stop("immediate")  # the WAN goes down
    started, seq = time.monotonic(), 51
    while time.monotonic() - started < OUTAGE_S:
        for _, svc in plants.values():
            svc.send(*frames(seq, 2))  # 40 events per plant per second
        seq += 2
        time.sleep(1)
    sent = (seq - 1) * SCALES
    for schema, (edge, svc) in plants.items():
        # the edges never waited for the central server: everything written within seconds
        s = svc.wait_for(lambda s: s["persisted"] == sent and s["pending"] == 0, timeout_s=15)
        assert s["latency_ms"]["p99"] <= 1000, s["latency_ms"]
        status = ingestor("central", "status", "--edge-dsn", edge.dsn, "--schema", schema)
        assert status.returncode == 0 and "central server not connected" in status.stdout, status.stdout

    for _, svc in plants.values():  # the service reports its central copy's lag (read every 10 s)
        held = svc.wait_for(lambda s: (s["central_lag_bytes"] or 0) > 0, timeout_s=30)["central_lag_bytes"]
        metrics = urllib.request.urlopen(f"http://{svc.http}/metrics", timeout=10).read().decode()
        assert "ingestor_central_lag_bytes " in metrics
    central.start()
    for schema, (edge, svc) in plants.items():
        wait_central(central, schema, sent, timeout_s=120)
        with psycopg.connect(edge.dsn, autocommit=True) as e, psycopg.connect(central.dsn, autocommit=True) as c:
            query = f"SELECT scale_id, seq, measured_at, data_1 FROM {schema}.scale_current_states ORDER BY 1"
            assert c.execute(query).fetchall() == e.execute(query).fetchall()
        deadline = time.monotonic() + 60
        while "streaming" not in (status := ingestor("central", "status", "--edge-dsn", edge.dsn,
                                                     "--schema", schema)).stdout:
            assert time.monotonic() < deadline, status.stdout + status.stderr
            time.sleep(0.5)
        caught_up = svc.wait_for(lambda s: s["central_lag_bytes"] is not None and s["central_lag_bytes"] < held,
                                 timeout_s=30)
        print(f"\n{schema}: the central copy's lag {held:,} bytes while it was down ({OUTAGE_S} s), "
              f"{caught_up['central_lag_bytes']:,} after it came back")
        assert svc.terminate() == 0


def test_setup_refuses_an_edge_without_logical_wal_naming_the_setting(dsn):
    done = ingestor("central", "setup", "--edge-dsn", dsn, "--central-dsn", dsn, "--schema", "plant_1")
    assert done.returncode == 2
    assert "the edge's wal_level is 'replica'; logical replication needs 'logical'" in done.stderr
    assert "Traceback" not in done.stderr
    status = ingestor("central", "status", "--edge-dsn", dsn, "--schema", "plant_1")
    assert status.returncode == 1 and "no replication slot ingestor_plant_1" in status.stderr


def setup_central(edge: EmbeddedPostgres, central: EmbeddedPostgres, schema: str) -> subprocess.CompletedProcess:
    password = edge.passfile.read_text().strip().rsplit(":", 1)[1]
    publisher = f"host=127.0.0.1 port={edge.port} user=postgres dbname=postgres password={password}"
    return ingestor("central", "setup", "--edge-dsn", edge.dsn, "--central-dsn", central.dsn,
                    "--publisher-dsn", publisher, "--schema", schema)


def states(server: EmbeddedPostgres, schema: str) -> list[tuple]:
    with psycopg.connect(server.dsn, autocommit=True) as c:
        return c.execute(f"SELECT scale_id, seq, measured_at, data_1 FROM {schema}.scale_current_states ORDER BY 1"
                         ).fetchall()


def wait_states_follow(edge: EmbeddedPostgres, central: EmbeddedPostgres, schema: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while (c := states(central, schema)) != (e := states(edge, schema)):
        assert time.monotonic() < deadline, f"central states {c[:3]}… do not follow the edge's {e[:3]}…"
        time.sleep(0.2)


def status(edge: EmbeddedPostgres, central: EmbeddedPostgres, schema: str) -> subprocess.CompletedProcess:
    return ingestor("central", "status", "--edge-dsn", edge.dsn, "--schema", schema, "--central-dsn", central.dsn)


def copying(edges_and_central, service_factory, seqs: int):
    """(edge, central server, service): plant_1's service on the first edge, subscribed, ``seqs`` frames of every
    scale stored on both."""
    (edge, _), central = edges_and_central
    svc = service_factory("--dsn", edge.dsn, "--schema", "plant_1", "--writers", "2", box="plant_1")
    svc.wait_ready()
    assert setup_central(edge, central, "plant_1").returncode == 0
    svc.send(*frames(1, seqs))
    svc.wait_for(lambda s: s["persisted"] == seqs * SCALES)
    wait_central(central, "plant_1", seqs * SCALES)
    return edge, central, svc


def test_the_documented_recovery_makes_the_subscription_again_with_every_row_once_and_states_following(
        edges_and_central, service_factory):
    # finding 1 of issue 26: dropped and set up again, the central history doubled and its states stopped
    edge, central, svc = copying(edges_and_central, service_factory, 25)
    with psycopg.connect(central.dsn, autocommit=True) as c:
        c.execute("DROP SUBSCRIPTION ingestor_plant_1")  # operations.md: drop it on the central server …
    done = setup_central(edge, central, "plant_1")  # … and run setup again: it copies the tables anew
    assert done.returncode == 0 and "subscription ingestor_plant_1 on the central server: created" in done.stdout
    deadline = time.monotonic() + 60
    while (st := status(edge, central, "plant_1")).stdout.count(": ready") != 2:
        assert time.monotonic() < deadline, st.stdout + st.stderr
        time.sleep(0.5)
    assert st.returncode == 0 and "errors counted: 0 applying changes, 0 copying tables" in st.stdout, st.stdout
    assert central_rows(central, "plant_1") == (25 * SCALES,) * 2  # every row once, none copied twice
    wait_states_follow(edge, central, "plant_1")
    svc.send(*frames(26, 25))  # and the copy goes on
    svc.wait_for(lambda s: s["persisted"] == 50 * SCALES)
    wait_central(central, "plant_1", 50 * SCALES)
    wait_states_follow(edge, central, "plant_1")
    assert setup_central(edge, central, "plant_1").returncode == 0  # a further run changes nothing
    assert central_rows(central, "plant_1") == (50 * SCALES,) * 2
    assert svc.terminate() == 0


def test_a_subscription_failing_again_and_again_is_reported_by_status_stats_and_metrics(
        edges_and_central, service_factory):
    edge, central, svc = copying(edges_and_central, service_factory, 5)
    assert status(edge, central, "plant_1").returncode == 0
    with psycopg.connect(central.dsn, autocommit=True) as c:  # the central server now refuses every new state
        c.execute("ALTER TABLE plant_1.scale_current_states ADD CONSTRAINT refuse CHECK (seq < 0) NOT VALID")
    svc.send(*frames(6, 5))
    deadline = time.monotonic() + 60
    while (st := status(edge, central, "plant_1")).returncode != 1:
        assert time.monotonic() < deadline, st.stdout + st.stderr
        time.sleep(0.5)
    assert "is FAILING" in st.stderr and "Traceback" not in st.stderr
    s = svc.wait_for(lambda s: (s["central_stalled_s"] or 0) > 0, timeout_s=60)  # the edge sees it too
    assert s["central_lag_bytes"] > 0
    alerts = (Path(__file__).resolve().parent.parent / "monitoring" / "prometheus" / "alerts.yml").read_text()
    wanted = set(re.findall(r"\b(ingestor_central_\w+)", alerts))  # the alerts' metrics exist here
    deadline = time.monotonic() + 10
    while True:  # /metrics answers from the loop's last snapshot (refreshed every second): it may lag the stats
        metrics = urllib.request.urlopen(f"http://{svc.http}/metrics", timeout=10).read().decode()
        missing = [m for m in wanted if f"{m} " not in metrics]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not missing, missing
    assert svc.terminate() == 0
