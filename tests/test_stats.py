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


@pytest.mark.parametrize("writers", [1, 2, 3, 8, 64])
def test_each_input_record_is_its_own_and_reads_into_its_figures_by_slot(writers):
    """Every field of every record of the block written with a distinct value reads back unchanged: the front's,
    the writers' and the inputs' records do not overlap for any writer count (each layout's own offset)."""
    from ingestor.stats import INPUT_DTYPE, INPUT_SLOTS, InputFigures

    block = Counters.create(writers)
    try:
        attached = Counters.attach(block.name, writers)
        values = itertools.count(1)
        records = [block.front, *block.writers, *block.inputs]
        written = [[(name, next(values)) for name in r.dtype.names if not r.dtype[name].shape] for r in records]
        for record, fields in zip(records, written):
            for name, value in fields:
                record[name] = value
        read = [attached.front, *attached.writers, *attached.inputs]
        assert [[(name, int(r[name])) for name, _ in fields] for r, fields in zip(read, written)] == written
        f = Figures(writers=[WriterFigures(pid=0, alive=True, restarts=0)] * writers,
                    inputs=[InputFigures(name=f"input-{slot}", slot=slot, pid=0, alive=slot != 1, restarts=0)
                            for slot in range(INPUT_SLOTS)])
        block.read_into(f, lambda: 0)
        for slot, source in enumerate(f.inputs):
            counts = block.inputs[slot]
            assert (source.pid, source.received, source.acknowledged, source.redelivered, source.unmappable) == \
                tuple(int(counts[k]) for k in ("pid", "received", "acknowledged", "redelivered", "unmappable"))
            assert source.connected == (slot != 1)  # a dead input is not connected, whatever its record says
        assert INPUT_DTYPE.names[0] == "pid"
        attached.close()
    finally:
        block.close()
        block.unlink()
