"""Where accepted records go: the ring first, the on-disk spool when the ring cannot take them.

The hardest promise of the front lives here (docs/PROTOCOL.md §4, nothing
accepted is dropped): records go into the ring while the spool is empty and
their lane (:meth:`Placement._split`) has room. When a lane is full,
:meth:`Placement.place` waits for its writer as long as the writers keep
freeing slots (they are only slower than the senders: back-pressure); once
they have freed nothing for ``spill_after_s`` (the database is gone), the
rest, and everything placed while the spool holds anything, is appended to
the spool (one fsync'd block per call), so records reach the writers in
arrival order. :meth:`Placement.refill` moves the spool's oldest
blocks back into the ring as slots free. When ring and spool are both full
(or the spool's disk fails) ``place`` waits: the front stops reading and
ZeroMQ's high-water mark stops the senders.

Every step publishes the front's share of ``pending`` in the shared
counters (``front_pending``: records in hand or in the spool, not in the
ring), so a front that dies between two steps leaves exact figures, which
its successor settles against what the spool holds (:meth:`Placement.open`).

No ZeroMQ here: ``tests/test_placement.py`` drives it with a real ring and
spool alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from .errors import SpoolError
from .failpoints import failpoint
from .ring import Ring, whole
from .spool import Spool

log = logging.getLogger(__name__)

SPILL_AFTER_S = 0.5  # a full ring whose writers free nothing for this long spills to the spool
SPOOL_RETRY_S = 1.0  # after a failed spool write, how long before the disk is tried again
SPACE_WAIT_S = 0.05  # one wait for ring space when ring and spool are full
# A placement this small goes to one lane (:meth:`Placement._split`): a front cycle takes
# what arrived since the last, so fewer than 64 records means a rate one writer commits with ease.
TRICKLE_RECORDS = 64


class Placement:
    """Places records into ``ring``, else behind ``spool``'s content; counts into ``counters``.

    ``counters``: the front's record of ``stats.FRONT_DTYPE`` (a 0-d view
    into the shared block). ``stopping()`` ends every wait: a stop request
    makes :meth:`place` keep the records in hand wherever it still can.
    """

    def __init__(self, *, ring: Ring, spool: Spool, counters: np.ndarray, stopping: Callable[[], bool],
                 spill_after_s: float = SPILL_AFTER_S) -> None:
        self.ring = ring
        self.spool = spool
        self.counters = counters
        self.stopping = stopping
        self.spill_after_s = spill_after_s
        self._carry: list[np.ndarray] | None = None  # the oldest spool block, split by lane, as yet unplaced
        self._replay_left = 0
        self._spool_failing = False  # the last append failed (logged once until one succeeds)
        self._spool_retry_at = 0.0  # monotonic time before which the spool is not tried again
        self._read_failing = False  # the last read of a spool block failed (logged once until one succeeds)
        self._held = 0  # received records in hand, in no ring or spool yet
        self._published: tuple[int, int, int, int] | None = None  # the figures last stored by _publish_pending

    @property
    def spooling(self) -> bool:
        """True while the spool holds events (new records then go behind them)."""
        return self.spool.events > 0

    def close(self) -> None:
        self.spool.close()

    def place(self, records: np.ndarray) -> None:
        """Put accepted ``records`` into the ring, or behind the spool's content; never drop them silently.

        While the spool holds anything, new records go behind it (a scale's
        events stay in order). A full ring whose writers still free slots is
        waited for; one that frees nothing for SPILL_AFTER_S spills to the
        spool. When neither has room, or the spool's disk fails (retried every
        SPOOL_RETRY_S), this waits for the writers: the front stops reading
        (docs/PROTOCOL.md §4). Every wait ends on a stop request: the records in hand
        then go to the spool beyond its bound, else to the ring as far as it
        has room, and the rest are counted ``lost`` and logged with their
        number (:meth:`_give_up`).
        """
        stalled_at = time.monotonic()
        while len(records):
            self.hold(len(records))
            if not self.spool.events:
                before = len(records)
                records = self._put_fitting(records)
                if not len(records):
                    break
                now = time.monotonic()
                if len(records) < before:
                    stalled_at = now
                if now - stalled_at < self.spill_after_s and not self.stopping():
                    # The writers are moving, only slower than the senders: that is
                    # back-pressure, not an outage, and the disk would only add work.
                    self._wait_for_space()
                    continue
            if self.stopping():
                if not self._spool(records):
                    self._give_up(self._put_fitting(records))
                break
            fit = self.spool.room_for()
            if fit and time.monotonic() >= self._spool_retry_at and self._spool(records[:fit]):
                records = records[fit:]
                continue
            self.refill()
            self._wait_for_space()
        self.hold(0)
        failpoint("front.after_place")

    def _give_up(self, records: np.ndarray) -> None:
        """Count and log accepted records that can be kept nowhere (stopping, ring full, spool failing).

        Their acked messages are never answered (their tags are never counted).
        """
        if len(records):
            self.counters["lost"] += len(records)
            self.hold(0)
            log.error("LOST %d accepted events: stopping with the ring full and the spool not writable "
                      "(they are counted in stats 'lost'; acked senders get no reply and re-send)", len(records))

    def _put_fitting(self, records: np.ndarray) -> np.ndarray:
        """Put what fits now into each lane; return the rest (each lane's order kept)."""
        parts = [part[lane.put(part):] for lane, part in zip(self.ring.lanes, self._split(records)) if len(part)]
        parts = [r for r in parts if len(r)]
        rest = np.concatenate(parts) if parts else records[:0]
        self.hold(len(rest))
        return rest

    def _split(self, records: np.ndarray) -> list[np.ndarray]:
        """``records`` by lane, each lane's part in arrival order.

        Fewer than TRICKLE_RECORDS go to lane 0 whole when it has room: at a
        low rate one writer then commits everything, half the transactions (CPU,
        fsyncs) of two. Otherwise by scale (``scale_id % lanes``). Two lanes
        may so hold one scale: writers claim a batch's scales in one lock order
        (:mod:`ingestor.claims`), so they take turns on it and cannot deadlock.
        """
        lanes = len(self.ring.lanes)
        if lanes == 1:
            return [records]
        if len(records) < TRICKLE_RECORDS and self.ring.lanes[0].free() >= len(records):
            return [records] + [records[:0]] * (lanes - 1)
        lane_of = records["scale_id"] % lanes
        order = np.argsort(lane_of, kind="stable")  # stable: a scale's events keep their order
        bounds = np.searchsorted(lane_of[order], np.arange(lanes + 1))
        items = whole(records)
        return [items[order[bounds[i] : bounds[i + 1]]].view(records.dtype) for i in range(lanes)]

    def _spool(self, records: np.ndarray) -> bool:
        """Append ``records`` to the spool; False when its disk failed (logged once per episode).

        After a failure the spool is tried again only after SPOOL_RETRY_S;
        meanwhile the records stay in hand and the front stops reading.
        """
        try:
            self.spool.append(records)
            self._held -= len(records)  # from hand to spool: front_pending stays the same
        except SpoolError as e:
            self._spool_retry_at = time.monotonic() + SPOOL_RETRY_S
            if not self._spool_failing:
                log.error("%s; holding the events in hand and not reading until the ring or the spool "
                          "takes them (retrying every %.0f s)", e, SPOOL_RETRY_S)
            self._spool_failing = True
            return False
        if self._spool_failing:
            log.info("Spool writable again")
            self._spool_failing = False
        self.counters["spooled_events"] += len(records)
        self._publish_pending()
        return True

    def refill(self) -> None:
        """Move the spool's oldest blocks into the ring while every lane they need has room."""
        while self.spool.events:
            if self._carry is None:
                try:
                    if (block := self.spool.peek()) is None:  # not while spool.events > 0
                        return
                    self._carry = self._split(block)
                except OSError as e:  # the block stays in the spool: tried again on the next round
                    if not self._read_failing:
                        log.error("Cannot read the spool's oldest block from %s (%s); retrying",
                                  self.spool.directory, e)
                    self._read_failing = True
                    break
                if self._read_failing:
                    log.info("Spool readable again")
                    self._read_failing = False
            self._carry = [part[lane.put(part):] for lane, part in zip(self.ring.lanes, self._carry)]
            self._publish_pending()
            if any(len(part) for part in self._carry):
                break
            failpoint("front.refill")
            done = self.spool.oldest_records
            self._carry = None
            self.spool.consume()
            self._publish_pending()
            if self._replay_left:
                self._replay_left = max(0, self._replay_left - done)
                if not self._replay_left:
                    log.info("Replayed %d events from spool", int(self.counters["replayed_events"]))

    def _wait_for_space(self) -> None:
        lanes = self.ring.lanes
        if self._carry is not None:
            stuck = next((lanes[i] for i, part in enumerate(self._carry) if len(part)), lanes[0])
        else:
            stuck = min(lanes, key=lambda lane: lane.free())
        stuck.wait_space(SPACE_WAIT_S)

    def stop(self) -> None:
        """At a stop: give the spool back the part of its oldest block not yet in the ring."""
        if self._carry is None:
            return
        rest = [part for part in self._carry if len(part)]
        try:
            self.spool.requeue_oldest(np.concatenate(rest) if rest else np.zeros(0, self.spool.dtype))
        except (SpoolError, OSError) as e:
            # The whole block stays in the spool: its part already in the ring is
            # replayed too and found duplicate, never lost.
            log.warning("%s; the spool's oldest block is replayed whole at the next start", e)
        self._carry = None
        self._publish_pending()

    def open(self) -> None:
        c = self.counters
        if self.spool.cut_bytes:
            c["spool_cut_bytes"] += self.spool.cut_bytes
        if c["spool_opened"]:
            self._reconcile_after_crash()
        elif self.spool.events:
            # Events of an earlier run: received again, by this run (keeps the identity of docs/operations.md#stats).
            self._publish_pending()  # pending shows them before received does (see accept)
            c["received_events"] += self.spool.events
            c["replayed_events"] = self.spool.events
            self._replay_left = self.spool.events
            log.info("Spool holds %d events from the last run; replaying them before new frames", self.spool.events)
        c["spool_opened"] = 1
        self._publish_pending()

    def _reconcile_after_crash(self) -> None:
        """A front of this run died: settle what it held against what its spool holds now.

        The dead front published, after each step, ``front_pending`` (events
        in its hands or in the spool, not in the ring) and ``spool_in_ring``
        (records of spool blocks already put in the ring whose blocks are
        still in the spool files). Opening the spool again reads those blocks
        whole: their records in the ring come twice, so they count as
        received again (the writers find them duplicate). Of ``front_pending``,
        what is not in the spool now was in the dead front's memory only:
        counted ``lost`` and logged with its number.
        """
        c = self.counters
        in_ring, pending = int(c["spool_in_ring"]), int(c["front_pending"])
        on_disk = self.spool.events - in_ring
        c["received_events"] += in_ring
        c["replayed_events"] += in_ring
        if on_disk > pending:  # cannot happen unless a count was torn by the crash: keep the identity
            c["received_events"] += on_disk - pending
            log.warning("The spool holds %d events more than the dead front had published", on_disk - pending)
        elif pending > on_disk:
            c["lost"] += pending - on_disk
            log.error("LOST %d accepted events: the front died holding them in memory (counted in stats 'lost'; "
                      "acked senders get no reply and re-send)", pending - on_disk)
        c["held_events"] = 0
        if in_ring:
            log.warning("Front restarted: %d spool events already in the ring are replayed (found duplicate)", in_ring)

    def hold(self, n: int) -> None:
        """``n`` received records are in the front's hands now (in no ring or spool)."""
        self._held = n
        self._publish_pending()

    def _publish_pending(self) -> None:
        """Publish the front's share of ``pending`` after every step (one store of ``front_pending``).

        A crash between two steps leaves exact figures for the next front
        (:meth:`_reconcile_after_crash`).
        """
        in_ring = 0
        if self._carry is not None:
            in_ring = self.spool.oldest_records - sum(len(part) for part in self._carry)
        figures = (in_ring, self.spool.events, self._held, self.spool.bytes)
        if figures == self._published:
            return  # the block already holds them: a frame's steps repeat the same figures (one store is ~1 µs)
        self._published = figures
        c = self.counters
        c["spool_in_ring"] = in_ring
        c["spool_events"] = self.spool.events - in_ring
        c["held_events"] = self._held
        c["front_pending"] = self._held + self.spool.events - in_ring
        c["spool_bytes"] = self.spool.bytes


def settle_front_died_stopping(counters: np.ndarray, pid: int) -> int:
    """A front that died while the service stopped held its batch in hand: count it ``lost``; return how many.

    ``counters``: the front's record of ``stats.FRONT_DTYPE``. No successor
    will settle it (:meth:`Placement._reconcile_after_crash`), so the
    supervisor does, here. What the front had taken from ZeroMQ and not yet
    counted is gone uncounted; in acked mode its senders get no reply and
    re-send (docs/PROTOCOL.md §5).
    """
    held = int(counters["held_events"])
    if held:
        counters["held_events"] = 0
        counters["front_pending"] -= held
        counters["lost"] += held
        log.error("LOST %d accepted events: the front (pid %d) died holding them (counted in stats 'lost')", held, pid)
    return held
