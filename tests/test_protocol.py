"""Decoding and validation: one test per rule of docs/PROTOCOL.md §2 and §1.1."""

from __future__ import annotations

import datetime as dt
import json
import time

import msgspec
import pytest

from ingestor.protocol import MAX_EVENTS_PER_FRAME, RecordBuilder, decode_frame

NOW_US = time.time_ns() // 1000
NOW_MS = NOW_US // 1000


def ev(**over) -> dict:
    base = {"scale_id": 7, "seq": 1, "ts": NOW_MS - 1000, "data_1": "12.50"}
    base.update(over)
    return {k: v for k, v in base.items() if v is not ...}


def decode(frame: bytes):
    b = RecordBuilder()
    n, rejected = decode_frame(frame, b, NOW_US)
    return n, b.build(NOW_US * 1000), rejected


def j(obj) -> bytes:
    return json.dumps(obj).encode()


def m(obj) -> bytes:
    return msgspec.msgpack.encode(obj)


def test_json_single_event_is_accepted():
    n, recs, rejected = decode(j(ev()))
    assert (n, len(recs), rejected) == (1, 1, [])
    r = recs[0]
    assert (r["scale_id"], r["seq"], r["measured_us"]) == (7, 1, (NOW_MS - 1000) * 1000)
    assert (bytes(r["text"][0]), r["text_len"][0]) == (b"12.50", 5)
    assert list(r["text_len"][1:]) == [-1, -1, -1, -1]


def test_msgpack_array_is_accepted():
    n, recs, rejected = decode(m([ev(seq=i) for i in range(10)]))
    assert n == 10 and not rejected
    assert recs["seq"].tolist() == list(range(10))


def test_first_byte_selects_json_or_msgpack():
    # a JSON array frame and a MessagePack map frame side by side
    assert decode(j([ev()]))[0:1] == (1,)
    assert not decode(m(ev()))[2]


@pytest.mark.parametrize("ts,expected_us", [
    ("2026-01-02T03:04:05.123456+02:00", int(dt.datetime(2026, 1, 2, 1, 4, 5, 123456, dt.UTC).timestamp() * 1e6)),
    ("2026-01-02T03:04:05Z", int(dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC).timestamp() * 1e6)),
    (1767322800000, 1767322800000 * 1000),
])
def test_ts_as_rfc3339_with_offset_or_epoch_ms(ts, expected_us):
    _, recs, rejected = decode(j(ev(ts=ts)))
    assert not rejected
    assert int(recs[0]["measured_us"]) == expected_us


def test_ts_as_msgpack_timestamp_extension():
    when = dt.datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=dt.UTC)
    _, recs, rejected = decode(m(ev(ts=when)))
    assert not rejected
    assert int(recs[0]["measured_us"]) == int(when.timestamp() * 1_000_000)


def test_ts_string_without_offset_is_invalid():
    _, recs, rejected = decode(j(ev(ts="2026-01-02T03:04:05")))
    assert len(recs) == 0 and "timezone" in rejected[0].reason


def test_ts_more_than_24h_in_the_future_is_invalid():
    _, _, rejected = decode(j(ev(ts=NOW_MS + 25 * 3600 * 1000)))
    assert rejected[0].kind == "future_ts" and rejected[0].scale_id == 7
    _, recs, rejected = decode(j(ev(ts=NOW_MS + 23 * 3600 * 1000)))
    assert len(recs) == 1 and not rejected


@pytest.mark.parametrize("ts,why", [
    (1_700_000_000, "before 2000-01-01T00:00:00Z (seconds instead of milliseconds?)"),  # finding 9 of issue 26
    (0, "before 2000-01-01T00:00:00Z"), (946_684_799_999, "before 2000-01-01"), ("1999-12-31T23:59:59Z", "before 2000"),
])
def test_ts_before_2000_is_invalid_and_seconds_are_named(ts, why):
    for frame in (j([ev(ts=ts)] * 10), m(ev(ts=ts))):  # the column path and the per-event path alike
        _, recs, rejected = decode(frame)
        assert len(recs) == 0 and rejected[0].kind == "past_ts" and why in rejected[0].reason, rejected[0]
        assert ("seconds" in rejected[0].reason) == ("seconds" in why)
    _, recs, rejected = decode(j(ev(ts=946_684_800_000)))
    assert len(recs) == 1 and not rejected


@pytest.mark.parametrize("field", ["scale_id", "seq", "ts"])
def test_missing_required_field_is_invalid(field):
    _, recs, rejected = decode(j(ev(**{field: ...})))
    assert len(recs) == 0
    assert rejected[0].kind == "missing_field" and f"`{field}`" in rejected[0].reason


