"""HTTP monitoring (``--http-bind``): Prometheus ``/metrics``, ``/health``, and ScaleHub's JSON monitoring endpoints.

Served by a small WSGI server in daemon threads of the supervisor (one per
request, so a scale lookup waiting on PostgreSQL never delays a scrape). They
never touch the shared counters: the supervisor's loop hands the server a
fresh docs/operations.md#stats snapshot every turn (:meth:`Monitoring.update`, at least once
a second), and every request is answered from the latest one.

Endpoints:

``/metrics``
    Prometheus text format through prometheus-client: a counter for every
    docs/operations.md#stats count, gauges for ring and spool fill and for each writer's
    liveness, and the receive-to-commit latency histogram.
``/health``
    200 ``{"status": "ok"}`` while reading and committing; 503 with
    ``{"status": "unhealthy", "reason": ...}`` when the database is
    unreachable, no writer is alive, committed events went missing from the
    database (``lost_after_commit``: until a restart), or nothing has been
    committed for longer than ``stall_seconds`` while events are pending.
``/api/v1/monitoring/persistence/metrics`` and ``…/health``
    ScaleHub's JSON shapes and field names, so existing dashboards
    keep working.
``/`` (and ``/static/…``, ``/api/v1/live``, ``/api/v1/scales/<id>``)
    The live page for a browser on the plant network: :mod:`ingestor.live`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import msgspec
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from . import live
from .errors import ConfigError
from .stats import BATCH_MS_BOUNDS, BATCH_SIZE_BOUNDS, Figures, LatencyHistogram, counter_fields, cumulative_buckets

log = logging.getLogger(__name__)

PREFIX = "ingestor"
COUNTERS = counter_fields()  # every count of the stats, as ingestor_<name>_total
def parse_bind(bind: str) -> tuple[str, int]:
    """``host:port`` -> (host, port). Raises ConfigError naming the value."""
    host, _, port = bind.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"invalid http_bind {bind!r}: expected HOST:PORT, such as 127.0.0.1:9108")
    return host.strip("[]"), int(port)


class _Collector:
    def __init__(self, snapshot: Callable[[], Figures | None]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator:
        s = self._snapshot()
        if s is None:
            return
        # the instance as an info metric's label: Prometheus gives the label "instance" to the scrape target
        info = GaugeMetricFamily(f"{PREFIX}_info", "Always 1; ingestor_instance is --instance.",
                                 labels=["ingestor_instance"])
        info.add_metric([s.instance], 1)
        yield info
        for key, doc in COUNTERS:
            c = CounterMetricFamily(f"{PREFIX}_{key}", doc)
            c.add_metric([], getattr(s, key))
            yield c
        gauges: list[tuple[str, str, float | int]] = [
            ("pending_events", "Events accepted and not yet written (ring, spool, in hand).", s.pending),
            ("ring_capacity_slots", "Slots of the shared-memory ring.", s.ring_capacity),
            ("ring_used_slots", "Slots holding events now.", s.ring_used),
            ("spool_bytes", "Disk the on-disk spool takes now.", s.spool_bytes),
            ("spool_events", "Events in the on-disk spool now.", s.spool_events),
            ("database_connected", "1 while every live writer's last database operation succeeded.",
             int(s.database_connected)),
            ("draining", "1 while the service drains before exiting.", int(s.status == "draining")),
            ("uptime_seconds", "Seconds since the service started.", s.uptime_s),
            ("events_per_second", "Events persisted per second over the last 10 s.", s.events_per_s),
            ("average_batch_size_events", "Events per committed batch, on average.", s.average_batch_size),
            ("average_batch_duration_seconds", "Duration of a committed batch, on average.", s.average_batch_ms / 1000),
            ("retention_refused_partitions", "Day partitions the last retention pass refused to drop (no verified "
             "archive).", s.retention_refused),
        ]
        if s.central_lag_bytes is not None:  # only where a central server subscribes to this edge
            gauges += [("central_lag_bytes", "WAL bytes the central server has not confirmed yet.",
                        s.central_lag_bytes),
                       ("central_stalled_seconds", "Seconds the central server has confirmed nothing while WAL "
                        "waited for it (down, or its subscription failing again and again).", s.central_stalled_s or 0.0),
                       ("central_syncing_tables", "Tables of the central copy whose initial copy has not finished "
                        "(table-sync slots on this database).", s.central_syncing_tables or 0)]
        for name, doc, value in gauges:
            g = GaugeMetricFamily(f"{PREFIX}_{name}", doc)
            g.add_metric([], value)
            yield g
        alive = GaugeMetricFamily(f"{PREFIX}_writer_alive", "1 while writer i's process is alive.", labels=["writer"])
        restarts = CounterMetricFamily(f"{PREFIX}_writer_restarts", "Restarts of writer i.", labels=["writer"])
        for i, w in enumerate(s.writers):
            alive.add_metric([str(i)], int(w.alive))
            restarts.add_metric([str(i)], w.restarts)
        yield alive
        yield restarts
        yield from _inputs(s)
        yield _latency(s.latency_histogram)
        # before the first counts (PostgreSQL awaited at start) the histograms are empty: every bucket 0
        sizes = s.batch_size_histogram or cumulative_buckets([0] * (len(BATCH_SIZE_BOUNDS) + 1), BATCH_SIZE_BOUNDS)
        durations = s.batch_ms_histogram or cumulative_buckets([0] * (len(BATCH_MS_BOUNDS) + 1), BATCH_MS_BOUNDS)
        size = HistogramMetricFamily(f"{PREFIX}_batch_size_events", "Events per committed batch.")
        size.add_metric([], sizes, sum_value=s.persisted + s.duplicates + s.failed)
        yield size
        seconds = HistogramMetricFamily(f"{PREFIX}_batch_duration_seconds", "Wall time of a committed batch.")
        seconds.add_metric([], [(str(float(le) / 1000) if le != "+Inf" else le, n) for le, n in durations],
                           sum_value=s.batch_us_total / 1e6)
        yield seconds


INPUT_COUNTERS = (  # (figure, metric name without ingestor_input_ and _total, help)
    ("received", "received_messages",
     "Messages the input took from its source (the MQTT broker), re-deliveries included."),
    ("acknowledged", "acknowledged_messages",
     "Messages the input acknowledged to its source: committed, or kept as dead letters."),
    ("redelivered", "redelivered_messages",
     "Messages the source marked as delivered before (MQTT DUP): the ingestor stores them once."),
    ("unmappable", "unmappable_messages", "Messages that were no measurement: dead letters with their topic."),
    ("seq_gaps", "seq_gaps", "Sparkplug B: breaks in an edge node's sequence numbers (messages lost before the input)."),
    ("rebirths", "rebirth_requests", "Sparkplug B: rebirth requests (NCMD) sent to edge nodes."),
)


def _inputs(s: Figures) -> Iterator:
    """Per input (label ``input``, such as "mqtt"): its message counters, and whether it is connected to its source;
    nothing without an input besides ZeroMQ."""
    if not s.inputs:
        return
    for key, metric, doc in INPUT_COUNTERS:
        c = CounterMetricFamily(f"{PREFIX}_input_{metric}", doc, labels=["input"])
        for source in s.inputs:
            c.add_metric([source.name], getattr(source, key))
        yield c
    connected = GaugeMetricFamily(f"{PREFIX}_input_connected", "1 while the input is connected to its source.",
                                  labels=["input"])
    restarts = CounterMetricFamily(f"{PREFIX}_input_restarts", "Restarts of the input's process.", labels=["input"])
    for source in s.inputs:
        connected.add_metric([source.name], int(source.connected))
        restarts.add_metric([source.name], source.restarts)
    yield connected
    yield restarts


# Fixed bucket bounds, s: a bucket that appeared only once it held an event would start its rate() late and
# bend histogram_quantile. Each is a bound of the stats' finer buckets (1 ms to 1 s, then 100 ms), so exact.
LATENCY_BOUNDS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


def _latency(histogram: LatencyHistogram) -> HistogramMetricFamily:
    buckets = []
    for bound in LATENCY_BOUNDS_S:
        buckets.append((repr(bound), sum(c for u, c in zip(histogram.upper_ms, histogram.count) if u <= bound * 1000)))
    buckets.append(("+Inf", sum(histogram.count)))
    h = HistogramMetricFamily(f"{PREFIX}_receive_to_commit_seconds",
                              "Time from a frame's receipt to the commit of its events.")
    # The exact sum is not kept; the stats' 1 ms bucket bounds give an upper estimate.
    total = sum(u / 1000 * c for u, c in zip(histogram.upper_ms, histogram.count))
    h.add_metric([], buckets, sum_value=total)
    return h


def health(s: Figures | None, stall_seconds: float, now: float | None = None) -> tuple[bool, str]:
    """(healthy, reason) by the rules of the module docstring."""
    if s is None:
        return False, "starting"
    if not any(w.alive for w in s.writers):
        return False, "no writer is alive"
    if not s.database_connected:
        return False, "the database is unreachable"
    if s.lost_after_commit:
        return False, (f"{s.lost_after_commit} committed events are missing from the database after a failover or "
                       "a restore (see the log's LOST lines; a restart clears this)")
    if s.pending and s.last_persisted_at:
        now = now if now is not None else time.time()
        idle = now - dt.datetime.fromisoformat(s.last_persisted_at).timestamp()
        if idle > stall_seconds:
            return False, f"nothing committed for {idle:.0f} s with {s.pending} events pending"
    return True, "ok"


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # scrapes every few seconds: no log line each
        log.debug("http %s", format % args)


class _Server(ThreadingMixIn, WSGIServer):
    """One thread per request: a scale lookup waiting on PostgreSQL (up to 2 s) never delays a scrape."""

    daemon_threads = True


class Monitoring:
    """The HTTP endpoints on ``bind`` (``host:port``); :meth:`start` binds and serves from a thread.

    Raises ConfigError (bad ``bind``) or OSError (cannot bind) from :meth:`start`.
    """

    def __init__(self, bind: str, stall_seconds: float) -> None:
        self.host, self.port = parse_bind(bind)
        self.stall_seconds = stall_seconds
        self._snapshot: Figures | None = None
        self._lock = threading.Lock()
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Collector(self.snapshot))
        self._lookups: tuple[str, str] | None = None  # (dsn, schema) once the database is known
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def update(self, snapshot: Figures) -> None:
        with self._lock:
            self._snapshot = snapshot

    def snapshot(self) -> Figures | None:
        with self._lock:
            return self._snapshot

    def serve_lookups(self, dsn: str, schema: str) -> None:
        """Answer the live page's scale lookups from database ``dsn``, schema ``schema`` (503 until called)."""
        self._lookups = (dsn, schema)

    def start(self) -> None:
        self._server = make_server(self.host, self.port, self.app, server_class=_Server, handler_class=_QuietHandler)
        self.port = self._server.server_port
        # shutdown() waits for the serving loop to look up: every 0.1 s, not the default 0.5, so a stop is prompt
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="http",
                                        daemon=True)
        self._thread.start()
        log.info("Monitoring on http://%s:%d (/metrics, /health)", self.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # -- the WSGI application ---------------------------------------------------

    def app(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        s = self.snapshot()
        if path == "/metrics":
            return _respond(start_response, 200, generate_latest(self._registry), "text/plain; version=0.0.4")
        if path == "/health":
            ok, reason = health(s, self.stall_seconds)
            body = {"status": "ok"} if ok else {"status": "unhealthy", "reason": reason}
            return _json(start_response, 200 if ok else 503, body)
        if path == "/api/v1/monitoring/persistence/metrics":
            if s is None:
                return _json(start_response, 503, {"success": False, "data": None})
            return _json(start_response, 200, {"success": True, "data": {
                "batchQueueSize": s.pending,
                "totalEventsProcessed": s.persisted,
                "totalEventsFailed": s.failed + s.invalid,
                "averageBatchSize": s.average_batch_size,
                "averageProcessingTimeMs": s.average_batch_ms,
                "lastProcessedTimestamp": s.last_persisted_at,
            }})
        if path == "/api/v1/monitoring/persistence/health":
            ok, reason = health(s, self.stall_seconds)
            running = s is not None and s.status == "running" and any(w.alive for w in s.writers)
            return _json(start_response, 200 if ok else 503, {"success": ok, "data": {
                "status": "UP" if ok else "DOWN",
                "batchProcessorRunning": running,
                "databaseConnected": bool(s and s.database_connected),
                "timestamp": dt.datetime.now(dt.UTC).isoformat(),
                **({} if ok else {"reason": reason}),
            }})
        return self._page(path, s, start_response)

    def _page(self, path: str, s: Figures | None, start_response: Callable) -> Iterable[bytes]:
        if path == "/api/v1/live":
            return _respond(start_response, 200, live.live(s, *health(s, self.stall_seconds)), "application/json")
        if path.startswith("/api/v1/scales/"):
            try:
                scale_id = live.parse_scale_id(path.removeprefix("/api/v1/scales/"))
                if self._lookups is None:
                    raise live.LookupRefused(503, "the database is not known yet: the service is starting")
                view = live.lookup(*self._lookups, scale_id)
            except live.LookupRefused as e:
                return _json(start_response, e.status, {"error": str(e)})
            return _respond(start_response, 200, msgspec.json.encode(view), "application/json")
        found = live.static_file("index.html" if path == "/" else path.removeprefix("/static/"))
        if found is not None and (path == "/" or path.startswith("/static/")):
            return _respond(start_response, 200, *found)
        return _json(start_response, 404, {"error": f"no such endpoint {path!r}; try /, /metrics or /health"})


def _json(start_response: Callable, status: int, body: dict) -> list[bytes]:
    return _respond(start_response, status, json.dumps(body).encode(), "application/json")


def _respond(start_response: Callable, status: int, body: bytes, content_type: str) -> list[bytes]:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 503: "Service Unavailable"}[status]
    start_response(f"{status} {reason}", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]
