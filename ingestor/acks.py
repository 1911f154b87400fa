"""Acked mode's bookkeeping (docs/PROTOCOL.md §5): which events of a message are committed.

:class:`AckTable` is shared by the front and the writers; :class:`Replies`
is the front's list of messages awaiting their reply.

The front gives each message received on the ROUTER endpoint a *tag*, unique
over the service's life (nanoseconds at the front's start, plus one per
message), stamps it on the message's records, and opens the tag's row in this
table. A writer, after the transaction holding tagged records has committed,
adds to the row of each tag in its lane how many of them it wrote, how many
were duplicates and how many PostgreSQL rejected. The front sends the reply
once the rows of all lanes add up to the message's accepted events.

Table layout: one shared-memory array, ``(lanes, SLOTS, 4)`` int64, a row
being (tag, done, duplicates, failed). Tag ``t`` lives in slot
``t % SLOTS``. Each lane's rows have one writing writer, and the front writes
a row only while no record of it is in flight; a writer adds only to a row
that still holds its records' tag, so records of an expired or earlier
message (replayed from the spool after a restart) never count for another.
Counts only grow, so a stale read merely delays a reply.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable, Iterator
from multiprocessing.shared_memory import SharedMemory
from typing import NamedTuple

import msgspec
import numpy as np

from .shm import SharedBlock

log = logging.getLogger(__name__)

SLOTS = 1 << 16  # rows per lane; a tag's row is reused SLOTS tags later
MAX_AWAITING = SLOTS // 2  # acked messages awaiting their reply at most (the front stops reading beyond)
EXPIRE_S = 600.0  # an acked message still uncounted after this is given up (the sender re-sends)
_TAG, _DONE, _DUPLICATES, _FAILED = range(4)


class AckTable(SharedBlock):
    """The shared per-lane counts of acked messages' committed events: ``rows``, ``(lanes, SLOTS, 4)`` int64."""

    def __init__(self, shm: SharedMemory, lanes: int, owner: bool) -> None:
        super().__init__(shm, owner)
        self.lanes = lanes
        self.rows = np.ndarray((lanes, SLOTS, 4), np.int64, shm.buf)

    @classmethod
    def create(cls, lanes: int) -> AckTable:
        return cls(cls._allocate(lanes * SLOTS * 4 * 8), lanes, owner=True)

    @classmethod
    def attach(cls, name: str, lanes: int) -> AckTable:
        """SharedMemoryError when the block is gone."""
        return cls(cls._open(name, "acked-mode table"), lanes, owner=False)

    # -- the front ------------------------------------------------------------

    def open(self, tag: int) -> None:
        """Start counting for ``tag`` (before any of its records is placed)."""
        self.rows[:, tag % SLOTS] = (tag, 0, 0, 0)

    def progress(self, tags: np.ndarray) -> np.ndarray:
        """``(len(tags), 3)`` int64: done, duplicates, failed of each tag, all lanes summed."""
        rows = self.rows[:, tags % SLOTS]  # (lanes, n, 4)
        mine = rows[:, :, _TAG] == tags
        return (rows[:, :, _DONE:] * mine[:, :, None]).sum(axis=0)

    # -- a writer -------------------------------------------------------------

    def count(self, lane: int, tags: np.ndarray, duplicate: np.ndarray | None = None, failed: bool = False) -> None:
        """Add committed records of ``lane``: their ``tags`` (uint64; 0 = not acked) and which were duplicates
        (``duplicate``, bool per record; None for none).

        With ``failed=True`` every record counts as rejected by the database.
        """
        tagged = tags != 0
        if not tagged.any():
            return
        t = tags[tagged].astype(np.int64)
        unique, index = np.unique(t, return_inverse=True)
        slots = unique % SLOTS
        mine = self.rows[lane, slots, _TAG] == unique
        done = np.bincount(index, minlength=len(unique))
        column = _FAILED if failed else _DUPLICATES
        if failed:
            extra = done
        elif duplicate is None:  # none of them was a duplicate
            extra = np.zeros_like(done)
        else:
            extra = np.bincount(index, weights=duplicate[tagged], minlength=len(unique)).astype(np.int64)
        self.rows[lane, slots[mine], _DONE] += done[mine]
        self.rows[lane, slots[mine], column] += extra[mine]

    def _unmap(self) -> None:
        del self.rows


