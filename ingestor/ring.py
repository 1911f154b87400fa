"""The shared-memory ring between the front (producer) and the writers (consumers).

The ring is split into *lanes*, one per writer; the front routes each
measurement to a lane (by ``scale_id % lanes``, or a low rate's all to lane
0: :meth:`ingestor.placement.Placement._split`). Each lane is a
single-producer, single-consumer ring of fixed-size slots, so no slot is ever
contended and a lane's records stay in arrival order.

Positions are absolute 64-bit counters: ``head`` counts records ever
published into a lane, ``tail`` counts records released by its writer, and a
record at position ``p`` lives in slot ``p % lane_capacity``. ``head - tail``
is what the lane holds; a writer releases a record only after the
transaction holding it has committed, so a crashed writer's records are still
there for its successor.

Memory ordering: a producer writes its records, then stores ``head``; a
consumer about to sleep stores ``want``, the position it waits for, and the
producer posts the lane's ``data`` semaphore when a put reaches it (one
wakeup per batch, not per put). A semaphore post/wait is a full barrier on
every platform (edge boxes are often ARM), so records are written before a
woken consumer reads ``head``; a consumer killed in the middle cannot leave a
semaphore held. Between storing ``want`` and reading ``head`` neither side
has a store-load barrier, so a wakeup can be missed: the consumer's timed
wait bounds what that costs (WAIT_SLICE_S while it holds records,
IDLE_WAIT_S for an empty lane's first record). ``space`` is posted on
every release.

Block layout (one ``multiprocessing.shared_memory`` block, little-endian)::

    offset 0                 header, 64 bytes: magic b"SCALERNG", layout
                             version u32, lanes u32, lane_capacity u64,
                             record size u64, draining u64, ring id 16 bytes
    64 + 128*i               lane i: head u64 at +0, tail u64 at +64,
                             want u64 at +72 (separate cache lines: the
                             producer stores head, the consumer tail and want)
    64 + 128*lanes (aligned) slots: lanes x lane_capacity records

The supervisor creates and unlinks the block (it outlives crashed children);
children attach by name and only ``close()``.
"""

from __future__ import annotations

import multiprocessing
import secrets
import time
from collections.abc import Callable
from multiprocessing.shared_memory import SharedMemory

import msgspec
import numpy as np

from .errors import RingError, SharedMemoryError
from .shm import SharedBlock, buffer

MAGIC = b"SCALERNG"
LAYOUT_VERSION = 1
_HEADER = 64
_LANE_STRIDE = 128
_LANE_WORDS = _LANE_STRIDE // 8
_WANT = 9  # word index of a lane's want, beside tail (word 8)
# How long one wait on a semaphore lasts before the caller re-checks its stop
# condition: short enough for a prompt shutdown, long enough to cost nothing.
WAIT_SLICE_S = 0.1
# How long a consumer of an empty lane sleeps between looks. Setting the ring's draining flag
# wakes it at once (Ring.draining), so this bounds only noticing a dead parent and what a missed
# wakeup costs an idle lane's first record (the module doc). Each look of an idle writer costs
# ~0.2 ms of CPU on the 2-core VM (bench/README.md "The second session on the quiet plant").
IDLE_WAIT_S = 1.0


class RingSpec(msgspec.Struct, frozen=True):
    """What a child needs to attach to a ring: picklable, sent at spawn."""

    name: str
    lanes: int
    lane_capacity: int
    ring_id: str


class _Semaphores:
    """The per-lane semaphores; made by the owner and inherited by spawned children."""

    def __init__(self, lanes: int, ctx: multiprocessing.context.BaseContext) -> None:
        self.data = [ctx.Semaphore(0) for _ in range(lanes)]
        self.space = [ctx.Semaphore(0) for _ in range(lanes)]


