"""Dedup claims: the (scale_id, seq) keys already stored, kept as runs of consecutive seqs per scale.

An event whose (scale_id, seq) was stored before is a duplicate (docs/PROTOCOL.md §4).
``seq`` counts +1 per measurement (docs/PROTOCOL.md §3), so a scale's stored seqs
are a few runs, and the runs are what we keep (migration 006):

* ``ingestor_claims``: one row per scale holding its *head* run, the run with its
  greatest stored seq (NULLs before its first event). The row is also the
  scale's lock: every claim locks its scales' rows in ``scale_id`` order
  (``SELECT … ORDER BY scale_id FOR UPDATE``), so writers of one or several
  instances claiming the same scale take turns, and never deadlock.
* ``ingestor_claim_runs``: the scale's other runs, disjoint, written by INSERT
  only: the head left behind by a gap, or a gap filled late.

A batch that continues each scale's head (the usual case) costs one locked
read and one UPDATE per scale touched, however many events it holds; a seq
below the head also reads the runs around it by index. A sender that does not
count +1 degrades to one run row per event, the cost of a key per event.
Retention takes the dropped day's seqs out of the runs (migration 006,
``ingestor_drop_partitions_before``): dedup reaches as far back as the history.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any, NamedTuple

import numpy as np
import psycopg

from .copy_payload import INT4_ARRAY_OID, INT8_ARRAY_OID, BinaryArray, link_array

log = logging.getLogger(__name__)

# New scales get their (empty) row before any lock is taken, in scale_id order:
# a claim then waits only on rows that exist, in one order (see the module doc).
ENSURE_SQL = "INSERT INTO ingestor_claims (scale_id) SELECT unnest(%b::int4[]) ON CONFLICT DO NOTHING"

LOCK_SQL = """
SELECT scale_id, first_seq, last_seq, record_no, link FROM ingestor_claims
WHERE scale_id = ANY(%b::int4[]) ORDER BY scale_id FOR UPDATE
"""

# The stored runs overlapping each [lo, hi]: the last one starting at or before lo,
# and those starting inside; two index range scans per interval.
RUNS_SQL = """
SELECT r.scale_id, r.first_seq, r.last_seq
FROM unnest(%b::int4[], %b::int8[], %b::int8[]) AS b(scale_id, lo, hi),
LATERAL ((SELECT * FROM ingestor_claim_runs r
          WHERE r.scale_id = b.scale_id AND r.first_seq <= b.lo ORDER BY r.first_seq DESC LIMIT 1)
         UNION ALL
         (SELECT * FROM ingestor_claim_runs r
          WHERE r.scale_id = b.scale_id AND r.first_seq > b.lo AND r.first_seq <= b.hi)) r
WHERE r.last_seq >= b.lo
"""

HEADS_SQL = """
UPDATE ingestor_claims c SET first_seq = u.first_seq, last_seq = u.last_seq
FROM unnest(%b::int4[], %b::int8[], %b::int8[]) AS u(scale_id, first_seq, last_seq)
WHERE c.scale_id = u.scale_id
"""

# The heads with the alibi chain's (migration 010) in the same UPDATE: one row version per scale and batch.
HEADS_AND_CHAIN_SQL = """
UPDATE ingestor_claims c SET first_seq = u.first_seq, last_seq = u.last_seq, record_no = u.record_no, link = u.link
FROM unnest(%b::int4[], %b::int8[], %b::int8[], %b::int8[], %b::bytea[]) AS u(scale_id, first_seq, last_seq, record_no, link)
WHERE c.scale_id = u.scale_id
"""

# a locked claims row: (scale_id, head first seq, head last seq, chain number, chain link), as LOCK_SQL reads it
_Head = tuple[Any, ...]

INSERT_RUNS_SQL = "INSERT INTO ingestor_claim_runs SELECT * FROM unnest(%b::int4[], %b::int8[], %b::int8[])"


class Runs(NamedTuple):
    """A batch whose keys are one run of consecutive seqs per scale, as migration 007's function takes it."""

    positions: np.ndarray  #: position in the batch of each distinct key's first occurrence (int64)
    new_scales: BinaryArray | None  #: int4[] of the scales without a known claims row, or None
    scales: BinaryArray  #: int4[], one per scale, ascending
    first: BinaryArray  #: int8[], each scale's lowest seq in the batch
    last: BinaryArray  #: int8[], each scale's highest seq in the batch
    scale_ids: list[int]  #: the scales of ``scales``, ascending