@pytest.mark.parametrize("value", [0, -1, 2_147_483_648])
def test_scale_id_out_of_range_is_invalid(value):
    _, recs, rejected = decode(j(ev(scale_id=value)))
    assert len(recs) == 0 and "$.scale_id" in rejected[0].reason


def test_scale_id_bounds_are_accepted():
    _, recs, _ = decode(j([ev(scale_id=1), ev(scale_id=2_147_483_647)]))
    assert recs["scale_id"].tolist() == [1, 2_147_483_647]


@pytest.mark.parametrize("value", [-1, 2**63])
def test_seq_out_of_range_is_invalid(value):
    _, recs, rejected = decode(m(ev(seq=value)) if value < 2**64 else j(ev(seq=value)))
    assert len(recs) == 0 and "seq" in rejected[0].reason


def test_seq_upper_bound_is_accepted():
    _, recs, _ = decode(m(ev(seq=2**63 - 1)))
    assert int(recs[0]["seq"]) == 2**63 - 1


@pytest.mark.parametrize("over", [
    {"scale_id": "7"}, {"scale_id": True}, {"scale_id": 7.5}, {"seq": "1"}, {"ts": True},
    {"ts": [1]}, {"data_1": [1]}, {"data_2": {"a": 1}}, {"data_3": True},
])
def test_wrong_type_is_invalid(over):
    _, recs, rejected = decode(j(ev(**over)))
    assert len(recs) == 0 and rejected[0].reason.startswith("invalid event: Expected")


def test_data_text_of_64_bytes_is_accepted_and_65_is_invalid():
    ok = "é" * 32  # 64 bytes of UTF-8 in 32 characters
    _, recs, rejected = decode(j(ev(data_1=ok)))
    assert not rejected and bytes(recs[0]["text"][0]).decode() == ok
    _, recs, rejected = decode(j(ev(data_1=ok + "x")))
    assert len(recs) == 0 and rejected[0].kind == "text_too_long" and "65 bytes" in rejected[0].reason


def test_numbers_are_stored_as_shortest_decimal_text():
    _, recs, _ = decode(j(ev(data_1=42, data_2=2.5, data_3=1.0, data_4=0.1, data_5=-7)))
    texts = [bytes(t).decode() for t in recs[0]["text"]]
    assert texts == ["42", "2.5", "1", "0.1", "-7"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinity_are_invalid(value):
    _, recs, rejected = decode(m(ev(data_2=value)))
    assert len(recs) == 0 and rejected[0].kind == "not_finite"


def test_null_and_absent_data_are_null():
    _, recs, _ = decode(j(ev(data_1=None)))
    assert recs[0]["text_len"].tolist() == [-1] * 5


def test_nul_character_is_invalid():
    _, recs, rejected = decode(j(ev(data_1="a\u0000b")))
    assert len(recs) == 0 and "U+0000" in rejected[0].reason


def test_unknown_fields_are_ignored():
    _, recs, rejected = decode(j(ev(firmware="1.2", extra={"x": [1, 2]})))
    assert len(recs) == 1 and not rejected


def test_one_invalid_event_does_not_invalidate_the_array():
    frame = j([ev(seq=1), ev(seq=2, scale_id=0), ev(seq=3), ev(seq=4, data_1="x" * 65), ev(seq=5)])
    n, recs, rejected = decode(frame)
    assert n == 5
    assert recs["seq"].tolist() == [1, 3, 5]
    assert [r.position for r in rejected] == [1, 3]
    assert json.loads(rejected[0].raw)["seq"] == 2  # the event's own bytes are kept


def test_array_over_1000_events_is_invalid():
    n, recs, rejected = decode(m([ev(seq=i) for i in range(MAX_EVENTS_PER_FRAME + 1)]))
    assert n == MAX_EVENTS_PER_FRAME + 1 and len(recs) == 0
    assert len(rejected) == n and rejected[0].kind == "too_many_events"


def test_array_of_exactly_1000_events_is_accepted():
    _, recs, rejected = decode(m([ev(seq=i) for i in range(MAX_EVENTS_PER_FRAME)]))
    assert len(recs) == MAX_EVENTS_PER_FRAME and not rejected


@pytest.mark.parametrize("frame", [b"", b"\xc1", b"{not json", b'{"scale_id": 1', b"\x92\x01", b"[1, 2]", b"\xff" * 20,
                                   b'{"scale_id": 1, "seq": 1, "ts": 1, "data_1": "\xff\xfe"}'])
def test_undecodable_or_non_event_frames_are_invalid_never_raise(frame):
    n, recs, rejected = decode(frame)
    assert len(recs) == 0 and len(rejected) >= 1
    assert all(r.reason for r in rejected)


def test_invalid_event_in_array_keeps_its_scale_id_when_known():
    _, _, rejected = decode(m([ev(scale_id=9, seq="x")]))
    assert rejected[0].scale_id == 9