class Ring(SharedBlock):
    """A lane-partitioned SPSC ring of ``dtype`` records in shared memory.

    Use :meth:`create` in the owning process and :meth:`attach` in children.
    """

    def __init__(self, shm: SharedMemory, spec: RingSpec, dtype: np.dtype, sems: _Semaphores, owner: bool) -> None:
        super().__init__(shm, owner)
        self.spec = spec
        self.dtype = dtype
        self._sems = sems
        self._header = np.ndarray((8,), np.uint64, shm.buf, 0)
        self._positions = np.ndarray((spec.lanes, _LANE_WORDS), np.uint64, shm.buf, _HEADER)
        slots_offset = _slots_offset(spec.lanes, dtype)
        self._slots = np.ndarray((spec.lanes, spec.lane_capacity), dtype, shm.buf, slots_offset)
        self.lanes = [Lane(self, i) for i in range(spec.lanes)]

    @classmethod
    def create(
        cls,
        *,
        lanes: int,
        lane_capacity: int,
        dtype: np.dtype,
        ctx: multiprocessing.context.BaseContext | None = None,
    ) -> Ring:
        """Create a new block of ``lanes * lane_capacity`` slots of ``dtype``.

        Raises ValueError for a lane count or capacity below 1.
        """
        if lanes < 1:
            raise ValueError(f"lanes must be >= 1, got {lanes!r}")
        if lane_capacity < 1:
            raise ValueError(f"lane_capacity must be >= 1, got {lane_capacity!r}")
        size = _slots_offset(lanes, dtype) + lanes * lane_capacity * dtype.itemsize
        shm = cls._allocate(size)
        spec = RingSpec(name=shm.name, lanes=lanes, lane_capacity=lane_capacity, ring_id=secrets.token_hex(8))
        header = np.ndarray((8,), np.uint64, shm.buf, 0)
        header[:] = 0
        buffer(shm)[0:8] = MAGIC
        header[1] = LAYOUT_VERSION | (lanes << 32)
        header[2] = lane_capacity
        header[3] = dtype.itemsize
        buffer(shm)[40:56] = bytes.fromhex(spec.ring_id).ljust(16, b"\0")
        np.ndarray((lanes, _LANE_WORDS), np.uint64, shm.buf, _HEADER)[:] = 0
        sems = _Semaphores(lanes, ctx or multiprocessing.get_context("spawn"))
        return cls(shm, spec, dtype, sems, owner=True)

    @classmethod
    def attach(cls, spec: RingSpec, dtype: np.dtype, sems: _Semaphores) -> Ring:
        """Attach to a ring created by another process.

        Raises RingError when the block is missing or its layout differs.
        """
        try:
            shm = cls._open(spec.name, "shared-memory ring")
        except SharedMemoryError as e:
            raise RingError(str(e)) from None
        if bytes(buffer(shm)[0:8]) != MAGIC:
            shm.close()
            raise RingError(f"shared memory {spec.name!r} is not a scale-ingestor ring")
        header = np.ndarray((8,), np.uint64, shm.buf, 0)
        if int(header[3]) != dtype.itemsize or int(header[2]) != spec.lane_capacity:
            shm.close()
            raise RingError(f"ring {spec.name!r} layout differs from this build's record layout")
        return cls(shm, spec, dtype, sems, owner=False)

    @property
    def handles(self) -> tuple[RingSpec, _Semaphores]:
        """``(spec, semaphores)``: pass both to a spawned child for :meth:`attach`."""
        return self.spec, self._sems

    @property
    def semaphore_names(self) -> list[str]:
        """The named POSIX semaphores behind the lanes (``/mp-…``), for :mod:`ingestor.leftovers`."""
        return [sem._semlock.name for sem in self._sems.data + self._sems.space]  # type: ignore[attr-defined]

    @property
    def capacity(self) -> int:
        return self.spec.lanes * self.spec.lane_capacity

    def used(self) -> int:
        """Records held in all lanes (published, not yet released)."""
        pos = self._positions
        return int((pos[:, 0] - pos[:, 8]).sum())

    @property
    def draining(self) -> bool:
        """Set by the supervisor once the front has stopped: writers exit when their lane is empty."""
        return bool(self._header[4])

    @draining.setter
    def draining(self, value: bool) -> None:
        self._header[4] = 1 if value else 0
        for sem in self._sems.data:  # wake every writer to look at the flag
            sem.release()

    def _unmap(self) -> None:
        self.lanes = []
        del self._header, self._positions, self._slots

    def unlink(self) -> None:
        """Destroy the block; only the owner calls this, after every child is gone. RingError elsewhere."""
        if not self.owner:
            raise RingError("only the process that created the ring may unlink it")
        super().unlink()


def _slots_offset(lanes: int, dtype: np.dtype) -> int:
    end = _HEADER + lanes * _LANE_STRIDE
    align = max(64, dtype.alignment)
    return (end + align - 1) // align * align


def whole(items: np.ndarray) -> np.ndarray:
    """``items`` (1-d, a structured dtype) as opaque items of the same size, over the same memory.

    numpy copies a structured dtype field by field: selecting, concatenating
    or assigning whole records through this view takes a third to a quarter of
    the time (2,500 records of 368 bytes, numpy 2: 70 µs against 195
    selected by index, 44 against 172 assigned; bench/README.md "The second
    session on the quiet plant"). ``copy.view(items.dtype)`` makes records of a copy again.
    """
    return items.view(np.dtype((np.void, items.dtype.itemsize)))


