"""Counters shared by all processes, and the figures of docs/operations.md#stats made from them.

Every counter has exactly one writing process (the front, writer ``i``, or
the supervisor), so plain 64-bit stores suffice; the supervisor reads them
all to answer ``ingestor stats``. The block is owned by the supervisor like
the ring, so a writer's counts survive its crash and restart.
"""

from __future__ import annotations

import json
from multiprocessing.shared_memory import SharedMemory

import numpy as np
import zmq

from .errors import StatsUnavailable
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
        ("latency_hist", "<i8", (HIST_BUCKETS,)),
        ("batch_size_hist", "<i8", (len(BATCH_SIZE_BOUNDS) + 1,)),  # events per committed batch
        ("batch_ms_hist", "<i8", (len(BATCH_MS_BOUNDS) + 1,)),  # ms per committed batch
    ]
)


class Counters(SharedBlock):
    """The shared counter block: ``front`` (one FRONT_DTYPE record) and ``writers`` (one WRITER_DTYPE per lane)."""

    def __init__(self, shm: SharedMemory, writers: int, owner: bool) -> None:
        super().__init__(shm, owner)
        self.front = np.ndarray((), FRONT_DTYPE, shm.buf, 0)
        self.writers = np.ndarray((writers,), WRITER_DTYPE, shm.buf, _writers_offset())

    @classmethod
    def create(cls, writers: int) -> Counters:
        return cls(cls._allocate(_writers_offset() + writers * WRITER_DTYPE.itemsize), writers, owner=True)

    @classmethod
    def attach(cls, name: str, writers: int) -> Counters:
        """SharedMemoryError when the block is gone."""
        return cls(cls._open(name, "shared counters"), writers, owner=False)

    def _unmap(self) -> None:
        del self.front, self.writers


def _writers_offset() -> int:
    return (FRONT_DTYPE.itemsize + 63) // 64 * 64


def bucket_of(value: float, bounds: tuple) -> int:
    """Index of the first bound >= ``value`` (len(bounds) for +Inf)."""
    return int(np.searchsorted(bounds, value, side="left"))


def cumulative_buckets(counts: np.ndarray, bounds: tuple) -> list[tuple[str, int]]:
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


# -- the stats socket ---------------------------------------------------------

STATS_REQUEST = b"stats"


def query(endpoint: str, timeout_s: float = 2.0) -> dict:
    """Ask the service on ``endpoint`` for its figures (docs/operations.md#stats).

    Raises StatsUnavailable when nothing answers within ``timeout_s`` seconds.
    """
    ctx = zmq.Context.instance()
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
    return json.loads(reply)


def format_text(stats: dict) -> str:
    """The figures as aligned ``name: value`` lines for people."""
    lines = []
    for key, value in stats.items():
        if key in ("writers", "latency_histogram", "batch_size_histogram", "batch_ms_histogram", "recent_events"):
            continue
        lines.append(f"{key:>20}: {value}")
    for i, w in enumerate(stats.get("writers", [])):
        state = "alive" if w["alive"] else "dead"
        lines.append(
            f"{'writer ' + str(i):>20}: pid {w['pid']} {state}, {w['persisted']} persisted in "
            f"{w['batches']} batches, last {w['last_batch_ms']} ms, {w['restarts']} restarts"
        )
    return "\n".join(lines)
