"""The wire protocol of docs/PROTOCOL.md §2: frames in, validated measurements out.

A *frame* is one ZeroMQ message part, MessagePack or JSON (docs/PROTOCOL.md §2: a first
byte of ``{`` or ``[`` means JSON). It holds one event or an array of at most
:data:`MAX_EVENTS_PER_FRAME` events. :class:`Event` is the single definition
of an event; msgspec checks types and ranges while decoding, and
:func:`decode_frame` adds the rules a type cannot express (text length in
bytes, finite numbers, ``ts`` at most 24 h ahead).

Valid events go into a :class:`RecordBuilder`, which turns a whole received
batch into one numpy array of :data:`RECORD_DTYPE` records, the unit the ring
stores and the writers COPY. Invalid events come back as :class:`Rejected`
values for the dead-letter store; no input raises.
"""

from __future__ import annotations

import datetime as _dt
import math
import operator
from typing import Annotated, NamedTuple, TypeAlias, TypeVar, cast

import msgspec
import numpy as np

from .ring import whole

MAX_EVENTS_PER_FRAME = 1000  # docs/PROTOCOL.md §2
MAX_TEXT_BYTES = 64  # docs/PROTOCOL.md §3: a data string is at most 64 bytes of UTF-8
FUTURE_TOLERANCE_US = 24 * 3600 * 1_000_000  # docs/PROTOCOL.md §3: ts at most 24 h ahead
DATA_FIELDS = ("data_1", "data_2", "data_3", "data_4", "data_5")
# An array of at least this many events is tried column by column first (RecordBuilder.add_all);
# below it the fixed cost of the columns is more than the per-event way's.
FAST_PATH_MIN_EVENTS = 8

EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)  #: the Unix epoch: every µs and ms count of the wire and the ring starts here
_SURELY_SHORT = MAX_TEXT_BYTES // 4  # a str this long is at most 64 bytes of UTF-8 (4 bytes a character at most)
_ONE_US = _dt.timedelta(microseconds=1)
# PostgreSQL's timestamptz covers 4713 BC .. 294276 AD; Python's datetime covers
# years 1 .. 9999, so integer ts are held to the same range as string ts.
_TS_MIN_MS = (_dt.datetime(1, 1, 1, tzinfo=_dt.UTC) - EPOCH) // _dt.timedelta(milliseconds=1)
# docs/PROTOCOL.md §3 (v1.2): a ts before this is no plant's measurement. Its usual cause is a sender counting seconds
# (1.7e9) instead of milliseconds, which would store 1970-01-20 without a word: refused, saying so.
PLAUSIBLE_SINCE_MS = 946_684_800_000  # 2000-01-01T00:00:00Z

Text = str | int | float | None


def _iso(ms: int) -> str:
    return (EPOCH + _dt.timedelta(milliseconds=ms)).strftime("%Y-%m-%dT%H:%M:%SZ")


class Event(msgspec.Struct, gc=False):
    """One measurement as a sender sends it (docs/PROTOCOL.md §3). Unknown fields are ignored."""

    scale_id: Annotated[int, msgspec.Meta(ge=1, le=2_147_483_647)]
    seq: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
    ts: int | Annotated[_dt.datetime, msgspec.Meta(tz=True)]
    data_1: Text = None
    data_2: Text = None
    data_3: Text = None
    data_4: Text = None
    data_5: Text = None


class _Probe(msgspec.Struct):
    """Reads only ``scale_id`` out of an invalid event, for the dead letter."""

    scale_id: object = None


_T = TypeVar("_T")
_Decoder: TypeAlias = msgspec.json.Decoder[_T] | msgspec.msgpack.Decoder[_T]
_Frame = Annotated[list[Event], msgspec.Meta(max_length=MAX_EVENTS_PER_FRAME)] | Event
# keyed by "is JSON": the front decodes each frame in the encoding its first byte says
_DECODERS: dict[bool, _Decoder[list[Event] | Event]] = {
    True: msgspec.json.Decoder(_Frame),
    False: msgspec.msgpack.Decoder(_Frame),
}
_EVENT_DECODERS: dict[bool, _Decoder[Event]] = {True: msgspec.json.Decoder(Event), False: msgspec.msgpack.Decoder(Event)}
_RAW_LIST_DECODERS: dict[bool, _Decoder[list[msgspec.Raw]]] = {
    True: msgspec.json.Decoder(list[msgspec.Raw]),
    False: msgspec.msgpack.Decoder(list[msgspec.Raw]),
}
_PROBE_DECODERS: dict[bool, _Decoder[_Probe]] = {True: msgspec.json.Decoder(_Probe), False: msgspec.msgpack.Decoder(_Probe)}

