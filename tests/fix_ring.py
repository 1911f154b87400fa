"""Rings in shared memory, created by the test (the owner) and unlinked after it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from ingestor.protocol import RECORD_DTYPE
from ingestor.ring import Ring


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
