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
"""

from __future__ import annotations

import numpy as np

from . import alibi
from .alibi import Head
from .copy_payload import Chained

class Chains:
    """Links batches into their scales' chains, for one writer (one connection's transactions).

    :meth:`link` a batch's new records, write the rows and :meth:`moved_heads`
    (with the claims' heads, :meth:`ingestor.claims.Claims.write_heads`) in the
    transaction, call :meth:`committed` after the commit. Heads are
    remembered between commits only for the small-batch path's guess.
    """

    def __init__(self) -> None:
        self._known: dict[int, Head] = {}
        self._pending: dict[int, Head] = {}
        self._moved: dict[int, Head] = {}  #: the heads the last :meth:`link` moved

    def link(self, records: np.ndarray, created_us: int, heads: dict[int, Head]) -> Chained:
        """Record numbers and links of ``records`` (``protocol.RECORD_DTYPE``, the batch's new events, in order).

        ``heads``: every scale of the batch's head as locked (or as cached),
        absent or record 0 for a chain not begun. ``created_us``: the rows'
        ``created_at`` in Unix µs, part of each link.
        """
        after = dict(heads)
        numbers, links = alibi.chain(alibi.canonical_from_records(records, created_us), after)
        self._moved = {s: after[s] for s in set(records["scale_id"].tolist())}
        self._pending = after
        return Chained(numbers, np.frombuffer(b"".join(links), np.uint8).reshape(len(links), alibi.LINK_BYTES))

    def moved_heads(self) -> dict[int, tuple[int, bytes]]:
        """The heads the last :meth:`link` moved: scale → (record number, link)."""
        return {s: (h.record_no, h.link) for s, h in self._moved.items()}

    def guess(self, scales: list[int]) -> dict[int, Head]:
        """Each of ``scales``' head as this writer last committed it, else record 0 at its genesis (a new scale).

        A wrong guess costs a round trip: the small-batch function refuses it.
        """
        known = self._known
        return {s: known[s] if s in known else Head(0, alibi.genesis(s)) for s in scales}

    def committed(self) -> None:
        """The last linked batch committed: its heads are the scales' heads now."""
        self._known.update(self._pending)
        self._pending = {}

    def forget(self) -> None:
        """Forget every head (a new server: what it holds is read again under the claim's lock)."""
        self._known = {}
        self._pending = {}


def locked_heads(stored: dict[int, tuple[int | None, bytes | None]]) -> dict[int, Head]:
    """The claim's locked heads as :class:`Head` (record 0 at the genesis for a chain not begun)."""
    return {s: Head(0, alibi.genesis(s)) if no is None else Head(no, bytes(link)) for s, (no, link) in stored.items()}
