"""A writer's side of the alibi chain (issue 15): each batch's record numbers and links, and the heads they extend.

A scale's chain head (its last record number and link) is stored in its
``ingestor_claims`` row (migration 010), which every writer locks in
``scale_id`` order before it writes the scale's events (:mod:`ingestor.claims`).
So a batch extends exactly the heads it locked, commits the new heads in the
same transaction as its rows, and a writer killed anywhere, a restart with
another writer count, or a second instance on the same database can neither
fork a chain nor skip a number. A duplicate never reaches here: the claim
drops it first.

The general path reads the locked heads from the claim
(:attr:`ingestor.claims.Claims.chain_heads`); the one-statement path of small
batches cannot read before it writes, so it sends the heads this writer last
committed, or a new chain for a scale it has not written (:meth:`Chains.guess`),
and the database function refuses the batch, having written nothing, when a
head is not the one guessed (migration 010); the general path then takes it,
and this writer knows the head from then on.

After a skip (``ingestor_alibi_skips``, docs/alibi.md#after-a-restore) a
chain begun anew starts after the skip's floor, linked from its genesis;
the supervisor publishes that floor, and writers commit no record number
past the numbers it reserved on disk (:class:`Unreserved`).
"""

from __future__ import annotations

import numpy as np

from . import alibi
from .alibi import Head
from .copy_payload import Chained
from .errors import DatabaseError


class Unreserved(Exception):
    """A batch's record numbers run past the numbers the supervisor reserved on disk (ingestor/commits.py): the
    writer rolls back and waits for it. ``wanted``: the greatest number of the batch; ``reserved``: the limit."""

    def __init__(self, wanted: int, reserved: int) -> None:
        super().__init__(f"record {wanted} is past the {reserved} reserved")
        self.wanted, self.reserved = wanted, reserved


class Reservation:
    """The record numbers a writer may use: read from the front's shared counters (``records_reserved``,
    ``record_floor``, written by the supervisor), the greatest used reported in the writer's own
    (``record_no_max``, before the commit). Without counters (a writer alone in a test): no limit, floor 0."""

    def __init__(self, front: np.ndarray | None = None, mine: np.ndarray | None = None) -> None:
        self._front, self._mine = front, mine

    def limit(self) -> int:
        return UNLIMITED if self._front is None else int(self._front["records_reserved"])

    def floor(self) -> int:
        return 0 if self._front is None else int(self._front["record_floor"])

    def use(self, number: int) -> None:
        if self._mine is not None and number > self._mine["record_no_max"]:
            self._mine["record_no_max"] = number


UNLIMITED = 2**62


class Chains:
    """Links batches into their scales' chains, for one writer (one connection's transactions).

    :meth:`link` a batch's new records, write the rows and :meth:`moved_heads`
    (with the claims' heads, :meth:`ingestor.claims.Claims.write_heads`) in the
    transaction, call :meth:`committed` after the commit. Heads are
    remembered between commits only for the small-batch path's guess.
    """

    def __init__(self, reservation: Reservation | None = None) -> None:
        self.reservation = reservation or Reservation()
        self._known: dict[int, Head] = {}
        self._pending: dict[int, Head] = {}
        self._moved: dict[int, Head] = {}  #: the heads the last :meth:`link` moved

    def link(self, records: np.ndarray, created_us: int, heads: dict[int, Head]) -> Chained:
        """Record numbers and links of ``records`` (``protocol.RECORD_DTYPE``, the batch's new events, in order).

        ``heads``: every scale of the batch's head as locked (or as cached),
        absent or record 0 for a chain not begun. ``created_us``: the rows'
        ``created_at`` in Unix µs, part of each link.
        Raises :class:`Unreserved` when a number is past the numbers reserved
        (the greatest is reported first: the supervisor reserves on from it).
        """
        after = dict(heads)
        numbers, links = alibi.chain(alibi.canonical_from_records(records, created_us), after)
        self._moved = {s: after[s] for s in set(records["scale_id"].tolist())}
        self._pending = after
        top = int(numbers.max(initial=0))
        self.reservation.use(top)
        reserved = self.reservation.limit()
        if top > reserved:
            raise Unreserved(top, reserved)
        return Chained(numbers, np.frombuffer(b"".join(links), np.uint8).reshape(len(links), alibi.LINK_BYTES))

    def moved_heads(self) -> dict[int, tuple[int, bytes]]:
        """The heads the last :meth:`link` moved: scale → (record number, link)."""
        return {s: (h.record_no, h.link) for s, h in self._moved.items()}

    def guess(self, scales: list[int]) -> dict[int, Head]:
        """Each of ``scales``' head as this writer last committed it, else the floor at its genesis (a new scale).

        A wrong guess costs a round trip: the small-batch function refuses it.
        """
        known, floor = self._known, self.reservation.floor()
        return {s: known[s] if s in known else Head(floor, alibi.genesis(s)) for s in scales}

    def committed(self) -> None:
        """The last linked batch committed: its heads are the scales' heads now."""
        self._known.update(self._pending)
        self._pending = {}

    def forget(self) -> None:
        """Forget every head (a new server: what it holds is read again under the claim's lock)."""
        self._known = {}
        self._pending = {}


def locked_heads(stored: dict[int, tuple[int | None, bytes | None]], floor: int = 0) -> dict[int, Head]:
    """The claim's locked heads as :class:`Head` (``floor`` at the genesis for a chain not begun).

    DatabaseError for a claims row with a record number and no link (migration 010 writes both or neither):
    no record may be linked to a head that cannot be checked.
    """
    heads = {}
    for s, (no, link) in stored.items():
        if no is None:
            heads[s] = Head(floor, alibi.genesis(s))
        elif link is None:
            raise DatabaseError(f"ingestor_claims row of scale {s} has record number {no} and no link")
        else:
            heads[s] = Head(no, bytes(link))
    return heads
