"""The owner's side of the shared-memory blocks: created, kept when writers cannot, unlinked.

The supervisor creates the ring (one lane per writer), the counters and the
ack table, and records their names so that the next start removes them
should the whole tree be SIGKILLed (:mod:`ingestor.leftovers`). Children
attach by name (:meth:`ingestor.roles.SharedBlocks.attached`). When the
service stops with records still in the ring (writers killed by an
immediate stop, or a drain that could not finish), they go in front of the
spool and the next start replays them first (docs/operations.md#spool). At
exit, once every child is gone, the owner unlinks the blocks.
"""

from __future__ import annotations

import logging
import multiprocessing.context
from pathlib import Path

import numpy as np

from . import leftovers
from .acks import AckTable
from .errors import SpoolError
from .failpoints import failpoint
from .protocol import RECORD_DTYPE
from .ring import Ring
from .roles import SharedBlocks
from .spool import Spool
from .stats import Counters

log = logging.getLogger("ingestor.supervisor")  # its lines are the supervisor's, as before the split


class OwnedBlocks:
    """The supervisor's ring, counters and ack table (it created them; it unlinks them in :meth:`destroy`)."""

    def __init__(self, ring: Ring, counters: Counters, acks: AckTable, data_dir: Path) -> None:
        self.ring, self.counters, self.acks = ring, counters, acks
        self.data_dir = data_dir

    @classmethod
    def create(cls, writers: int, ring_capacity: int, data_dir: Path,
               ctx: multiprocessing.context.SpawnContext) -> OwnedBlocks:
        """Create the blocks for ``writers`` lanes of ``ring_capacity // writers`` slots (≥ 1) and record their
        names in ``data_dir`` (:func:`ingestor.leftovers.record`). OSError when /dev/shm cannot hold them."""
        ring = Ring.create(lanes=writers, lane_capacity=max(1, ring_capacity // writers), dtype=RECORD_DTYPE,
                           ctx=ctx)
        blocks = cls(ring, Counters.create(writers), AckTable.create(writers), data_dir)
        leftovers.record(data_dir, [ring.spec.name, blocks.counters.name, blocks.acks.name], ring.semaphore_names)
        return blocks

    @property
    def shared(self) -> SharedBlocks:
        """What a child needs to attach to the blocks (it travels in its role's args)."""
        spec, semaphores = self.ring.handles
        return SharedBlocks(ring=spec, semaphores=semaphores, counters=self.counters.name, acks=self.acks.name)

    def spool_leftovers(self, directory: Path, max_bytes: int) -> bool:
        """Put what the ring still holds in front of the spool in ``directory``; True when kept (or none).

        Every writer must be dead. Records a killed writer had committed but
        not released come back as duplicates on replay: stored once either
        way. They were accepted, so the spool's size bound does not turn them
        away (``max_bytes`` bounds only what the front appends). When the disk
        cannot take them (ENOSPC, EIO), they are counted ``lost`` and logged
        with their number.
        """
        if self.ring.used() == 0:
            return True
        left = np.concatenate([lane.peek(lane.used()) for lane in self.ring.lanes])
        try:
            failpoint("supervisor.spool_leftovers")
            spool = Spool(directory, RECORD_DTYPE, max_bytes)
            try:
                spool.append(left, first=True)
            finally:
                spool.close()
        except (SpoolError, OSError) as e:
            self.counters.front["lost"] += len(left)
            self._empty_ring()  # counted lost now, no longer pending
            log.error("LOST %d accepted events left in the ring: the spool cannot take them (%s)", len(left), e)
            return False
        self._empty_ring()
        log.warning("Spooled %d events left in the ring to %s; the next start replays them", len(left), directory)
        return True

    def _empty_ring(self) -> None:
        for lane in self.ring.lanes:
            lane.release(lane.used())

    def destroy(self) -> None:
        """Unlink and close every block, and forget the record of them (every child must be gone)."""
        for block in (self.counters, self.acks, self.ring):
            block.unlink()
            block.close()
        leftovers.forget(self.data_dir)  # the semaphores go with the ring's last reference
