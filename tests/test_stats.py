"""The shared counters read into Figures (ingestor/stats.py): the identity of docs/operations.md#stats holds
in every snapshot, even when events move on between the reads of one snapshot."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from ingestor.stats import Counters, Figures, WriterFigures

RECEIVED = 5


@pytest.fixture
def counters() -> Iterator[Counters]:
    block = Counters.create(writers=1)
    yield block
    block.close()
    block.unlink()


def identity(f: Figures) -> int:
    """Received events not accounted for (negative: counted twice for a moment, which is allowed)."""
    return f.received_events - (f.invalid + f.duplicates + f.persisted + f.failed + f.pending + f.lost)


# Where the events are when the ring is read: each stage an event passes through, as the
# front and the writers store it (front: held, then invalid and received; the ring; writer: committed,
# then the ring slots released). The snapshot must see every received event somewhere.
STAGES = ("held", "in_ring", "committed")


@pytest.mark.parametrize("moves", ["just before the ring is read", "just after the ring is read"])
@pytest.mark.parametrize("before, during", [(a, b) for a, b in itertools.product(STAGES, STAGES)
                                            if STAGES.index(a) <= STAGES.index(b)])
def test_a_snapshot_never_misses_an_event_that_moves_on_while_it_is_taken(counters, before, during, moves):
    """``before``: where the events are when the snapshot starts; ``during``: where they are from the
    moment the snapshot reads the ring on (the worst moment for a reader)."""
    front, writer = counters.front, counters.writers[0]
    used = {"n": 0}

    def put(stage: str) -> None:
        front["front_pending"] = RECEIVED if stage == "held" else 0
        used["n"] = RECEIVED if stage == "in_ring" else 0
        writer["persisted"] = RECEIVED if stage == "committed" else 0

    front["received_events"] = RECEIVED
    put(before)

    def ring_used() -> int:
        seen = used["n"]
        put(during)
        return used["n"] if moves.endswith("before the ring is read") else seen

    f = counters.read_into(Figures(writers=[WriterFigures(1, True, 0, 0, 0, 0.0)]), ring_used)
    assert identity(f) <= 0, f"{-identity(f) if identity(f) < 0 else identity(f)} events missing: {f}"
    assert f.pending + f.persisted >= RECEIVED


def test_events_per_s_is_measured_over_the_window_only():
    from ingestor.stats import RateWindow

    rate = RateWindow(window_s=10.0)
    assert rate.events_per_s() == 0.0
    rate.add(100.0, 0)
    assert rate.events_per_s() == 0.0  # one sample: no rate yet
    rate.add(105.0, 5000)
    assert rate.events_per_s() == 1000.0
    rate.add(120.0, 5300)  # the samples older than 10 s are gone: only the last one is left
    assert rate.events_per_s() == 0.0
    rate.add(122.0, 5900)
    assert rate.events_per_s() == 300.0
