"""The Grafana dashboard's queries and the alert rules, run by a real Prometheus scraping a real service.

Debian's ``prometheus`` scrapes ``ingestor run`` every second while the test sends events, a bad
frame, and stops PostgreSQL for a while. Then every query of every panel of
monitoring/grafana/dashboards/scale-ingestor.json runs through Prometheus's HTTP API, with the
dashboard's variables resolved as Grafana would: each must return series carrying the labels its
legend names, and rate()/increase() may only take counters. A metric renamed in ingestor/monitoring.py
leaves a query empty and fails here. The same server loads monitoring/prometheus/alerts.yml.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import msgspec
import psycopg
import pytest
import yaml

from ingestor import central, schema
from ingestor.embedded_pg import EmbeddedPostgres
from tests.fix_pg import TEST_SETTINGS
from tests.fix_service import free_port, require_command

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "monitoring" / "grafana" / "dashboards" / "scale-ingestor.json"
ALERTS = ROOT / "monitoring" / "prometheus" / "alerts.yml"
RATE_INTERVAL = "4s"  # Grafana's $__rate_interval at a 1 s scrape: four scrapes
# what the test's traffic must show, by (panel title, query refId): (what, predicate on every value of every series)
EXPECTED = {
    ("Events per second", "A"): ("events received", lambda v: max(v) > 0),
    ("Events per second", "B"): ("events committed", lambda v: max(v) > 0),
    ("Events per second", "D"): ("the bad frame's invalid event", lambda v: max(v) > 0),
    ("Pending events", "A"): ("events pending through the outage", lambda v: max(v) > 0),
    ("Database connected", "A"): ("the outage, and the database back", lambda v: min(v) == 0 and v[-1] == 1),
    ("Writers alive", "A"): ("both writers", lambda v: v[-1] == 2),
    ("Receive-to-commit latency", "B"): ("a p99", lambda v: max(v) > 0),
    ("Batch size", "A"): ("a median batch", lambda v: max(v) >= 1),
    ("Central copy lag", "A"): ("WAL the slot has not confirmed", lambda v: max(v) > 0),
}


def prom_get(base: str, path: str, **params: str) -> dict:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:  # Prometheus says what it refused in the body
        raise AssertionError(f"Prometheus refused {path} {params}: {e.read().decode()}") from None
    assert body["status"] == "success", body
    return body["data"]


@pytest.fixture
def logical_pg() -> Iterator[EmbeddedPostgres]:
    """A migrated cluster of the test's own with wal_level=logical, so a replication slot can stand in for a
    central server and ingestor_central_* exist; the test stops and starts it."""
    data_dir = tempfile.mkdtemp(prefix="ingestor-prom-pg-")
    Path(data_dir).chmod(0o755)
    server = EmbeddedPostgres(data_dir, settings={**TEST_SETTINGS, "wal_level": "logical"})
    server.start()
    schema.migrate(server.dsn)
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (central.name_of("public"),))
    yield server
    server.stop("immediate")
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator:
    """Start Prometheus with ``prometheus(target)``: it scrapes ``target`` every second and loads the alert rules."""
    binary = require_command("prometheus")
    started: list[subprocess.Popen] = []

    def start(target: str) -> str:
        port = free_port()
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "rule_files": [str(ALERTS)],
                  "scrape_configs": [{"job_name": "scale-ingestor", "static_configs": [{"targets": [target]}]}]}
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        with open(tmp_path / "prometheus.log", "wb") as log:
            started.append(subprocess.Popen(
                [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT))
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if prom_get(base, "/api/v1/query", query='up{job="scale-ingestor"} == 1')["result"]:
                    return base
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"Prometheus never scraped {target}:\n{(tmp_path / 'prometheus.log').read_text()}")

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(30)


def events(start: int, n: int) -> bytes:
    now_ms = int(time.time() * 1000) - 60_000
    return msgspec.msgpack.encode([{"scale_id": i % 9 + 1, "seq": i, "ts": now_ms + i, "data_1": i}
                                   for i in range(start, start + n)])


def drive(svc, pg: EmbeddedPostgres) -> None:
    """Traffic, a bad frame, and a database outage of ~5 s with events sent into it."""
    for k in range(6):
        svc.send(events(k * 100, 100))
        time.sleep(0.5)
    svc.send(b"\xc1 not msgpack")
    svc.wait_for(lambda s: s["persisted"] == 600 and s["invalid"] == 1)
    pg.stop("immediate")
    svc.send(events(600, 50))
    time.sleep(5)
    pg.start()
    svc.wait_for(lambda s: s["persisted"] == 650 and s["database_connected"], timeout_s=90)
    # the lag is read every central.LAG_EVERY_S: wait for a reading after the writes
    svc.wait_for(lambda s: (s["central_lag_bytes"] or 0) > 0, timeout_s=3 * central.LAG_EVERY_S)
    time.sleep(4)  # a few more scrapes with everything back


def resolve(expr: str, base: str) -> str:
    """``expr`` with the dashboard's variables replaced as Grafana would: every ingestor chosen ("All")."""
    names = prom_get(base, "/api/v1/label/ingestor_instance/values", **{"match[]": "ingestor_info"})
    chosen = "|".join(re.escape(n).replace("\\", "\\\\") for n in names)
    targets = prom_get(base, "/api/v1/series", **{"match[]": f'ingestor_info{{ingestor_instance=~"{chosen}"}}'})
    # a regex inside a PromQL string: its backslashes doubled, as Grafana writes a multi-value variable
    instances = "|".join(re.escape(s["instance"]).replace("\\", "\\\\") for s in targets)
    assert names and instances, "ingestor_info carries no ingestor_instance"
    return expr.replace("$__rate_interval", RATE_INTERVAL).replace("$instance", instances)


