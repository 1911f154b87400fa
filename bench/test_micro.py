"""Micro-benchmarks of the hot paths (pytest-benchmark), apart from the test suite.

    python -m pytest bench/test_micro.py -o addopts="" --benchmark-only

Each times one step of an event's path on realistic input (the bench
plant's events: 300 scales, five data fields): decoding a frame, putting a
batch into the ring and taking it out, building a writer's COPY payload and
its binary array parameters. No assertions on time: the figures are for
comparing changes on the same machine.
"""

from __future__ import annotations

import time

import msgspec
import numpy as np
import pytest

from ingestor import copy_payload
from ingestor.copy_payload import INT8_ARRAY_OID, BinaryArray
from ingestor.protocol import RECORD_DTYPE, RecordBuilder, decode_frame
from ingestor.ring import Ring
from ingestor.simulator import event
from ingestor.writer import latest_per_scale

NOW_US = time.time_ns() // 1000
BATCH = 5000


def events(n: int) -> list[dict]:
    return [event(i, scales=300, seq_start=0, start_ms=NOW_US // 1000 - 3_600_000, period_ms=1000.0) for i in range(n)]


@pytest.fixture(scope="module")
def records() -> np.ndarray:
    builder = RecordBuilder()
    frame = msgspec.msgpack.encode(events(1000))
    for _ in range(BATCH // 1000):
        decode_frame(frame, builder, NOW_US)
    return builder.build(time.time_ns())


@pytest.mark.parametrize("fmt", ["msgpack", "json"])
def test_decode_frame_of_100_events(benchmark, fmt):
    batch = events(100)
    frame = msgspec.msgpack.encode(batch) if fmt == "msgpack" else msgspec.json.encode(batch)

    def run():
        builder = RecordBuilder()
        decode_frame(frame, builder, NOW_US)
        return builder.build(0)

    assert len(benchmark(run)) == 100


def test_decode_100_single_event_frames(benchmark):
    frames = [msgspec.msgpack.encode(e) for e in events(100)]

    def run():
        builder = RecordBuilder()
        for f in frames:
            decode_frame(f, builder, NOW_US)
        return builder.build(0)

    assert len(benchmark(run)) == 100


@pytest.fixture
def ring():
    ring = Ring.create(lanes=1, lane_capacity=8192, dtype=RECORD_DTYPE)
    yield ring
    ring.unlink()
    ring.close()


def test_ring_put_then_peek_and_release_5000(benchmark, ring, records):
    def run(lane=ring.lanes[0]):
        lane.put(records)
        out = lane.peek(len(records))
        lane.release(len(out))
        return out

    assert len(benchmark(run)) == BATCH
    del run  # its default argument holds a view into the shared block, which must go before close()


def test_copy_payload_of_5000_records(benchmark, records):
    payload = benchmark(copy_payload.build, records, NOW_US)
    assert payload.startswith(copy_payload.HEADER)


def test_binary_array_parameter_of_5000_keys(benchmark, records):
    benchmark(BinaryArray, records["seq"], INT8_ARRAY_OID)


def test_latest_per_scale_of_5000_records(benchmark, records):
    assert len(benchmark(latest_per_scale, records)) == 300


def test_failpoint_unarmed(benchmark):
    """An unarmed failpoint: one dict lookup (it sits in every batch and spool write)."""
    from ingestor.failpoints import failpoint

    def thousand() -> None:
        for _ in range(1000):
            failpoint("writer.copy")

    benchmark(thousand)


def test_alibi_chain_of_5000_records(benchmark, records):
    from ingestor import alibi

    def run():
        return alibi.chain(alibi.canonical_from_records(records, NOW_US), {})

    assert len(benchmark(run)[1]) == BATCH