class Claims:
    """Claims batches of keys for one connection's transactions (one per writer process).

    :meth:`claim` runs in the caller's transaction; call :meth:`committed` after
    the commit. The object remembers which scales have their row, so a known
    scale costs no INSERT. :meth:`runs` prepares a batch for the one-statement
    path of small batches (migration 007), which claims in the database.
    """

    def __init__(self) -> None:
        self._known: set[int] = set()
        self._pending: list[int] = []
        #: after :meth:`claim`: each locked scale's alibi chain head as stored, (record_no, link), NULLs as None
        self.chain_heads: dict[int, tuple[int | None, bytes | None]] = {}
        self._seq_heads: dict[int, tuple[int | None, int | None]] = {}  # after claim: each scale's head run
        self._changed: set[int] = set()  # after claim: the scales whose head run changed

    def runs(self, scale_ids: np.ndarray, seqs: np.ndarray) -> Runs | None:
        """The batch as one run per scale, or None when a scale's keys have a gap (the general path's case).

        Call :meth:`committed` once the statement that took the runs returned
        (whatever it returned: its new scales' rows are made either way).
        """
        keys = _Keys(scale_ids, seqs)
        if len(keys.run_start) != len(keys.scales):
            return None
        unknown = [s for s in keys.scales.tolist() if s not in self._known]
        self._pending = unknown
        return Runs(keys.index, BinaryArray(np.array(unknown, np.int32), INT4_ARRAY_OID) if unknown else None,
                    BinaryArray(keys.scales, INT4_ARRAY_OID), BinaryArray(keys.seqs[keys.run_start], INT8_ARRAY_OID),
                    BinaryArray(keys.seqs[keys.run_end], INT8_ARRAY_OID), keys.scales.tolist())

    def claim(self, cur: psycopg.Cursor, scale_ids: np.ndarray, seqs: np.ndarray,
              write_heads: bool = True) -> np.ndarray:
        """Claim the keys; return a bool array, True where the event is new.

        ``scale_ids`` (int32) and ``seqs`` (int64) have one entry per event. An
        event is new when its key was never claimed before and it is the key's
        first occurrence in the batch. ``write_heads=False`` leaves the heads'
        UPDATE to :meth:`write_heads`, which writes the alibi chain's heads with
        them. Raises what psycopg raises; the caller's transaction then rolls
        back, claiming nothing.
        """
        keys = _Keys(scale_ids, seqs)
        scales = keys.scales.tolist()
        unknown = [s for s in scales if s not in self._known]
        if unknown:
            cur.execute(ENSURE_SQL, (BinaryArray(np.array(unknown, np.int32), INT4_ARRAY_OID),))
        heads = self._lock(cur, keys.scales)
        self.chain_heads = {h[0]: (h[3], h[4]) for h in heads}
        dup, head_updates, run_inserts = _merge(cur, keys, heads)
        self._seq_heads = {h[0]: (h[1], h[2]) for h in heads}
        self._seq_heads.update((s, (first, last)) for s, first, last in head_updates)
        self._changed = {s for s, _, _ in head_updates}
        if head_updates and write_heads:  # the rows are locked by now: no waits
            cur.execute(HEADS_SQL, _columns(head_updates))
        if run_inserts:
            cur.execute(INSERT_RUNS_SQL, _columns(run_inserts))
        self._pending = unknown
        fresh = np.zeros(len(scale_ids), bool)
        fresh[keys.index[~dup]] = True
        return fresh

    def write_heads(self, cur: psycopg.Cursor, chain: dict[int, tuple[int, bytes]]) -> None:
        """Write the heads of the last ``claim(..., write_heads=False)`` and the chain's new heads, ``chain``
        (scale → (record number, link)), in one UPDATE of the scales where either changed.

        A scale whose seq head changed has new events, so it is in ``chain``.
        """
        scales = sorted(self._changed | set(chain))
        if not scales:
            return
        seq = [self._seq_heads[s] for s in scales]
        cur.execute(HEADS_AND_CHAIN_SQL, (
            BinaryArray(np.array(scales, np.int32), INT4_ARRAY_OID),
            BinaryArray(np.array([f for f, _ in seq], np.int64), INT8_ARRAY_OID),
            BinaryArray(np.array([last for _, last in seq], np.int64), INT8_ARRAY_OID),
            BinaryArray(np.array([chain[s][0] for s in scales], np.int64), INT8_ARRAY_OID),
            link_array([chain[s][1] for s in scales])))

    def forget(self) -> None:
        """Forget which scales have their row: the next claim makes sure of each again (a new server after failover)."""
        self._known = set()
        self._pending = []

    def committed(self) -> None:
        """The transaction of the last :meth:`claim` (or :meth:`runs`) committed: its new scales' rows exist."""
        self._known.update(self._pending)
        self._pending = []

    def _lock(self, cur: psycopg.Cursor[Any], scales: np.ndarray) -> list[_Head]:
        heads = cur.execute(LOCK_SQL, (BinaryArray(scales, INT4_ARRAY_OID),)).fetchall()
        if len(heads) != len(scales):
            # A scale this process thought known has no row (deleted by hand): make it,
            # then lock again. Out of order here, so PostgreSQL may report a deadlock,
            # which the writer retries.
            missing = sorted(set(scales.tolist()) - {h[0] for h in heads})
            log.warning("Dedup claims: %d scale row(s) missing (first scale %d); creating them", len(missing), missing[0])
            self._known.difference_update(missing)
            cur.execute(ENSURE_SQL, (BinaryArray(np.array(missing, np.int32), INT4_ARRAY_OID),))
            heads = cur.execute(LOCK_SQL, (BinaryArray(scales, INT4_ARRAY_OID),)).fetchall()
        return heads