class Lane:
    """One SPSC lane: the front calls ``put``; lane ``i``'s writer calls ``peek``/``release``."""

    def __init__(self, ring: Ring, index: int) -> None:
        self.index = index
        self.capacity = ring.spec.lane_capacity
        self._pos = ring._positions[index]
        self._slots = ring._slots[index]
        self._data = ring._sems.data[index]
        self._space = ring._sems.space[index]

    @property
    def head(self) -> int:
        return int(self._pos[0])

    @property
    def tail(self) -> int:
        return int(self._pos[8])

    def used(self) -> int:
        return int(self._pos[0] - self._pos[8])

    def free(self) -> int:
        return self.capacity - self.used()

    # -- producer -------------------------------------------------------

    def put(self, records: np.ndarray) -> int:
        """Publish as many of ``records`` as fit now; return how many (0 when full)."""
        if records.dtype != self._slots.dtype:  # whole() below would copy any bytes of that size
            raise RingError(f"records of dtype {records.dtype} put into lane {self.index} of {self._slots.dtype}")
        head = int(self._pos[0])
        n = min(len(records), self.capacity - (head - int(self._pos[8])))
        if n <= 0:
            return 0
        start = head % self.capacity
        first = min(n, self.capacity - start)
        items = whole(records)
        whole(self._slots[start : start + first])[:] = items[:first]
        if n > first:  # wrap around
            whole(self._slots[: n - first])[:] = items[first:n]
        self._pos[0] = head + n  # publish only after the content is written
        if head < int(self._pos[_WANT]) <= head + n:  # the consumer waits for this many: wake it once
            self._data.release()
        return n

    def put_all(self, records: np.ndarray, keep_waiting: Callable[[], bool] = lambda: True) -> int:
        """Publish all ``records``, waiting for space while the lane is full.

        Returns how many were published: all of them, unless ``keep_waiting``
        returned False while the lane was full.
        """
        done = 0
        while done < len(records):
            done += self.put(records[done:])
            if done < len(records):
                self._space.acquire(timeout=WAIT_SLICE_S)
                if not keep_waiting():
                    break
        return done

    def wait_space(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for the writer to release records (returns early when it does)."""
        self._space.acquire(timeout=timeout_s)

    # -- consumer -------------------------------------------------------

    def wait_batch(self, max_records: int, interval_s: float, keep_waiting: Callable[[], bool]) -> int:
        """Wait until a batch is ready and return its size (at most ``max_records``).

        Group commit by age: a batch is ready when ``max_records`` records are
        held (or the lane is full), or when its oldest record has waited
        ``interval_s`` since the front received it (its ``received_ns``). So no
        record waits longer than ``interval_s`` for its batch to begin, and
        every batch is as large as that allows: a quiet lane's first record
        waits for those behind it (a plant at 30 events/s commits about two per
        transaction, not one), a busy writer whose commit outlasted
        ``interval_s`` takes what is held at once. Once ``keep_waiting``
        returns False (draining), whatever is held is ready at once, and 0 is
        returned when nothing is.

        The producer wakes us only when the lane reaches the count we wait for
        (``want``), not on every put. Without a store-load barrier between
        ``want`` and ``head`` a wakeup can be missed (ring module doc): it then
        costs at most WAIT_SLICE_S, or the rest of ``interval_s``; IDLE_WAIT_S
        when the lane was empty.
        """
        deadline = None  # monotonic, once a record is held (the tail does not move while we wait)
        while True:
            n = self.used()
            if n >= max_records or (n and n >= self.capacity):
                return min(n, max_records)
            if n and not keep_waiting():
                return n
            if not n and not keep_waiting():
                return 0
            if n:
                if deadline is None:
                    # the front's wall-clock stamp; a clock step cannot stretch the wait beyond interval_s
                    oldest_ns = int(self._slots[self.tail % self.capacity]["received_ns"])
                    deadline = time.monotonic() + min(interval_s, oldest_ns / 1e9 + interval_s - time.time())
                left = deadline - time.monotonic()
                if left <= 0:
                    return n
            else:
                left = IDLE_WAIT_S
            self._pos[_WANT] = self.tail + (max_records if n else 1)
            if self.used() == n:  # nothing arrived between the look and the store
                self._data.acquire(timeout=min(left, WAIT_SLICE_S) if n else left)

    def peek(self, n: int) -> np.ndarray:
        """Copy of the ``n`` oldest held records (they stay in the lane until :meth:`release`)."""
        n = min(n, self.used())
        start = self.tail % self.capacity
        first = min(n, self.capacity - start)
        slots = whole(self._slots)
        if first == n:
            return slots[start : start + n].copy().view(self._slots.dtype)
        return np.concatenate((slots[start:], slots[: n - first])).view(self._slots.dtype)

    def release(self, n: int) -> None:
        """Free the ``n`` oldest records: call only after they are committed."""
        if n < 0 or n > self.used():
            raise RingError(f"cannot release {n} records from lane {self.index} holding {self.used()}")
        self._pos[8] = int(self._pos[8]) + n
        self._space.release()