# A ring record: one valid measurement, fixed size so the ring can hold it in a
# numpy array and the writers can build COPY rows from columns.
#   scale_id      int32
#   text_len      int8[5]   bytes of data_1..data_5, -1 when NULL
#   seq           int64
#   measured_us   int64     ts, microseconds since 1970-01-01 UTC
#   received_ns   int64     time.time_ns() when the front received the frame
#   tag           uint64    acknowledgement tag (acked mode), 0 when none
#   text          S64[5]    UTF-8 text of data_1..data_5, NUL-padded (text
#                           never holds NUL, see _text)
RECORD_DTYPE = np.dtype(
    [
        ("scale_id", "<i4"),
        ("text_len", "i1", (5,)),
        ("seq", "<i8"),
        ("measured_us", "<i8"),
        ("received_ns", "<i8"),
        ("tag", "<u8"),
        ("text", "S64", (5,)),
    ],
    align=True,
)


# Invalid UTF-8 in a string: msgspec before 0.23 raises UnicodeDecodeError, 0.23 a
# DecodeError ("Invalid UTF-8 encoded string"), like an undecodable frame.
_UNDECODABLE = (msgspec.DecodeError, UnicodeDecodeError)
_BAD_EVENT = (msgspec.DecodeError, UnicodeDecodeError, msgspec.ValidationError)


class Rejected(NamedTuple):
    """An invalid event (or an undecodable frame) and why (docs/PROTOCOL.md §3)."""

    kind: str  #: short category: undecodable, invalid, too_many_events, future_ts, past_ts, text_too_long, not_finite
    reason: str  #: one sentence naming the field and the rule broken
    scale_id: int | None  #: when the event says it and it is an integer
    raw: bytes  #: the frame, or the event's own bytes inside an array frame
    position: int | None  #: index in the frame's array, None for a single event (a tuple's own ``index`` is a method)


