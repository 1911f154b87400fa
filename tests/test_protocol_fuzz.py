"""Property tests of the decoder (hypothesis): any bytes in, a verdict for every event out, no exception."""

from __future__ import annotations

import json
import math
import time

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestor import protocol
from ingestor.protocol import MAX_EVENTS_PER_FRAME, PLAUSIBLE_SINCE_MS, RecordBuilder, decode_frame

NOW_US = time.time_ns() // 1000
NOW_MS = NOW_US // 1000
DAY_MS = 24 * 3600 * 1000
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decode(frame: bytes):
    builder = RecordBuilder()
    n, rejected = decode_frame(frame, builder, NOW_US)
    # every event the frame held is exactly one of: stored (valid) or rejected
    assert len(builder) + len(rejected) == n
    return n, builder.build(NOW_US * 1000), rejected


def fits(text: str) -> bool:
    return "\x00" not in text and len(text.encode()) <= 64


data_value = st.one_of(
    st.none(),
    st.text(max_size=20).filter(fits),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
)
valid_event = st.fixed_dictionaries(
    {
        "scale_id": st.integers(1, 2**31 - 1),
        "seq": st.integers(0, 2**63 - 1),
        "ts": st.integers(PLAUSIBLE_SINCE_MS, NOW_MS + DAY_MS - 60_000),
    },
    optional={f"data_{k}": data_value for k in range(1, 6)} | {"unknown_field": st.integers(-(2**63), 2**63 - 1)},
)

# (field, bad value, kind) — each breaks exactly one rule of docs/PROTOCOL.md §3
MUTATIONS = [
    ("scale_id", 0, "invalid"),
    ("scale_id", 2**31, "invalid"),
    ("scale_id", "7", "invalid"),
    ("seq", -1, "invalid"),
    ("seq", 2**63, "invalid"),
    ("ts", NOW_MS + DAY_MS + 3_600_000, "future_ts"),
    ("ts", PLAUSIBLE_SINCE_MS - 1, "past_ts"),
    ("ts", NOW_MS // 1000, "past_ts"),  # seconds, not milliseconds
    ("ts", "yesterday", "invalid"),
    ("ts", 1.5, "invalid"),
    ("data_1", "x" * 65, "text_too_long"),
    ("data_2", "é" * 33, "text_too_long"),
    ("data_3", [1, [2, [3, [4, [5]]]]], "invalid"),
    ("data_4", {"nested": {"deep": [1]}}, "invalid"),
    ("data_5", True, "invalid"),
    ("scale_id", ..., "missing_field"),
    ("ts", ..., "missing_field"),
]
MSGPACK_ONLY = [("data_1", math.nan, "not_finite"), ("data_2", math.inf, "not_finite"), ("data_3", -math.inf, "not_finite")]


def mutated(event: dict, mutation: tuple) -> dict:
    field, value, _ = mutation
    out = dict(event)
    if value is ...:
        out.pop(field)
    else:
        out[field] = value
    return out


@SETTINGS
@given(st.binary(max_size=2048))
def test_any_bytes_decode_without_raising(frame):
    decode(frame)


@SETTINGS
@given(st.lists(valid_event, min_size=1, max_size=20), st.data())
def test_truncated_messagepack_is_never_stored_as_garbage(events, data):
    frame = msgspec.msgpack.encode(events)
    cut = data.draw(st.integers(0, len(frame) - 1))
    n, records, rejected = decode(frame[:cut])
    assert len(records) == 0 and n == 1 and rejected[0].kind == "undecodable"


@SETTINGS
@given(st.lists(st.tuples(valid_event, st.none() | st.sampled_from(MUTATIONS + MSGPACK_ONLY)), min_size=1, max_size=40),
       st.booleans())
def test_each_event_of_an_array_gets_its_own_verdict(items, as_json):
    if as_json:  # JSON has no NaN or infinity
        items = [(e, m if m not in MSGPACK_ONLY else None) for e, m in items]
    events = [mutated(e, m) if m else e for e, m in items]
    frame = json.dumps(events).encode() if as_json else msgspec.msgpack.encode(events)
    n, records, rejected = decode(frame)
    expected_bad = {i: m[2] for i, (_, m) in enumerate(items) if m}
    assert n == len(events)
    assert {r.position: r.kind for r in rejected} == expected_bad
    good = [e for i, e in enumerate(events) if i not in expected_bad]
    assert records["scale_id"].tolist() == [e["scale_id"] for e in good]
    assert records["seq"].tolist() == [e["seq"] for e in good]


@settings(max_examples=20, deadline=None)
@given(valid_event, st.integers(MAX_EVENTS_PER_FRAME + 1, MAX_EVENTS_PER_FRAME + 50))
def test_arrays_over_the_limit_reject_every_event(event, size):
    n, records, rejected = decode(msgspec.msgpack.encode([event] * size))
    assert n == size and len(records) == 0
    assert {r.kind for r in rejected} == {"too_many_events"}


@SETTINGS
@given(valid_event, st.binary(min_size=1, max_size=8).filter(lambda b: not _utf8(b)))
def test_invalid_utf8_in_a_string_rejects_only_that_event(event, bad):
    marker = "\u2603MARK"
    frame = msgspec.msgpack.encode([event, dict(event, data_1=marker)])
    raw_str = bytes([0xA0 | len(bad)]) + bad  # a MessagePack str header over bytes that are not UTF-8
    frame = frame.replace(msgspec.msgpack.encode(marker), raw_str)
    n, records, rejected = decode(frame)
    assert n == 2 and len(records) == 1
    assert [(r.position, r.kind) for r in rejected] == [(1, "undecodable")]


def _utf8(b: bytes) -> bool:
    try:
        b.decode()
    except UnicodeDecodeError:
        return False
    return True


column_value = st.one_of(  # the values the column way takes, and the ones that send it to the per-event way
    st.none(), st.text(max_size=70), st.integers(-(2**63), 2**64 - 1), st.floats(), st.sampled_from(["", "\x00", "é" * 33]),
)
column_event = st.fixed_dictionaries(
    {"scale_id": st.integers(1, 2**31 - 1), "seq": st.integers(0, 2**63 - 1),
     "ts": st.one_of(st.integers(-(2**62), NOW_MS + 2 * DAY_MS), st.just("2026-11-25T10:00:00+01:00"))},
    optional={f"data_{k}": column_value for k in range(1, 6)},
)


@SETTINGS
@given(events=st.lists(column_event, min_size=8, max_size=40), shared=st.booleans())
def test_the_column_way_and_the_per_event_way_accept_the_same_events_into_the_same_records(events, shared):
    if shared:  # whole columns of one kind: the column way's common case
        events = [{**e, "ts": NOW_MS - e["seq"] % 1000, "data_1": f"{e['seq'] % 1000}.5 kg", "data_2": None,
                   "data_3": "stable", "data_4": e["scale_id"] % 50} for e in events]
    frame = msgspec.msgpack.encode(events)
    fast = decode(frame)
    protocol.FAST_PATH_MIN_EVENTS, before = 10**9, protocol.FAST_PATH_MIN_EVENTS
    try:
        slow = decode(frame)
    finally:
        protocol.FAST_PATH_MIN_EVENTS = before
    assert fast[0] == slow[0] and fast[1].tobytes() == slow[1].tobytes()
    assert [(r.kind, r.reason, r.position) for r in fast[2]] == [(r.kind, r.reason, r.position) for r in slow[2]]
