"""One shared-memory block with one owner: the base of the ring, the counters and the ack table.

As in CPython's ``multiprocessing.shared_memory``, ``close()`` (this process
lets go) and ``unlink()`` (the owner destroys the block) are separate: the
supervisor creates every block and unlinks it after its children are gone,
so a crashed child's figures and records outlive it; children attach by
name and only close (:func:`attached`).

Python before 3.13 registers every attach with the resource tracker, which
then unlinks the block when *any* attached process exits, or warns about a
"leak" at exit. Nobody is tracked here (:func:`untrack`): the owner unlinks
explicitly, and a SIGKILLed tree's blocks are removed at the next start
(:mod:`ingestor.leftovers`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory
from typing import TypeVar

from .errors import SharedMemoryError

B = TypeVar("B", bound="SharedBlock")


def untrack(shm: SharedMemory) -> None:
    """Take ``shm`` off the resource tracker's list (see the module docstring)."""
    try:
        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    except Exception:  # pragma: no cover - tracker not running
        pass


def buffer(shm: SharedMemory) -> memoryview:
    """``shm``'s bytes; SharedMemoryError naming it once it is closed in this process (its buffer is then gone)."""
    if (buf := shm.buf) is None:
        raise SharedMemoryError(f"shared memory {shm.name!r} is closed in this process")
    return buf


class SharedBlock:
    """A block of shared memory holding numpy views; subclasses map them in ``__init__`` and drop them in :meth:`_unmap`."""

    def __init__(self, shm: SharedMemory, owner: bool) -> None:
        self._shm = shm
        self.owner = owner
        self.name = shm.name  #: what children attach by

    @property
    def buf(self) -> memoryview:
        """The block's bytes; SharedMemoryError once it is closed in this process."""
        return buffer(self._shm)

    @staticmethod
    def _allocate(size: int) -> SharedMemory:
        """A new zeroed, untracked block of ``size`` bytes.

        A new POSIX shared-memory object is zero-filled by ``ftruncate``, so
        nothing is written here: writing would touch (and commit) every page
        of the ring up front.
        """
        shm = SharedMemory(create=True, size=size)
        untrack(shm)
        return shm

    @staticmethod
    def _open(name: str, what: str) -> SharedMemory:
        """The existing block ``name``, untracked; SharedMemoryError naming ``what`` when it is gone."""
        try:
            shm = SharedMemory(name=name)
        except FileNotFoundError:
            raise SharedMemoryError(f"{what} {name!r} does not exist (its supervisor is gone?)") from None
        untrack(shm)
        return shm

    def _unmap(self) -> None:
        """Drop this object's views into the block (they must go before the block can close)."""

    def close(self) -> None:
        """Let go of the block in this process; every view into it must be gone (BufferError otherwise)."""
        self._unmap()
        self._shm.close()

    def unlink(self) -> None:
        """Destroy the block; only its owner calls this, once every child is gone.

        Raises SharedMemoryError in a process that only attached.
        """
        if not self.owner:
            raise SharedMemoryError(f"only the process that created {self.name!r} may unlink it")
        try:  # SharedMemory.unlink() unregisters from the tracker: register first so it has the name
            resource_tracker.register(self._shm._name, "shared_memory")  # type: ignore[attr-defined]
        except Exception:  # pragma: no cover
            pass
        self._shm.unlink()


@contextlib.contextmanager
def attached(*blocks: SharedBlock) -> Iterator[tuple[SharedBlock, ...]]:
    """Close every block of a child when the ``with`` ends, last attached first.

    When an exception ends it, the traceback may still hold views into the
    blocks; their BufferError is not raised over the real error (the process
    is on its way out, and its exit unmaps the blocks).
    """
    try:
        yield blocks
    except BaseException:
        for block in reversed(blocks):
            with contextlib.suppress(BufferError):
                block.close()
        raise
    for block in reversed(blocks):
        block.close()
