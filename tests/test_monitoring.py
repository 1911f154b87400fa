"""HTTP monitoring scraped by real HTTP clients: /metrics, /health, the seed system's JSON endpoints."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ingestor.monitoring import health
from ingestor.stats import Figures, WriterFigures, counter_fields
from tests.fix_service import free_port

pytestmark = pytest.mark.slow
ALERTS = Path(__file__).resolve().parent.parent / "monitoring" / "prometheus" / "alerts.yml"


def get_when(svc, path: str, ready, timeout_s: float = 10) -> tuple[int, bytes]:
    """GET ``path`` until ``ready(status, body)`` holds: the HTTP snapshot is refreshed by the
    supervisor's loop (at least once a second), so it may lag the stats socket."""
    deadline = time.monotonic() + timeout_s
    while True:
        status, body = get(svc, path)
        if ready(status, body) or time.monotonic() > deadline:
            return status, body
        time.sleep(0.1)


def get(svc, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://{svc.http}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def send(svc, n: int, start: int = 0) -> None:
    events = [{"scale_id": i % 7 + 1, "seq": i, "ts": 1_700_000_000_000 + i, "data_1": i} for i in range(start, start + n)]
    svc.send(msgspec.msgpack.encode(events))


def test_metrics_and_seed_endpoints_report_what_the_service_did(service_factory, dsn):
    svc = service_factory("--dsn", dsn, "--writers", "2")
    svc.wait_ready()
    send(svc, 50)
    s = svc.wait_for(lambda s: s["persisted"] == 50)
    status, body = get_when(svc, "/metrics", lambda status, body: b"ingestor_persisted_total 50.0" in body)
    assert status == 200
    metrics = {m.name: m for m in text_string_to_metric_families(body.decode())}
    value = lambda name: metrics[name].samples[0].value  # noqa: E731
    assert value("ingestor_persisted") == 50 and value("ingestor_received_events") == 50
    for name, _ in counter_fields():  # every count of `ingestor stats`, ack_expired and spool_cut_bytes too
        assert metrics[f"ingestor_{name}"].type == "counter" and value(f"ingestor_{name}") == s[name], name
    for metric in set(re.findall(r"\b(ingestor_\w+)", ALERTS.read_text())):  # monitoring/prometheus/alerts.yml names real metrics
        # only with a subscription (tests/test_central.py has them) or an input table (tests/test_mqtt.py)
        if not metric.startswith(("ingestor_central_", "ingestor_input_")):
            assert metric in body.decode(), metric
    assert not any("database" in e["event"] for e in s["recent_events"]), s["recent_events"]  # it never went away
    assert value("ingestor_ring_capacity_slots") == s["ring_capacity"]
    assert value("ingestor_database_connected") == 1
    assert sorted(x.labels["writer"] for x in metrics["ingestor_writer_alive"].samples) == ["0", "1"]
    latency = metrics["ingestor_receive_to_commit_seconds"].samples
    assert [x.value for x in latency if x.name.endswith("_count")] == [50]
    for name in ("ingestor_batch_size_events", "ingestor_batch_duration_seconds"):
        counts = [x.value for x in metrics[name].samples if x.name.endswith("_count")]
        assert counts and counts[0] >= 1, name

    status, body = get(svc, "/health")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    status, body = get(svc, "/api/v1/monitoring/persistence/metrics")
    data = json.loads(body)
    assert status == 200 and data["success"] is True
    assert set(data["data"]) == {"batchQueueSize", "totalEventsProcessed", "totalEventsFailed", "averageBatchSize",
                                 "averageProcessingTimeMs", "lastProcessedTimestamp"}
    assert data["data"]["totalEventsProcessed"] == 50 and data["data"]["batchQueueSize"] == 0
    status, body = get(svc, "/api/v1/monitoring/persistence/health")
    data = json.loads(body)
    assert status == 200 and data["success"] is True
    assert {k: data["data"][k] for k in ("status", "batchProcessorRunning", "databaseConnected")} == \
        {"status": "UP", "batchProcessorRunning": True, "databaseConnected": True}
    assert get(svc, "/nope")[0] == 404
    assert svc.terminate() == 0


@pytest.mark.promise
def test_health_is_503_with_a_reason_while_the_database_is_unreachable(service_factory, own_pg):
    svc = service_factory("--dsn", own_pg.dsn, "--writers", "1", "--batch-timeout-ms", "20")
    svc.wait_ready()
    own_pg.stop("immediate")
    send(svc, 10)
    svc.wait_for(lambda s: not s["database_connected"], timeout_s=30)
    status, body = get_when(svc, "/health", lambda status, body: status == 503)
    assert status == 503 and json.loads(body) == {"status": "unhealthy", "reason": "the database is unreachable"}
    status, body = get(svc, "/api/v1/monitoring/persistence/health")
    assert status == 503 and json.loads(body)["data"]["databaseConnected"] is False
    own_pg.start()
    svc.wait_for(lambda s: s["persisted"] == 10 and s["database_connected"], timeout_s=60)
    assert get_when(svc, "/health", lambda status, body: status == 200)[0] == 200
    assert svc.terminate() == 0


def test_health_rules_name_the_failing_condition():
    writer = WriterFigures(pid=1, alive=True, restarts=0, persisted=0, batches=0, last_batch_ms=0.0)
    base = Figures(writers=[writer], database_connected=True, last_persisted_at="2026-01-01T00:00:00+00:00")
    assert health(base, 60) == (True, "ok")
    dead = msgspec.structs.replace(writer, alive=False)
    assert health(msgspec.structs.replace(base, writers=[dead]), 60) == (False, "no writer is alive")
    stalled = msgspec.structs.replace(base, pending=5)
    ok, reason = health(stalled, 60, now=1767225600 + 61)
    assert not ok and reason == "nothing committed for 61 s with 5 events pending"
    assert health(stalled, 60, now=1767225600 + 30) == (True, "ok")


def test_metrics_are_served_from_the_first_second_while_postgresql_is_awaited(service_factory):
    # finding 9 of issue 26: /metrics answered an empty body until the database was up, so the alert
    # IngestorDatabaseUnreachable could never fire at start
    svc = service_factory("--dsn", f"host=127.0.0.1 port={free_port()} connect_timeout=1")  # nobody listens there
    svc.wait_for(lambda s: s["status"] == "starting")
    status, body = get_when(svc, "/metrics", lambda status, body: b"ingestor_database_connected" in body)
    assert status == 200
    metrics = {m.name: m for m in text_string_to_metric_families(body.decode())}
    assert metrics["ingestor_database_connected"].samples[0].value == 0
    assert svc.stats()["status"] == "starting"
    svc.terminate()