def counters(base: str) -> set[str]:
    """Names Prometheus may take rate() of: counters (ingestor_x_total) and histogram series (_bucket, …)."""
    out = set()
    for family, meta in prom_get(base, "/api/v1/metadata").items():
        kind = meta[0]["type"]
        if kind == "counter":
            out |= {family, f"{family}_total"}
        elif kind == "histogram":
            out |= {f"{family}_bucket", f"{family}_count", f"{family}_sum"}
    return out


def values(result: list[dict]) -> list[float]:
    return [float(v) for series in result for _, v in series["values"] if not math.isnan(float(v))]


def test_every_panel_query_returns_the_series_its_panel_expects_from_a_real_prometheus(service_factory, logical_pg,
                                                                                       prometheus):
    svc = service_factory("--dsn", logical_pg.dsn, "--writers", "2", "--batch-timeout-ms", "20")
    svc.wait_ready()
    begin = time.time()
    base = prometheus(svc.http)
    drive(svc, logical_pg)
    rate_ok = counters(base)
    board = json.loads(DASHBOARD.read_text())
    checked = set()
    for panel in (p for p in board["panels"] if p["type"] != "row"):
        for target in panel["targets"]:
            where = f"{panel['title']!r} query {target['refId']}: {target['expr']}"
            for fn, metric in re.findall(r"\b(rate|increase)\((\w+)", target["expr"]):
                assert metric in rate_ok, f"{where}: {fn}() over {metric}, which is not a counter"
            result = prom_get(base, "/api/v1/query_range", query=resolve(target["expr"], base), start=str(begin),
                              end=str(time.time()), step="1")["result"]
            assert result, f"{where} returned no series"
            for label in re.findall(r"\{\{(\w+)\}\}", target["legendFormat"]):
                assert all(label in s["metric"] for s in result), f"{where}: no label {label!r} for the legend"
            if (panel["title"], target["refId"]) in EXPECTED:
                what, holds = EXPECTED[panel["title"], target["refId"]]
                assert holds(values(result)), f"{where} did not show {what}: {values(result)}"
                checked.add((panel["title"], target["refId"]))
    assert checked == set(EXPECTED), f"panels named in EXPECTED but not on the dashboard: {set(EXPECTED) - checked}"

    rules = [r for g in prom_get(base, "/api/v1/rules")["groups"] for r in g["rules"]]
    shipped = [r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    assert sorted(r["name"] for r in rules) == sorted(shipped)
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    firing = {a["labels"]["alertname"] for a in prom_get(base, "/api/v1/alerts")["alerts"] if a["state"] == "firing"}
    assert "IngestorInvalidEvents" in firing and "IngestorLostEvents" not in firing, firing
