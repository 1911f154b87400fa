"""Rings in shared memory, created by the test (the owner) and unlinked after it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from ingestor.protocol import RECORD_DTYPE
from ingestor.ring import Ring, RingSpec
from ingestor.roles import DeadLetterArgs, SharedBlocks, WriterArgs


@pytest.fixture
def ring_factory() -> Iterator[Callable[..., Ring]]:
    """``ring_factory(lanes=2, lane_capacity=8)`` -> a new Ring of RECORD_DTYPE records."""
    made: list[Ring] = []

    def make(*, lanes: int, lane_capacity: int) -> Ring:
        ring = Ring.create(lanes=lanes, lane_capacity=lane_capacity, dtype=RECORD_DTYPE)
        made.append(ring)
        return ring

    yield make
    for ring in made:
        ring.unlink()
        ring.close()


def writer_args(ring: Ring, dsn: str, dead_letter_dir, index: int = 0, *, ring_id: str | None = None,
                alibi: bool = True, batch_size: int = 1000) -> WriterArgs:
    """A writer's role for lane ``index`` of ``ring`` (tests attach its blocks themselves); ``ring_id`` as if
    the ring were another."""
    spec = ring.spec if ring_id is None else RingSpec(ring.spec.name, ring.spec.lanes, ring.spec.lane_capacity, ring_id)
    return WriterArgs(shared=SharedBlocks(spec, None, "", ""), index=index, instance="test", dsn=dsn, schema="public",
                      batch_size=batch_size, batch_timeout_ms=50,
                      dead_letters=DeadLetterArgs(str(dead_letter_dir), 256 << 20), alibi=alibi)
