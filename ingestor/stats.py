"""Counters shared by all processes, and the figures of docs/operations.md#stats made from them.

Every counter has exactly one writing process (the front, writer ``i``, or
the supervisor), so plain 64-bit stores suffice; the supervisor reads them
all to answer ``ingestor stats``. The block is owned by the supervisor like
the ring, so a writer's counts survive its crash and restart.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import typing
from multiprocessing.shared_memory import SharedMemory
from typing import Annotated, Literal

import msgspec
import numpy as np
import zmq

from .errors import IngestorError, StatsUnavailable
from .shm import SharedBlock

# Receive-to-commit latency histogram: 1 ms buckets up to 1 s, 100 ms buckets
# up to 60 s, one overflow bucket. Fine where the p99 target (300 ms) lives.
_FINE_MS, _COARSE_STEP_MS, _MAX_MS = 1000, 100, 60_000
HIST_BUCKETS = _FINE_MS + (_MAX_MS - _FINE_MS) // _COARSE_STEP_MS + 1

FRONT_DTYPE = np.dtype(
    [
        ("pid", "<i8"),
        ("received_frames", "<i8"),
        ("received_events", "<i8"),
        ("invalid", "<i8"),
        ("dead_letter_errors", "<i8"),
        ("dead_letters_dropped", "<i8"),  # deleted to keep --dead-letter-max-bytes
        ("spool_events", "<i8"),  # held in the spool now
        ("spool_bytes", "<i8"),  # disk the spool takes now
        ("spooled_events", "<i8"),  # ever appended to the spool by this run
        ("replayed_events", "<i8"),  # found in the spool at start (an earlier run's)
        ("spool_cut_bytes", "<i8"),  # torn or corrupt spool blocks cut at open
        ("spool_opened", "<i8"),  # 1 once a front has opened the spool in this run
        ("held_events", "<i8"),  # received, in the front's hands, waiting for ring or spool room
        ("refused_frames", "<i8"),  # over --max-frame-bytes (each also one invalid event)
        ("acked_messages", "<i8"),  # received on the ROUTER endpoint
        ("ack_replies", "<i8"),  # replies sent (docs/PROTOCOL.md §5)
        ("ack_expired", "<i8"),  # acked messages given up without a reply (the sender re-sends)
        ("refused_clients", "<i8"),  # CURVE handshakes refused: key not among the allowed
        ("front_pending", "<i8"),  # held_events + spool_events, stored at once (the front's share of pending)
        ("spool_in_ring", "<i8"),  # records of spool blocks already in the ring, their blocks not yet dropped
        ("lost", "<i8"),  # accepted events that could be kept nowhere (logged at ERROR with their number)
        ("listening", "<i8"),  # 1 once a front has bound its endpoints (the service is then "running")
        # written by the lifecycle child (ingestor/lifecycle.py)
        ("archived_partitions", "<i8"),  # day partitions archived and verified by this run
        ("archive_failures", "<i8"),  # archive attempts that failed (each logged at ERROR)
        ("retention_refused", "<i8"),  # day partitions the last retention pass refused to drop
        # written by the supervisor (ingestor/seals.py: Sealer)
        ("seals", "<i8"),  # seals of the alibi chains' heads signed and stored by this run
        ("seal_failures", "<i8"),  # seals that could not be stored (each logged at ERROR)
        # committed events the database lacked at start (ingestor/commits.py: a loss while stopped)
        ("lost_after_commit_at_start", "<i8"),
        # alibi record numbers (ingestor/commits.py: Keeper.reserve), written by the supervisor for the writers:
        ("records_reserved", "<i8"),  # writers commit no record number above this (0: none yet, wait)
        ("record_floor", "<i8"),  # a chain begun now starts after this (the last skip's floor; 0: at 1)
    ]
)

# Upper bounds of the batch histograms (Prometheus "le" buckets; one more for +Inf).
BATCH_SIZE_BOUNDS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 50000)
BATCH_MS_BOUNDS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)

WRITER_DTYPE = np.dtype(
    [
        ("pid", "<i8"),
        ("restarts", "<i8"),  # written by the supervisor
        ("persisted", "<i8"),
        ("failed", "<i8"),
        ("duplicates", "<i8"),
        ("batches", "<i8"),
        ("batch_us_total", "<i8"),
        ("last_batch_us", "<i8"),
        ("last_commit_ns", "<i8"),
        ("connected", "<i8"),
        ("dead_letters_dropped", "<i8"),
        ("dead_letter_errors", "<i8"),  # dead letters that could not be written (logged whole instead)
        ("lost_after_commit", "<i8"),  # committed, then missing from the database (a failover)
        # the lane's last commit acknowledged, for the supervisor's record of it (ingestor/commits.py)
        ("acknowledged", "<i8"),  # a sequence lock over the two below: odd while written, 0 before any
        ("acknowledged_position", "<i8"),
        ("acknowledged_persisted", "<i8"),
        ("record_no_max", "<i8"),  # the greatest alibi record number the writer linked, stored before its commit
        ("latency_hist", "<i8", (HIST_BUCKETS,)),
        ("batch_size_hist", "<i8", (len(BATCH_SIZE_BOUNDS) + 1,)),  # events per committed batch
        ("batch_ms_hist", "<i8", (len(BATCH_MS_BOUNDS) + 1,)),  # ms per committed batch
    ]
)

INPUT_SLOTS = 4  # inputs besides ZeroMQ (MQTT, ...) one service can run: records reserved in the block
INPUT_DTYPE = np.dtype(
    [
        ("pid", "<i8"),
        ("connected", "<i8"),  # 1 while connected to its source (the broker, the OPC UA server)
        ("received", "<i8"),  # messages taken from the source, re-deliveries included
        ("acknowledged", "<i8"),  # messages acknowledged to the source: committed, or kept as dead letters
        ("redelivered", "<i8"),  # messages the source marked as delivered before (MQTT's DUP flag)
        ("unmappable", "<i8"),  # messages that are no measurement: dead letters, with their topic
        ("seq_gaps", "<i8"),  # Sparkplug B: breaks in an edge node's sequence numbers (messages lost before us)
        ("rebirths", "<i8"),  # Sparkplug B: rebirth requests (NCMD) sent to edge nodes
    ]
)


INPUT_COUNTS = ("received", "acknowledged", "redelivered", "unmappable", "seq_gaps", "rebirths")


def acknowledged(writer: np.ndarray) -> tuple[int, int] | None:
    """A lane's last acknowledged ``(position, persisted)`` from its WRITER_DTYPE record; None before any.

    The writer stores the two under a sequence lock (odd while it writes): read until one
    read falls between two writes, so the pair is never torn. None too when no such read comes
    within ACK_READ_TRIES (a writer killed while writing leaves it odd until its successor writes).
    """
    for _ in range(ACK_READ_TRIES):
        before = int(writer["acknowledged"])
        if before == 0:
            return None
        pair = int(writer["acknowledged_position"]), int(writer["acknowledged_persisted"])
        if before % 2 == 0 and int(writer["acknowledged"]) == before:
            return pair
    return None


ACK_READ_TRIES = 1000


class Counters(SharedBlock):
    """The shared counter block: ``front`` (one FRONT_DTYPE record), ``writers`` (one WRITER_DTYPE per lane) and
    ``inputs`` (INPUT_SLOTS INPUT_DTYPE records, one per input by its ``slot``)."""

    def __init__(self, shm: SharedMemory, writers: int, owner: bool) -> None:
        super().__init__(shm, owner)
        self.front = np.ndarray((), FRONT_DTYPE, shm.buf, 0)
        self.writers = np.ndarray((writers,), WRITER_DTYPE, shm.buf, _writers_offset())
        self.inputs = np.ndarray((INPUT_SLOTS,), INPUT_DTYPE, shm.buf, _inputs_offset(writers))

    @classmethod
    def create(cls, writers: int) -> Counters:
        return cls(cls._allocate(_inputs_offset(writers) + INPUT_SLOTS * INPUT_DTYPE.itemsize), writers, owner=True)

    @classmethod
    def attach(cls, name: str, writers: int) -> Counters:
        """SharedMemoryError when the block is gone."""
        return cls(cls._open(name, "shared counters"), writers, owner=False)

    def _unmap(self) -> None:
        del self.front, self.writers, self.inputs

    def database_connected(self, alive: typing.Sequence[bool]) -> bool:
        """True when some writer lives and every live one's last database operation succeeded; ``alive``: one
        flag per writer, by lane (docs/operations.md#stats ``database_connected``)."""
        connected = self.writers["connected"]
        return any(alive) and all(bool(connected[i]) for i, a in enumerate(alive) if a)

    def read_into(self, f: Figures, ring_used: typing.Callable[[], int]) -> Figures:
        """Fill ``f``'s counts (and ``ring_used``, from the ring's ``ring_used()``) from the block and return it.

        The caller has set what only it knows: ``status``, ``uptime_s``, the
        ring's ``ring_capacity``, ``events_per_s``, ``database_connected``,
        ``recent_events``, and per writer ``alive``, ``restarts`` and the live
        ``pid`` (0 when dead: the last one is read here).

        Read along the events' way: received (the front counts held and invalid
        before received), then the front's share of pending, then the ring, then
        the writers' counts. An event that moves on between two reads is counted
        twice for a moment, never missed, so every received event is always on the
        other side of the identity of docs/operations.md#stats.
        """
        c, w = self.front, self.writers
        for name in ("received_frames", "received_events", "invalid", "lost", "spool_bytes", "spool_events",
                     "spooled_events", "replayed_events", "spool_cut_bytes", "refused_frames", "acked_messages",
                     "ack_replies", "ack_expired", "refused_clients", "archived_partitions", "archive_failures",
                     "retention_refused", "seals", "seal_failures"):
            setattr(f, name, int(c[name]))
        front_pending = int(c["front_pending"])
        f.ring_used = ring_used()
        persisted, batches = int(w["persisted"].sum()), int(w["batches"].sum())
        hist = w["latency_hist"].sum(axis=0)
        last_commit = int(w["last_commit_ns"].max())
        f.duplicates, f.persisted, f.failed = int(w["duplicates"].sum()), persisted, int(w["failed"].sum())
        f.lost_after_commit = int(w["lost_after_commit"].sum()) + int(c["lost_after_commit_at_start"])
        f.dead_letter_errors = int(c["dead_letter_errors"]) + int(w["dead_letter_errors"].sum())
        f.dead_letters_dropped = int(c["dead_letters_dropped"]) + int(w["dead_letters_dropped"].sum())
        f.pending = f.ring_used + front_pending
        f.batch_us_total = int(w["batch_us_total"].sum())
        f.average_batch_size = round(persisted / batches, 1) if batches else 0.0
        f.average_batch_ms = round(f.batch_us_total / batches / 1000, 1) if batches else 0.0
        f.last_persisted_at = (dt.datetime.fromtimestamp(last_commit / 1e9, dt.UTC).isoformat()
                               if last_commit else None)
        f.latency_ms = Latency(percentile_ms(hist, 0.5), percentile_ms(hist, 0.99))
        f.latency_histogram = LatencyHistogram(**histogram_ms(hist))
        f.batch_size_histogram = cumulative_buckets(w["batch_size_hist"].sum(axis=0), BATCH_SIZE_BOUNDS)
        f.batch_ms_histogram = cumulative_buckets(w["batch_ms_hist"].sum(axis=0), BATCH_MS_BOUNDS)
        for i, writer in enumerate(f.writers):
            writer.pid = writer.pid or int(w["pid"][i])
            writer.persisted, writer.batches = int(w["persisted"][i]), int(w["batches"][i])
            writer.last_batch_ms = round(int(w["last_batch_us"][i]) / 1000, 1)
        for source in f.inputs:
            counts = self.inputs[source.slot]
            source.pid = source.pid or int(counts["pid"])
            source.connected = bool(counts["connected"]) and source.alive
            for name in INPUT_COUNTS:
                setattr(source, name, int(counts[name]))
        return f


def _writers_offset() -> int:
    return (FRONT_DTYPE.itemsize + 63) // 64 * 64


def _inputs_offset(writers: int) -> int:
    return (_writers_offset() + writers * WRITER_DTYPE.itemsize + 63) // 64 * 64


def bucket_of(value: float, bounds: tuple) -> int:
    """Index of the first bound >= ``value`` (len(bounds) for +Inf)."""
    return int(np.searchsorted(bounds, value, side="left"))


def cumulative_buckets(counts: np.ndarray | list[int], bounds: tuple[float, ...]) -> list[tuple[str, int]]:
    """Prometheus histogram buckets ("le", cumulative count) from per-bucket ``counts``."""
    acc = np.cumsum(counts).tolist()
    return [(repr(float(b)), acc[i]) for i, b in enumerate(bounds)] + [("+Inf", acc[-1])]


def latency_buckets(latency_ns: np.ndarray) -> np.ndarray:
    """Histogram of ``latency_ns`` (int64 array, any length) as HIST_BUCKETS counts."""
    ms = np.maximum(latency_ns, 0) // 1_000_000
    idx = np.where(ms < _FINE_MS, ms, _FINE_MS + (ms - _FINE_MS) // _COARSE_STEP_MS)
    return np.bincount(np.minimum(idx, HIST_BUCKETS - 1), minlength=HIST_BUCKETS)


def percentile_ms(hist: np.ndarray, q: float) -> float | None:
    """Upper bound in ms of the bucket holding the ``q`` quantile (0 < q <= 1), None when empty."""
    total = int(hist.sum())
    if total == 0:
        return None
    i = int(np.searchsorted(np.cumsum(hist), q * total))
    if i < _FINE_MS:
        return float(i + 1)
    return float(_FINE_MS + (i - _FINE_MS + 1) * _COARSE_STEP_MS)


def histogram_ms(hist: np.ndarray) -> dict[str, list]:
    """The non-empty buckets of ``hist``: ``{"upper_ms": [...], "count": [...]}`` (for CDF plots)."""
    nonzero = np.flatnonzero(hist)
    upper = np.where(nonzero < _FINE_MS, nonzero + 1, _FINE_MS + (nonzero - _FINE_MS + 1) * _COARSE_STEP_MS)
    return {"upper_ms": upper.tolist(), "count": hist[nonzero].tolist()}


# -- the figures ------------------------------------------------------------------


class RateWindow:
    """``events_per_s`` of docs/operations.md#stats: persisted events over the last ``window_s`` seconds."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def add(self, now: float, persisted: int) -> None:
        """One sample: ``now`` on the monotonic clock (s), the ``persisted`` count then."""
        self._samples.append((now, persisted))
        while self._samples and now - self._samples[0][0] > self.window_s:
            self._samples.popleft()

    def events_per_s(self) -> float:
        """Events/s, rounded to 0.1; 0.0 before two samples."""
        if len(self._samples) < 2:
            return 0.0
        (t0, p0), (t1, p1) = self._samples[0], self._samples[-1]
        return round((p1 - p0) / (t1 - t0), 1) if t1 > t0 else 0.0


def _counter(doc: str) -> msgspec.Meta:
    """A count that only grows while the service runs: exported as the Prometheus counter ``ingestor_<name>_total``."""
    return msgspec.Meta(description=doc, extra={"prometheus": "counter"})


class Latency(msgspec.Struct):
    """Receive-to-commit latency quantiles in ms (bucket upper bounds); None before the first commit."""

    p50: float | None = None
    p99: float | None = None


class LatencyHistogram(msgspec.Struct):
    """The non-empty buckets of the receive-to-commit histogram: upper bounds in ms, and counts."""

    upper_ms: list[int] = []
    count: list[int] = []


class RecentEvent(msgspec.Struct):
    """A notable event for ``ingestor top``: a child died, the database went or came back, spooling began."""

    time: str  #: RFC 3339, UTC, seconds
    event: str


class WriterFigures(msgspec.Struct):
    """One writer's figures."""

    pid: int
    alive: bool
    restarts: int
    persisted: int = 0  #: read from the counters (:meth:`Counters.read_into`)
    batches: int = 0
    last_batch_ms: float = 0.0


class InputFigures(msgspec.Struct):
    """One input's figures besides ZeroMQ (docs/operations.md#mqtt-input): its process, and its messages."""

    name: str  #: the role, such as "mqtt"
    slot: int  #: its record in the counters
    pid: int
    alive: bool
    restarts: int
    connected: bool = False  #: to its source (the broker)
    received: int = 0  #: messages taken from the source, re-deliveries included
    acknowledged: int = 0  #: acknowledged to the source: committed, or kept as dead letters
    redelivered: int = 0  #: marked by the source as delivered before
    unmappable: int = 0  #: no measurement: dead letters with their topic
    seq_gaps: int = 0  #: Sparkplug B: breaks in an edge node's sequence numbers
    rebirths: int = 0  #: Sparkplug B: rebirth requests sent to edge nodes


Status = Literal["starting", "running", "draining"]  #: the service's life, as the stats say it


class Figures(msgspec.Struct, kw_only=True):
    """The figures of docs/operations.md#stats: what ``ingestor stats`` prints and ``/metrics`` exports.

    The single definition of them: the supervisor fills one from the shared
    counters (or leaves the defaults while it starts), the stats socket
    sends it as JSON, ``ingestor stats`` and ``top`` decode it, and the
    Prometheus exporter turns every field marked as a counter into
    ``ingestor_<name>_total``. Counts are events unless named otherwise.
    """

    instance: str = ""  #: --instance (docs/operations.md#scaling-out-and-failover)
    #: the service's database as a libpq string without its password (the embedded server's changes every start):
    #: the one-shot commands use it when given no --dsn; None until it is known
    dsn: str | None = None
    status: Status = "starting"
    uptime_s: float = 0.0
    received_frames: Annotated[int, _counter("Frames received (ZeroMQ message parts).")] = 0
    received_events: Annotated[int, _counter("Events received, valid or not (and replayed from the spool).")] = 0
    invalid: Annotated[int, _counter("Events rejected as invalid and dead-lettered.")] = 0
    duplicates: Annotated[int, _counter("Events already stored (same scale_id and seq), not stored again.")] = 0
    persisted: Annotated[int, _counter("Events committed to weighing_logs.")] = 0
    failed: Annotated[int, _counter("Events PostgreSQL rejected at write, dead-lettered.")] = 0
    lost: Annotated[int, _counter("Accepted events that could be kept nowhere (each loss logged at ERROR).")] = 0
    lost_after_commit: Annotated[int, _counter(
        "Persisted events the database lacked afterwards: a failover to a standby without them (logged at ERROR).")] = 0
    pending: int = 0  #: accepted, not yet written: ring, spool, the front's hands
    ring_capacity: int = 0
    ring_used: int = 0
    spool_bytes: int = 0
    spool_events: int = 0
    spooled_events: Annotated[int, _counter("Events appended to the on-disk spool.")] = 0
    replayed_events: Annotated[int, _counter("Events found in the spool at start.")] = 0
    spool_cut_bytes: Annotated[int, _counter("Bytes of torn or corrupt spool blocks cut at open.")] = 0
    refused_frames: Annotated[int, _counter("Frames over --max-frame-bytes, refused.")] = 0
    acked_messages: Annotated[int, _counter("Messages received on the acked-mode ROUTER endpoint.")] = 0
    ack_replies: Annotated[int, _counter("Acked-mode replies sent.")] = 0
    ack_expired: Annotated[int, _counter("Acked messages given up without a reply after 600 s.")] = 0
    refused_clients: Annotated[int, _counter("CURVE handshakes refused: unknown key or no CURVE.")] = 0
    dead_letter_errors: Annotated[int, _counter("Dead letters that could not be written (logged whole).")] = 0
    dead_letters_dropped: Annotated[int, _counter("Dead letters deleted to keep --dead-letter-max-bytes.")] = 0
    archived_partitions: Annotated[int, _counter("Day partitions archived to Parquet and verified.")] = 0
    archive_failures: Annotated[int, _counter(
        "Archive attempts that failed; the day stays in PostgreSQL (each logged at ERROR).")] = 0
    #: day partitions the last retention pass refused to drop: no verified archive (docs/operations.md#the-archive-of-old-days)
    retention_refused: int = 0
    seals: Annotated[int, _counter("Seals of the alibi chains' heads signed and stored (docs/alibi.md).")] = 0
    seal_failures: Annotated[int, _counter(
        "Seals that could not be stored in the database or the seal file (each logged at ERROR).")] = 0
    events_per_s: float = 0.0  #: persisted per second over the last 10 s
    average_batch_size: float = 0.0
    average_batch_ms: float = 0.0
    batch_us_total: int = 0  #: wall time of every committed batch together, µs
    last_persisted_at: str | None = None  #: RFC 3339, UTC
    database_connected: bool = False
    #: WAL bytes the central server has not confirmed (docs/operations.md#every-plant-into-one-central-database);
    #: None without a subscription to this schema
    central_lag_bytes: int | None = None
    #: seconds the central server has confirmed nothing while WAL waited for it (down, or its subscription failing
    #: again and again); 0 while it follows; None without a subscription
    central_stalled_s: float | None = None
    #: tables of a central copy whose initial copy has not finished (their table-sync slots on this database)
    central_syncing_tables: int | None = None
    latency_ms: Latency = msgspec.field(default_factory=Latency)
    recent_events: list[RecentEvent] = []
    writers: list[WriterFigures] = []
    inputs: list[InputFigures] = []  #: the MQTT and Sparkplug B inputs, as configured (docs/operations.md#mqtt-input)
    # for /metrics and plots; `ingestor stats` leaves them out unless --histograms
    latency_histogram: LatencyHistogram = msgspec.field(default_factory=LatencyHistogram)
    batch_size_histogram: list[tuple[str, int]] = []  #: (Prometheus "le", cumulative count)
    batch_ms_histogram: list[tuple[str, int]] = []


HISTOGRAMS = ("latency_histogram", "batch_size_histogram", "batch_ms_histogram")


def counter_fields() -> list[tuple[str, str]]:
    """``(name, help)`` of every Figures field that is a Prometheus counter, in field order."""
    hints = typing.get_type_hints(Figures, include_extras=True)
    out = []
    for name in Figures.__struct_fields__:
        for meta in getattr(hints[name], "__metadata__", ()):
            if isinstance(meta, msgspec.Meta) and (meta.extra or {}).get("prometheus") == "counter":
                out.append((name, meta.description or name))  # _counter() gives each a description
    return out


def format_text(f: Figures) -> str:
    """The figures as aligned ``name: value`` lines for people (histograms left out)."""
    lines = []
    for name in Figures.__struct_fields__:
        if name in HISTOGRAMS or name in ("writers", "inputs", "recent_events", "latency_ms", "batch_us_total"):
            continue
        value = getattr(f, name)
        lines.append(f"{name:>22}: {'never' if value is None else str(value).lower() if isinstance(value, bool) else value}")
        if name == "average_batch_ms":
            p50, p99 = f.latency_ms.p50, f.latency_ms.p99
            lines.append(f"{'latency_ms':>22}: " + (f"p50 {p50:g}, p99 {p99:g}" if p50 is not None else "none yet"))
    for i, w in enumerate(f.writers):
        lines.append(f"{f'writer {i}':>22}: pid {w.pid} {'alive' if w.alive else 'DEAD'}, {w.persisted} persisted "
                     f"in {w.batches} batches, last {w.last_batch_ms} ms, {w.restarts} restarts")
    for source in f.inputs:
        lines.append(f"{source.name:>22}: pid {source.pid} {'alive' if source.alive else 'DEAD'}, "
                     f"{'connected' if source.connected else 'NOT CONNECTED'}, {source.received} received, "
                     f"{source.acknowledged} acknowledged, {source.redelivered} delivered again, "
                     f"{source.unmappable} unmappable, {source.restarts} restarts"
                     + (f", {source.seq_gaps} seq gaps, {source.rebirths} rebirths" if source.name == "sparkplug" else ""))
    for e in f.recent_events[-5:]:
        lines.append(f"{'recent':>22}: {e.time} {e.event}")
    return "\n".join(lines)


# -- the stats socket ---------------------------------------------------------

STATS_REQUEST = b"stats"


class StatsServer:
    """The service's stats socket: a ZeroMQ REP bound on ``endpoint`` answering :data:`STATS_REQUEST` with a
    snapshot's JSON (docs/operations.md#stats), anything else with ``{"error": ...}``.

    The supervisor polls :attr:`socket` in its loop and calls :meth:`answer`
    when it is readable. IngestorError naming the endpoint when it cannot be bound.
    """

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> None:
        self.socket: zmq.Socket[bytes] = context.socket(zmq.REP)
        self.socket.setsockopt(zmq.LINGER, 0)
        try:
            self.socket.bind(endpoint)
        except zmq.ZMQError as e:
            self.socket.close()
            raise IngestorError(f"cannot bind the stats endpoint {endpoint}: {e}") from None

    def answer(self, snapshot: typing.Callable[[], Figures]) -> None:
        """Answer the request waiting, if any (never blocks)."""
        try:
            request = self.socket.recv(zmq.NOBLOCK)
        except zmq.Again:
            return
        if request == STATS_REQUEST:
            reply = msgspec.json.encode(snapshot())
        else:
            reply = msgspec.json.encode({"error": f"unknown request {request[:40]!r}; send {STATS_REQUEST!r}"})
        self.socket.send(reply)

    def close(self) -> None:
        self.socket.close(linger=0)


def fetch(endpoint: str, timeout_s: float = 2.0) -> Figures:
    """The figures of the service on ``endpoint``. Raises StatsUnavailable when nothing answers in ``timeout_s`` s."""
    return msgspec.json.decode(_ask(endpoint, timeout_s), type=Figures)


def query(endpoint: str, timeout_s: float = 2.0) -> dict:
    """The figures of the service on ``endpoint`` as the JSON object it sent (for scripts: every field, untyped).

    Raises StatsUnavailable when nothing answers within ``timeout_s`` seconds.
    """
    return json.loads(_ask(endpoint, timeout_s))


def _ask(endpoint: str, timeout_s: float) -> bytes:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(timeout_s * 1000))
    sock.setsockopt(zmq.SNDTIMEO, int(timeout_s * 1000))
    try:
        sock.connect(endpoint)
        sock.send(STATS_REQUEST)
        reply = sock.recv()
    except zmq.Again:
        raise StatsUnavailable(f"no ingestor answered on {endpoint} within {timeout_s:g} s") from None
    except zmq.ZMQError as e:
        raise StatsUnavailable(f"cannot reach an ingestor on {endpoint}: {e}") from None
    finally:
        sock.close()
    return reply