class _Keys:
    """A batch's distinct keys sorted by (scale_id, seq), and their runs of consecutive seqs.

    ``index[i]`` is the position in the batch of distinct key i's first occurrence;
    ``run_start``/``run_end`` index the distinct keys (inclusive), ``run_scale`` is
    each run's position in ``scales`` (sorted distinct scale ids, int32).
    """

    def __init__(self, scale_ids: np.ndarray, seqs: np.ndarray) -> None:
        order = np.lexsort((seqs, scale_ids))  # stable: a key's first occurrence sorts first
        s, q = scale_ids[order], seqs[order]
        distinct = np.ones(len(order), bool)
        distinct[1:] = (s[1:] != s[:-1]) | (q[1:] != q[:-1])
        self.index = order[distinct]
        scale_ids, self.seqs = s[distinct], q[distinct]
        n = len(self.seqs)
        new_scale = np.ones(n, bool)
        new_scale[1:] = scale_ids[1:] != scale_ids[:-1]
        breaks = new_scale.copy()
        breaks[1:] |= self.seqs[1:] - 1 != self.seqs[:-1]
        self.scales = scale_ids[new_scale].astype(np.int32)
        self.run_start = np.flatnonzero(breaks)
        self.run_end = np.append(self.run_start[1:], n) - 1
        self.run_scale = np.cumsum(new_scale)[self.run_start] - 1