class _Awaiting(NamedTuple):
    identity: bytes  # ROUTER's routing id of the sender
    token: bytes
    accepted: int  # valid events, placed with the message's tag
    invalid: int  # rejected by the decoder
    since: float  # time.monotonic() when received
    error: str | None  # docs/PROTOCOL.md §5 v1.1: "bad_token" or "no_frames" when the message broke 1.3 itself
    reasons: tuple[str, ...]  # v1.2: why the decoder refused events, "kind: reason", the first MAX_REASONS


_REPLY = msgspec.msgpack.Encoder()
MAX_REASONS = 10  # a reply names why at most this many events were invalid (all are in the dead-letter store)


class Replies:
    """The front's side of acked mode: messages awaiting their commit, and their replies (docs/PROTOCOL.md §5)."""

    def __init__(self, table: AckTable) -> None:
        self.table = table
        self.expired = 0  # messages given up without a reply (the front adds them to its shared count)
        self._awaiting: dict[int, _Awaiting] = {}
        self._next_tag = time.time_ns()  # unique over the service's life, across front restarts

    def __len__(self) -> int:
        return len(self._awaiting)

    def full(self) -> bool:
        return len(self._awaiting) >= MAX_AWAITING

    def add(self, identity: bytes, token: bytes, accepted: int, invalid: int, error: str | None = None,
            reasons: Iterable[str] = ()) -> int:
        """Await the commit of a message's ``accepted`` events; return the tag to stamp on their records.

        ``error`` (``"bad_token"``, ``"no_frames"``) goes into the reply map as ``"error"``; ``reasons`` (why
        events were invalid, "kind: reason") as ``"reasons"``, the first MAX_REASONS different ones.
        """
        tag = self._next_tag
        self._next_tag += 1
        self._awaiting[tag] = _Awaiting(identity, token, accepted, invalid, time.monotonic(), error,
                                        tuple(itertools.islice(dict.fromkeys(reasons), MAX_REASONS)))
        if accepted:
            self.table.open(tag)
        return tag

    def ready(self) -> Iterator[list[bytes]]:
        """``[identity, token, reply]`` of every message whose accepted events are all committed.

        ``reply`` is the MessagePack map of docs/PROTOCOL.md §5; ``accepted`` counts the
        events stored now, ``duplicates`` those stored before, ``invalid``
        those the decoder or PostgreSQL rejected.
        """
        if not self._awaiting:
            return
        tags = np.fromiter(self._awaiting, np.int64, len(self._awaiting))
        progress = self.table.progress(tags)
        now = time.monotonic()
        for tag, (done, duplicates, failed) in zip(tags.tolist(), progress.tolist()):
            m = self._awaiting[tag]
            if done >= m.accepted:
                del self._awaiting[tag]
                reply = {"accepted": m.accepted - duplicates - failed, "duplicates": duplicates,
                         "invalid": m.invalid + failed}
                if m.error:
                    reply["error"] = m.error
                if m.reasons:
                    reply["reasons"] = list(m.reasons)
                yield [m.identity, m.token, _REPLY.encode(reply)]
            elif now - m.since > EXPIRE_S:
                # Counts lost with a writer killed between its commit and its count: the
                # sender got no reply and re-sends; its events are stored once anyway.
                del self._awaiting[tag]
                self.expired += 1
                log.warning("No reply for an acked message after %.0f s (%d of %d events counted); "
                            "given up, the sender re-sends", EXPIRE_S, done, m.accepted)