class _Invalid(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        self.kind, self.reason = kind, reason


def _text(name: str, value: Text) -> bytes | None:
    """Return the stored text of one data field, or None for NULL.

    Raises _Invalid for text over 64 bytes, NUL characters (PostgreSQL text
    and jsonb cannot hold U+0000) and NaN or infinite numbers.
    """
    if value is None:
        return None
    if isinstance(value, str):
        raw = value.encode()
        if len(raw) > MAX_TEXT_BYTES:
            raise _Invalid("text_too_long", f"{name} is {len(raw)} bytes of UTF-8, over the {MAX_TEXT_BYTES}-byte limit")
        if b"\x00" in raw:
            raise _Invalid("invalid", f"{name} contains U+0000, which PostgreSQL cannot store")
        return raw
    if isinstance(value, int):
        raw = str(value).encode()
    else:
        if not math.isfinite(value):
            raise _Invalid("not_finite", f"{name} is {value!r}; numbers must be finite")
        # repr() is the shortest text that reads back as the same double;
        # an integral value drops its ".0" (1.0 -> "1").
        text = repr(value)
        raw = (text[:-2] if text.endswith(".0") else text).encode()
    if len(raw) > MAX_TEXT_BYTES:
        raise _Invalid("text_too_long", f"{name} is a number of {len(raw)} digits, over the {MAX_TEXT_BYTES}-byte limit")
    return raw


class RecordBuilder:
    """Collects valid events of one received batch: whole arrays as columns, single events as rows.

    Two ways in, one result: :meth:`add_all` takes a whole decoded array at
    once, column by column (no Python per event: msgspec's objects are read
    with ``map`` and checked with numpy), when every event is of the common
    shape; otherwise :meth:`add` validates one event at a time what msgspec
    could not. ``build`` makes the numpy array once per batch, in arrival
    order.
    """

    __slots__ = ("rows", "_chunks", "_chunked", "_oldest_ms")

    def __init__(self, oldest_ms: int = PLAUSIBLE_SINCE_MS) -> None:
        """``oldest_ms``: a ts before it is ``past_ts`` (default PLAUSIBLE_SINCE_MS, as the front and replay use);
        tests of other modules pass _TS_MIN_MS to keep small readable ts."""
        self._oldest_ms = oldest_ms
        # Events added one by one, each a tuple in RECORD_DTYPE's field order: a few
        # events (a single-event frame's wake) become records in one assignment, not
        # a numpy call per column (~2 µs for one event against ~10).
        self.rows: list[tuple[int, tuple[int, ...], int, int, int, int, tuple[bytes, ...]]] = []
        self._chunks: list[np.ndarray] = []  # records built so far, in arrival order
        self._chunked = 0

    def __len__(self) -> int:
        return self._chunked + len(self.rows)

    def add_all(self, events: list[Event], now_us: int) -> bool:
        """Append every event of ``events`` when each has the common shape and passes every rule; True then.

        Common shape: integer ``ts``; each data field all strings, all
        integers, all null, or a mix of those (a float sends the frame to
        :meth:`add`). On anything else, or any rule broken, nothing is
        appended and False is returned: :meth:`add` then judges each event
        and names the rule (so both ways accept exactly the same events).
        """
        n = len(events)
        try:
            ts = np.fromiter(map(_TS, events), np.int64, n)
        except (TypeError, OverflowError):  # a datetime ts, or an integer beyond int64
            return False
        if n and (ts.min() < self._oldest_ms or ts.max() > (now_us + FUTURE_TOLERANCE_US) // 1000):
            return False
        out = np.zeros(n, RECORD_DTYPE)
        for k, field in enumerate(_DATA_GETTERS):
            if not _text_column(list(map(field, events)), out["text"][:, k], out["text_len"][:, k]):
                return False
        out["scale_id"] = np.fromiter(map(_SCALE_ID, events), np.int32, n)
        out["seq"] = np.fromiter(map(_SEQ, events), np.int64, n)
        out["measured_us"] = ts * 1000
        self._flush()
        self._chunks.append(out)
        self._chunked += n
        return True

    def _flush(self) -> None:
        """Move the events added one by one into a chunk, keeping the arrival order."""
        if self.rows:
            self._chunks.append(self._records())
            self._chunked += len(self.rows)
            self.rows = []

    def add(self, event: Event, now_us: int) -> None:
        """Append one event; raise _Invalid (and append nothing) when it breaks a rule."""
        ts = event.ts
        if isinstance(ts, int):
            if ts < _TS_MIN_MS:
                raise _Invalid("invalid", f"ts {ts} ms is before year 1")
            if ts > (now_us + FUTURE_TOLERANCE_US) // 1000:
                raise _Invalid("future_ts", f"ts {ts} ms is more than 24 h in the future")
            if ts < self._oldest_ms:
                hint = " (seconds instead of milliseconds?)" if ts * 1000 >= self._oldest_ms and ts < 10**11 else ""
                raise _Invalid("past_ts", f"ts {ts} ms is before {_iso(self._oldest_ms)}{hint}")
            us = ts * 1000
        else:
            us = (ts - EPOCH) // _ONE_US
            if us > now_us + FUTURE_TOLERANCE_US:
                raise _Invalid("future_ts", f"ts {ts.isoformat()} is more than 24 h in the future")
            if us < self._oldest_ms * 1000:
                raise _Invalid("past_ts", f"ts {ts.isoformat()} is before {_iso(self._oldest_ms)}")
        texts = []
        lengths = []
        for k, value in enumerate((event.data_1, event.data_2, event.data_3, event.data_4, event.data_5)):
            if value is None:
                texts.append(b"")
                lengths.append(-1)
                continue
            if type(value) is str and len(value) <= _SURELY_SHORT and "\x00" not in value:
                text = value.encode()  # the common case, without a call
            else:
                text = _text(DATA_FIELDS[k], value) or b""  # not None: value is not None
            texts.append(text)
            lengths.append(len(text))
        self.rows.append((event.scale_id, tuple(lengths), event.seq, us, 0, 0, tuple(texts)))

    def build(self, received_ns: int, tag: int = 0) -> np.ndarray:
        """Return the collected events as a ``RECORD_DTYPE`` array of ``len(self)`` records, in arrival order."""
        self._flush()
        chunks = self._chunks
        if len(chunks) > 1:  # whole records: numpy concatenates a structured dtype field by field
            out = np.concatenate([whole(c) for c in chunks]).view(RECORD_DTYPE)
        else:
            out = chunks[0] if chunks else np.zeros(0, RECORD_DTYPE)
        out["received_ns"] = received_ns
        out["tag"] = tag
        return out

    def _records(self) -> np.ndarray:
        """The events added one by one, as records (``received_ns`` and ``tag`` still 0)."""
        out = np.zeros(len(self.rows), RECORD_DTYPE)  # zeros: no stray bytes in the padding (the spool writes it)
        out[:] = self.rows
        return out


_TS, _SCALE_ID, _SEQ = operator.attrgetter("ts"), operator.attrgetter("scale_id"), operator.attrgetter("seq")
_DATA_GETTERS = tuple(operator.attrgetter(name) for name in DATA_FIELDS)
_NONE = type(None)


def _text_column(values: list[Text], text: np.ndarray, text_len: np.ndarray) -> bool:
    """Fill one data field's column (``text`` S64, ``text_len`` int8, -1 for NULL) from ``values``.

    Returns False, writing nothing that matters, when a value is a float or
    breaks a rule of :func:`_text` (the caller then takes the per-event way).
    """
    kinds = set(map(type, values))
    if kinds == {_NONE}:
        text_len[:] = -1
        return True
    if kinds == {str}:
        try:
            raw = list(map(str.encode, cast("list[str]", values)))  # kinds == {str}
        except UnicodeEncodeError:
            return False
    elif kinds <= {str, int, _NONE}:
        raw = [v.encode() if type(v) is str else b"" if v is None else str(v).encode() for v in values]
    else:
        return False
    if max(map(len, raw)) > MAX_TEXT_BYTES or b"\x00" in b"".join(raw):
        return False
    text[:] = raw
    text_len[:] = np.fromiter(map(len, raw), np.int8, len(raw))
    if _NONE in kinds:
        text_len[np.fromiter((v is None for v in values), bool, len(values))] = -1
    return True


def _is_json(frame: bytes) -> bool:
    return frame[:1] in (b"{", b"[")


def _kind_of(error: msgspec.ValidationError) -> str:
    return "missing_field" if "missing required field" in str(error) else "invalid"


def _scale_id_of(raw: bytes, json: bool) -> int | None:
    try:
        value = _PROBE_DECODERS[json].decode(raw).scale_id
    except _BAD_EVENT:
        return None
    return value if type(value) is int else None


def decode_frame(frame: bytes, into: RecordBuilder, now_us: int) -> tuple[int, list[Rejected]]:
    """Decode one frame, add its valid events to ``into``, return what was rejected.

    Returns ``(events, rejected)``: how many events the frame held (an
    undecodable frame counts as one) and the invalid ones. Never raises for
    any input bytes; ``now_us`` (microseconds since the epoch) dates the 24 h
    rule of docs/PROTOCOL.md §3.
    """
    json = _is_json(frame)
    try:
        decoded = _DECODERS[json].decode(frame)
    except (msgspec.ValidationError, UnicodeDecodeError):
        # one bad event (or bad UTF-8 in one event's string) must not sink its array
        return _decode_one_by_one(frame, json, into, now_us)
    except _UNDECODABLE as e:
        # an array whose events can still be told apart (bad UTF-8 in one event's string
        # with msgspec 0.23): only the bad events are invalid
        raws = _raw_events(frame, json)
        if raws is not None:
            return _judge_each(raws, json, into, now_us)
        if json and frame[:1] == b"[":
            split = _split_json_array(frame)
            if split is not None:  # e.g. a lone surrogate escape in one event: only that one is invalid
                return _judge_each(split, json, into, now_us)
        fmt = "JSON" if json else "MessagePack"
        return 1, [Rejected("undecodable", f"undecodable {fmt} frame: {e}", None, frame, None)]
    if not isinstance(decoded, list):
        try:
            into.add(decoded, now_us)
        except _Invalid as e:
            return 1, [Rejected(e.kind, e.reason, decoded.scale_id, frame, None)]
        return 1, []
    if len(decoded) >= FAST_PATH_MIN_EVENTS and into.add_all(decoded, now_us):
        return len(decoded), []
    rejected: list[Rejected] = []
    own: list[msgspec.Raw] | None = None
    for index, event in enumerate(decoded):
        try:
            into.add(event, now_us)
        except _Invalid as e:
            if own is None:  # rare: only now pay for the events' own bytes
                own = _RAW_LIST_DECODERS[json].decode(frame)
            rejected.append(Rejected(e.kind, e.reason, event.scale_id, bytes(own[index]), index))
    return len(decoded), rejected


def _decode_one_by_one(frame: bytes, json: bool, into: RecordBuilder, now_us: int) -> tuple[int, list[Rejected]]:
    """Slow path for a frame msgspec rejected as a whole: judge each event alone."""
    raws = _raw_events(frame, json)
    if raws is None:  # not an array (or not decodable as one): one event
        rejected = _judge(frame, None, json, into, now_us)
        return 1, [rejected] if rejected else []
    return _judge_each(raws, json, into, now_us)


def _raw_events(frame: bytes, json: bool) -> list[bytes] | None:
    """Each event's own bytes when ``frame`` is an array, else None."""
    try:
        return [bytes(raw) for raw in _RAW_LIST_DECODERS[json].decode(frame)]
    except _BAD_EVENT:
        return None


def _judge_each(raws: list[bytes], json: bool, into: RecordBuilder, now_us: int) -> tuple[int, list[Rejected]]:
    """Judge each event of an array frame alone (``raws``: each event's own bytes)."""
    if len(raws) > MAX_EVENTS_PER_FRAME:
        reason = f"frame holds {len(raws)} events, over the limit of {MAX_EVENTS_PER_FRAME}"
        return len(raws), [
            Rejected("too_many_events", reason, _scale_id_of(raw, json), raw, index) for index, raw in enumerate(raws)
        ]
    judged = (_judge(raw, index, json, into, now_us) for index, raw in enumerate(raws))
    return len(raws), [r for r in judged if r is not None]


def split_events(frame: bytes) -> list[bytes]:
    """Each event's own bytes of ``frame`` (an array frame), or ``[frame]`` when it is one event or undecodable."""
    json = _is_json(frame)
    raws = _raw_events(frame, json)
    if raws is None:
        split = _split_json_array(frame) if json and frame[:1] == b"[" else None
        return split if split is not None else [frame]
    return raws


def _split_json_array(frame: bytes) -> list[bytes] | None:
    """The events of a JSON array that msgspec refuses as a whole, each re-encoded; None if not an array.

    msgspec rejects a lone surrogate escape (``"\\ud800"``) anywhere in a
    frame, even inside ``msgspec.Raw``; the standard library's parser keeps
    it, and ``ensure_ascii`` writes it back as the same escape, so only the
    event holding it fails when judged alone (docs/PROTOCOL.md §3).
    """
    import json as stdlib_json

    try:
        events = stdlib_json.loads(frame)
    except (ValueError, RecursionError):
        return None
    if type(events) is not list:
        return None
    return [stdlib_json.dumps(event, ensure_ascii=True).encode() for event in events]


def _judge(raw: bytes, index: int | None, json: bool, into: RecordBuilder, now_us: int) -> Rejected | None:
    """Decode one event's bytes and add it to ``into``; return why it is invalid, or None."""
    try:
        event = _EVENT_DECODERS[json].decode(raw)
    except _BAD_EVENT as e:
        kind = _kind_of(e) if isinstance(e, msgspec.ValidationError) else "undecodable"
        return Rejected(kind, f"invalid event: {e}", _scale_id_of(raw, json), raw, index)
    try:
        into.add(event, now_us)
    except _Invalid as e:
        return Rejected(e.kind, e.reason, event.scale_id, raw, index)
    return None