def _merge(cur: psycopg.Cursor[Any], keys: _Keys,
           heads: list[_Head]) -> tuple[np.ndarray, list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """Duplicates (bool per distinct key), head rows to write and run rows to insert.

    Vectorized for scales whose batch is one run continuing the head; the
    others go through :func:`_merge_scale`, with the stored runs that the
    batch reaches below each head.
    """
    dup = np.zeros(len(keys.seqs), bool)
    empty = np.array([h[2] is None for h in heads])
    head_last = np.array([-2 if h[2] is None else h[2] for h in heads], np.int64)
    runs_per_scale = np.bincount(keys.run_scale, minlength=len(heads))
    first_run = np.searchsorted(keys.run_scale, np.arange(len(heads)))
    lo = keys.seqs[keys.run_start[first_run]]
    fast = (runs_per_scale == 1) & (empty | (lo == head_last + 1))
    head_updates = []
    hi = keys.seqs[keys.run_end[first_run]]
    for i in np.flatnonzero(fast).tolist():
        first = int(lo[i]) if heads[i][1] is None else heads[i][1]
        head_updates.append((heads[i][0], first, int(hi[i])))
    slow = np.flatnonzero(~fast).tolist()
    if not slow:
        return dup, head_updates, []
    stored = _stored_runs(cur, keys, heads, slow)
    run_inserts: list[tuple[int, int, int]] = []
    for i in slow:
        start = keys.run_start[first_run[i]]
        end = keys.run_end[first_run[i] + runs_per_scale[i] - 1] + 1
        head = None if heads[i][2] is None else (heads[i][1], heads[i][2])
        scale_dup, new_head, inserts = _merge_scale(keys.seqs[start:end], head, stored[heads[i][0]])
        dup[start:end] = scale_dup
        if new_head is not None and new_head != head:
            head_updates.append((heads[i][0], *new_head))
        run_inserts.extend((heads[i][0], first, last) for first, last in inserts)
    return dup, head_updates, run_inserts


def _stored_runs(cur: psycopg.Cursor[Any], keys: _Keys, heads: list[_Head],
                 slow: list[int]) -> dict[int, list[tuple[int, int]]]:
    """The stored runs (besides the heads) that the batch's runs of ``slow`` scales overlap, per scale id."""
    slow_scales = set(slow)
    reach = [(heads[i][0], int(keys.seqs[keys.run_start[r]]), int(keys.seqs[keys.run_end[r]]))
             for r, i in enumerate(keys.run_scale.tolist()) if i in slow_scales
             and heads[i][2] is not None and keys.seqs[keys.run_start[r]] <= heads[i][2]]
    found: dict[int, list[tuple[int, int]]] = defaultdict(list)
    if reach:
        for scale, first, last in set(cur.execute(RUNS_SQL, _columns(reach)).fetchall()):
            found[scale].append((first, last))
    return found


def _merge_scale(seqs: np.ndarray, head: tuple[int, int] | None,
                 stored: list[tuple[int, int]]) -> tuple[np.ndarray, tuple[int, int] | None, list[tuple[int, int]]]:
    """One scale: which of ``seqs`` (distinct, ascending) are claimed already, its new head, runs to insert.

    ``stored`` holds every stored run that any of ``seqs`` could fall in, besides the head.
    """
    claimed = sorted(stored + ([head] if head else []))
    firsts = np.array([c[0] for c in claimed], np.int64)
    lasts = np.array([c[1] for c in claimed], np.int64)
    at = np.searchsorted(firsts, seqs, side="right") - 1
    dup = (at >= 0) & (seqs <= lasts[np.maximum(at, 0)]) if claimed else np.zeros(len(seqs), bool)
    new = seqs[~dup]
    if not len(new):
        return dup, head, []
    breaks = np.flatnonzero(new[1:] - 1 != new[:-1]) + 1
    inserts = []
    for run in np.split(new, breaks):
        first, last = int(run[0]), int(run[-1])
        if head is None:
            head = (first, last)
        elif first > head[1]:  # above the head: continues it, or leaves it behind a gap
            if first == head[1] + 1:
                head = (head[0], last)
            else:
                inserts.append(head)
                head = (first, last)
        elif last == head[0] - 1:  # just below the head
            head = (first, head[1])
        else:
            inserts.append((first, last))
    return dup, head, inserts


def _columns(rows: list[tuple[int, int, int]]) -> tuple[BinaryArray, BinaryArray, BinaryArray]:
    scale, first, last = zip(*rows)
    return (BinaryArray(np.array(scale, np.int32), INT4_ARRAY_OID),
            BinaryArray(np.array(first, np.int64), INT8_ARRAY_OID),
            BinaryArray(np.array(last, np.int64), INT8_ARRAY_OID))
