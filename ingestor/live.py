"""The live page at ``/`` of the HTTP monitoring server (docs/operations.md#watching-it).

Three things the page's script (``web/live.js``) asks for, besides its own
static files:

``/api/v1/live``
    ``{"glance": {"level", "reasons"}, "stats": <the stats socket's figures but dsn>}``,
    always 200, so a browser's console stays quiet through an outage: the
    level is the page's colour, the reasons say why in words (:func:`glance`).
``/api/v1/scales/<scale_id>``
    One scale's latest measurement (``scale_current_states``) and its last
    :data:`LAST_WEIGHINGS` weighings (``weighing_logs``, newest first, with
    the alibi ``record_no`` where chained): :func:`lookup`.

The page is read-only and fetches nothing from elsewhere: uPlot (MIT, its
licence beside it in ``web/``) is vendored.
"""

from __future__ import annotations

import datetime as dt
import importlib.resources
from typing import Literal

import msgspec
import psycopg

from .schema import set_search_path
from .stats import Figures

LAST_WEIGHINGS = 10
LOOKUP_TIMEOUT_MS = 2000  # connect and statement: a lookup never holds the HTTP thread long
STATIC = {  # file name -> content type: the only files served, so a path can never leave web/
    "index.html": "text/html; charset=utf-8",
    "live.js": "text/javascript; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
    "uPlot.LICENSE": "text/plain; charset=utf-8",
}
SCALE_ID_MAX = 2**31 - 1  # scale_id is a PostgreSQL integer (docs/PROTOCOL.md §3)
CENTRAL_STALLED_AMBER_S = 900  # as the alert IngestorCentralCopyStalled (monitoring/prometheus/alerts.yml)


class Glance(msgspec.Struct):
    """The page's colour and why: ``red`` when /health fails, ``amber`` when it holds but something
    needs a look, ``green`` otherwise; ``reasons`` are sentences, worst first (empty when green)."""

    level: Literal["green", "amber", "red"]
    reasons: list[str]


class Live(msgspec.Struct):
    glance: Glance
    stats: Figures | None


def glance(s: Figures | None, healthy: bool, reason: str) -> Glance:
    """The :class:`Glance` of figures ``s``, given /health's verdict on them (``healthy``, ``reason``)."""
    if s is None:
        return Glance("amber", ["starting"])
    reasons = [] if healthy else [reason]
    if s.status == "starting" and healthy:
        reasons.append("starting: waiting for PostgreSQL")
    if s.status == "draining":
        reasons.append("draining before it exits")
    if s.lost:
        reasons.append(f"{s.lost} accepted events were lost since the start (the log's ERROR lines name them)")
    if s.spool_events:
        reasons.append(f"{s.spool_events} events wait in the on-disk spool ({s.spool_bytes} bytes)")
    if any(w.restarts for w in s.writers):
        reasons.append(f"writers restarted {sum(w.restarts for w in s.writers)} times since the start")
    if s.archive_failures:
        reasons.append(f"{s.archive_failures} archive attempts failed")
    if s.retention_refused:
        reasons.append(f"retention refused to drop {s.retention_refused} day partitions (no verified archive)")
    if s.seal_failures:
        reasons.append(f"{s.seal_failures} seals could not be stored")
    if (s.central_stalled_s or 0) > CENTRAL_STALLED_AMBER_S:
        reasons.append(f"the central server has confirmed nothing for {s.central_stalled_s:.0f} s")
    level: Literal["green", "amber", "red"] = "red" if not healthy else "amber" if reasons else "green"
    return Glance(level, reasons)


class Weighing(msgspec.Struct):
    seq: int
    measured_at: str  #: RFC 3339
    created_at: str
    data: list[object]  #: data_1 … data_5, decoded JSON (null where absent)
    record_no: int | None  #: the alibi chain's record number; None where the scale was not chained


class Latest(msgspec.Struct):
    seq: int
    measured_at: str
    data: list[object]
    updated_at: str


class ScaleView(msgspec.Struct):
    scale_id: int
    latest: Latest | None  #: None when the scale has sent nothing yet
    weighings: list[Weighing]  #: newest first, at most LAST_WEIGHINGS


class LookupRefused(Exception):
    """A lookup that cannot be answered: ``status`` is the HTTP status (400 bad id, 503 database)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_scale_id(text: str) -> int:
    """The scale id in a URL; LookupRefused(400) naming the value when it is not one."""
    if not (text.isascii() and text.isdigit()) or not 0 <= int(text) <= SCALE_ID_MAX:  # "٣" is a digit to isdigit
        raise LookupRefused(400, f"invalid scale id {text!r}: expected an integer from 0 to {SCALE_ID_MAX}")
    return int(text)


def lookup(dsn: str, schema: str, scale_id: int) -> ScaleView:
    """Scale ``scale_id``'s latest measurement and last weighings, read in one read-only transaction.

    Raises LookupRefused(503) with PostgreSQL's message when the database cannot answer within
    :data:`LOOKUP_TIMEOUT_MS` (connection or statement).
    """
    options = f"-c statement_timeout={LOOKUP_TIMEOUT_MS} -c default_transaction_read_only=on"
    try:
        with psycopg.connect(dsn, connect_timeout=max(1, LOOKUP_TIMEOUT_MS // 1000), options=options,
                             autocommit=True) as conn:
            set_search_path(conn, schema)
            latest = conn.execute(
                "SELECT seq, measured_at, ARRAY[data_1, data_2, data_3, data_4, data_5], updated_at "
                "FROM scale_current_states WHERE scale_id = %s", (scale_id,)).fetchone()
            # the (scale_id, measured_at) index of every day partition, merged: no scan of the scale's history
            rows = conn.execute(
                "SELECT seq, measured_at, created_at, ARRAY[data_1, data_2, data_3, data_4, data_5], record_no "
                "FROM weighing_logs WHERE scale_id = %s ORDER BY measured_at DESC, seq DESC LIMIT %s",
                (scale_id, LAST_WEIGHINGS)).fetchall()
    except psycopg.Error as e:
        raise LookupRefused(503, f"the database cannot answer: {str(e).strip().splitlines()[0]}") from None
    return ScaleView(
        scale_id,
        Latest(latest[0], _iso(latest[1]), list(latest[2]), _iso(latest[3])) if latest else None,
        [Weighing(seq, _iso(m), _iso(c), list(data), no) for seq, m, c, data, no in rows])


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds")


def static_file(name: str) -> tuple[bytes, str] | None:
    """(content, content type) of page file ``name``, or None when it is not one of :data:`STATIC`."""
    if name not in STATIC:
        return None
    return importlib.resources.files("ingestor").joinpath("web", name).read_bytes(), STATIC[name]


def live(s: Figures | None, healthy: bool, reason: str) -> bytes:
    """The ``/api/v1/live`` body: the stats without ``dsn`` (the page may be bound to the plant network; the
    database's address stays on the stats socket, which is local)."""
    shown = msgspec.structs.replace(s, dsn=None) if s is not None else None
    return msgspec.json.encode(Live(glance(s, healthy, reason), shown))
