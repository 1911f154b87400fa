"""The alibi chain (docs/alibi.md): each scale's stored events linked by SHA-256, record by record.

Scale terminals keep an "alibi memory" for weighings that are legal for
trade (WELMEC 7.2, extension L): every registered weighing gets a record
number and a checksum, and a verifier shows when a record changed. Here each
stored event gets its scale's next record number and a link::

    link(n) = SHA-256(link(n-1) || canonical(event n))
    link(0) = SHA-256(GENESIS || scale_id as int32 LE)   (no chain can pass for another scale's)

``canonical`` is the event as received, in bytes (format v1): scale_id
int32, seq int64, ``measured_at`` and ``created_at`` as int64 µs since 1970
(all little-endian; :data:`HEAD`, 28 bytes), then per data field its byte
length as int8 (-1 for NULL) and its UTF-8 text. A writer builds a whole
batch's encodings from ring records with numpy, each field as wide as the
batch's longest and the padding masked away (as copy_payload does:
:func:`canonical_from_records`); a verifier builds the same bytes from stored
rows (:func:`canonical_from_rows`); only the SHA-256 calls run per event
(:func:`chain`). A plant event is ~60 bytes, so prev link + event fit in two
SHA-256 blocks.

This module is the chain's arithmetic and the verifier's core
(:class:`ChainCheck`, :func:`verify_heads`: which records were changed,
deleted, inserted, reordered or cut off). The writers link batches with it
(:mod:`ingestor.chains`), the supervisor seals the heads
(:mod:`ingestor.seals`), ``ingestor alibi verify`` runs the checks over the
stored rows (:mod:`ingestor.verifier`). On 5,000 bench-plant records
(49 bytes each) encoding took 1.3–1.7 ms and linking 3.0 ms (0.34 ms of
each 1,000 links is SHA-256 itself), beside 4–5 ms for the same batch's COPY
payload, measured with the full test suite running alongside
(bench/test_micro.py times it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import numpy as np

from .protocol import DATA_FIELDS, EPOCH, MAX_TEXT_BYTES

GENESIS = b"scale-ingestor alibi v1"
LINK_BYTES = 32
HEAD = struct.Struct("<iqqq")  # scale_id, seq, measured_us, created_us
_HEAD_DTYPE = np.dtype([("scale_id", "<i4"), ("seq", "<i8"), ("measured_us", "<i8"), ("created_us", "<i8")])



class Encoded(NamedTuple):
    """A batch's canonical encodings: event i is ``data[offsets[i]:offsets[i + 1]]``; ``scale_ids`` in input order."""

    data: bytes
    offsets: list[int]  #: n + 1 offsets
    scale_ids: list[int]

    def event(self, i: int) -> bytes:
        return self.data[self.offsets[i]:self.offsets[i + 1]]


def genesis(scale_id: int) -> bytes:
    """The link before a scale's first record."""
    return hashlib.sha256(GENESIS + int(scale_id).to_bytes(4, "little", signed=True)).digest()


def canonical_from_records(records: np.ndarray, created_us: int) -> Encoded:
    """The canonical encodings of ring records (``protocol.RECORD_DTYPE``, length n), in bulk.

    ``created_us``: the batch's ``created_at`` in Unix µs (as copy_payload.build
    writes it). Text bytes past each length are never read.
    """
    n = len(records)
    head = np.empty(n, _HEAD_DTYPE)
    head["scale_id"], head["seq"] = records["scale_id"], records["seq"]
    head["measured_us"], head["created_us"] = records["measured_us"], created_us
    lengths = records["text_len"].astype(np.int32)  # (n, 5), -1 for NULL
    text = records["text"].view(np.uint8).reshape(n, len(DATA_FIELDS), MAX_TEXT_BYTES)
    widths = np.maximum(lengths.max(axis=0, initial=-1), 0).tolist()
    rows = np.empty((n, HEAD.size + len(DATA_FIELDS) + sum(widths)), np.uint8)
    keep = np.ones(rows.shape, bool)
    rows[:, :HEAD.size] = head.view(np.uint8).reshape(n, HEAD.size)
    at = HEAD.size
    for k, width in enumerate(widths):
        rows[:, at] = lengths[:, k].astype(np.int8).view(np.uint8)
        rows[:, at + 1:at + 1 + width] = text[:, k, :width]
        keep[:, at + 1:at + 1 + width] = np.arange(width) < lengths[:, k, None]
        at += 1 + width
    sizes = HEAD.size + len(DATA_FIELDS) + np.maximum(lengths, 0).sum(axis=1)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(sizes, out=offsets[1:])
    return Encoded(rows[keep].tobytes(), offsets.tolist(), records["scale_id"].tolist())


def canonical_from_rows(rows: Iterable[Sequence]) -> Encoded:
    """The canonical encodings of stored rows ``(scale_id, seq, measured_at, created_at, val_1, …, val_5)``.

    Times are aware datetimes or int µs since 1970, the vals str or None (``data_k->>'val'``).
    Raises ValueError for a val over 64 bytes of UTF-8 (no valid event has one).
    """
    parts, offsets, scale_ids = [], [0], []
    for scale_id, seq, measured_at, created_at, *vals in rows:
        part = [HEAD.pack(scale_id, seq, _us(measured_at), _us(created_at))]
        for k, val in enumerate(vals, 1):
            if val is None:
                part.append(b"\xff")
                continue
            data = val.encode()
            if len(data) > MAX_TEXT_BYTES:
                raise ValueError(f"data_{k} of scale {scale_id} seq {seq} is {len(data)} bytes, over {MAX_TEXT_BYTES}")
            part += (len(data).to_bytes(1, "little"), data)
        event = b"".join(part)
        parts.append(event)
        offsets.append(offsets[-1] + len(event))
        scale_ids.append(scale_id)
    return Encoded(b"".join(parts), offsets, scale_ids)


def _us(moment: dt.datetime | int) -> int:
    if isinstance(moment, int):
        return moment
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


class Head(NamedTuple):
    """A scale's chain head: its last record number (0 before the first) and that record's link."""

    record_no: int
    link: bytes


def chain(encoded: Encoded, heads: dict[int, Head]) -> tuple[np.ndarray, list[bytes]]:
    """(record numbers as int64, links), one each per event in input order.

    Each event extends its own scale's chain (scales interleave freely), in
    input order. ``heads``: each scale's head (absent: record 0 at its
    genesis); updated in place to the new heads. The events are taken scale
    by scale, so the loop per event is one slice, one concatenation and one
    SHA-256 (~0.7 µs; bench/test_micro.py).
    """
    sha256 = hashlib.sha256
    data, offsets = encoded.data, encoded.offsets
    if not encoded.scale_ids:  # a batch of duplicates only
        return np.empty(0, np.int64), []
    scales = np.asarray(encoded.scale_ids, np.int64)
    order = np.argsort(scales, kind="stable")
    ordered = scales[order]
    cuts = (np.flatnonzero(ordered[1:] != ordered[:-1]) + 1).tolist()
    numbers = [0] * len(order)
    links: list[bytes] = [b""] * len(order)
    positions = order.tolist()
    for start, end in zip([0, *cuts], [*cuts, len(order)]):
        scale = int(ordered[start])
        record_no, link = heads.get(scale) or Head(0, genesis(scale))
        for i in positions[start:end]:
            link = sha256(link + data[offsets[i]:offsets[i + 1]]).digest()
            record_no += 1
            links[i], numbers[i] = link, record_no
        heads[scale] = Head(record_no, link)
    return np.array(numbers, np.int64), links


# -- checking a chain (the verifier's core) ---------------------------------------------------------

MAX_NAMED = 10_000  # a finding over a longer run of records names its first and last only
# SHA-256 calls one resolve() may spend trying stray rows in gaps (strays × gaps grows fast under mass tampering);
# past it the strays left are named as inserted and the gaps as deleted: still found, named twice
PLACE_BUDGET = 2_000_000


class Record(NamedTuple):
    """One stored row of a scale as the verifier reads it."""

    record_no: int | None  #: its place in the chain; None: a row the chain never had
    row_id: int  #: weighing_logs.id, to name it
    link: bytes | None  #: the link stored with it
    event: bytes  #: the canonical encoding of the row as stored now; b"": it cannot be an event as received


class Finding(NamedTuple):
    """One thing the chain says was done to the stored records (docs/alibi.md#findings).

    ``kind``: changed, deleted, inserted, reordered, truncated, moved (a
    record stored under another scale_id or record_no), head (the claims
    row's head disagrees with the stored chain), sealed (the record a seal
    signed as the scale's head holds another link or is gone); for seals
    and archives (``scale_id`` None): forged, unrecorded, unfiled, archive. ``records``: the record numbers (for
    ``inserted``: the row ids; a run of more than MAX_NAMED: its first and
    last), each tampered record named by one finding.
    """

    scale_id: int | None
    kind: str
    records: tuple[int, ...]
    detail: str


def verify_chain(scale_id: int, records: Sequence[Record], last: int | None = None,
                 start: tuple[int, bytes | None] | None = None, floors: frozenset[int] = frozenset()) -> list[Finding]:
    """What was done to scale ``scale_id``'s chain; [] when every record is as it was linked.

    ``records``: the scale's stored rows, any order. ``last``: the chain's
    last record number as recorded elsewhere (the head kept beside the
    writers' claims, or a seal); records missing at the end are then
    ``truncated``. ``start``: (first record number, the link before it) when
    older records were dropped by retention; default (1, genesis).
    ``floors``: the skips recorded. See :class:`ChainCheck`, which this runs
    over one piece.
    """
    check = ChainCheck(scale_id, start, None if last is None else (last, None), floors)
    check.feed(records)
    return resolve([check])


def as_scale(event: bytes, scale_id: int) -> bytes:
    """``event`` (a canonical encoding) as it would be under ``scale_id``: a row moved to another scale is checked
    against the chain it came from."""
    return scale_id.to_bytes(4, "little", signed=True) + event[4:] if event else event


def _followed(rows: list[Record], after: list[Record] | None) -> Record | None:
    """Of rows under one record number with no predecessor to check them against, the one the next record links to."""
    if len(rows) > 1 and after:
        return next((r for r in rows if r.link is not None and any(_holds(r.link, a.event, a.link) for a in after)),
                    None)
    return None


def _holds(prev: bytes | None, event: bytes, link: bytes | None) -> bool:
    return prev is not None and link is not None and bool(event) and hashlib.sha256(prev + event).digest() == link


class _Gap(NamedTuple):
    """Record numbers first..last not met where the chain needed them (filled later, or deleted)."""

    first: int
    last: int
    before: bytes | None  #: the stored link of record first - 1 (None: not known)
    after: Record | None  #: record last + 1 as stored; None: the gap runs to the chain's head


_INSIDE = Record(None, 0, None, b"")  # the "record after" of a run that ends inside a gap: not at the chain's end


class ChainCheck:
    """One scale's chain checked piece by piece (a day at a time), then :func:`resolve`\\ d.

    Each record's link is recomputed from its predecessor's *stored* link,
    so one changed record is one finding, not a broken rest of the chain.
    A record whose content changed and whose link was recomputed to match,
    with every later link rewritten too, passes here: only a signed seal
    over a later head (:func:`verify_heads`) catches that.

    Rows may come in any order across pieces: a record met after its
    successors (its created_at moved to another day) is kept and put into
    its gap by :func:`resolve`, as is a row moved to another scale or
    record number, recognised by its link. What fits no gap is ``inserted``.

    ``start``: (first record number, the link before it); a link of None
    trusts the first record held (a time range that begins mid-chain).
    ``head``: (record number, link or None) of the chain's head as recorded
    beside the writers' claims, (0, None) when none is; rows past it are
    not in the chain. None: the end is not known (a range ending early).
    ``floors``: the skips recorded (``ingestor_alibi_skips``,
    docs/alibi.md#after-a-restore): the record after any record may be a
    floor + 1 that links to it, or the head may sit on a floor with the last
    record's link; each such jump is in :attr:`skipped`, not a gap.
    """

    def __init__(self, scale_id: int, start: tuple[int, bytes | None] | None = None,
                 head: tuple[int, bytes | None] | None = None, floors: frozenset[int] = frozenset()) -> None:
        self.scale_id = scale_id
        self.floors = floors
        #: (first, last, the link before first): record numbers first..last skipped to a recorded floor (last)
        self.skipped: list[tuple[int, int, bytes]] = []
        self.start, self.prev = start if start is not None else (1, genesis(scale_id))
        self.expected = self.start
        self.head = head
        self.records = 0  #: records fed that are in the chain
        self.late: list[Record] = []  #: records met after the chain had passed their number
        self.strays: list[Record] = []  #: rows not in the chain: no record number, a second row under one, past the head
        self.findings: list[Finding] = []
        self._first_read: int | None = None
        self._gaps: list[_Gap] = []
        self._beyond: list[Record] = []
        self._alt: bytes | None = None  # the last record's link as recomputed, when its stored one did not hold

    def feed(self, records: Sequence[Record]) -> None:
        """Check the next piece (any order within it)."""
        by_no: dict[int, Record | list[Record]] = {}  # one row per number, the common case, or a list
        head_no = None if self.head is None else self.head[0]
        expected = self.expected
        for stored in records:
            k = stored.record_no
            if k is None:
                self.strays.append(stored)
            elif head_no is not None and k > head_no:
                self._beyond.append(stored)
            elif k < expected:
                self.late.append(stored)
            else:
                got = by_no.get(k)
                by_no[k] = stored if got is None else [*got, stored] if isinstance(got, list) else [got, stored]
        numbers = sorted(by_no)
        if numbers and self._first_read is None:
            self._first_read = numbers[0]
        sha256 = hashlib.sha256
        prev, alt = self.prev, self._alt
        i = 0
        while i < len(numbers):
            k = numbers[i]
            r = by_no[k]
            # the common case: the next number, one row, its link holds against its predecessor's
            if k == expected and prev is not None and not isinstance(r, list) and r.event and r.link is not None \
                    and sha256(prev + r.event).digest() == r.link:
                prev, alt, expected, i = r.link, None, k + 1, i + 1
                self.records += 1
                continue
            self.prev, self._alt, self.expected = prev, alt, expected
            i += self._step(k, r if isinstance(r, list) else [r], by_no, numbers, i)
            prev, alt, expected = self.prev, self._alt, self.expected
        self.prev, self._alt, self.expected = prev, alt, expected

    def _step(self, k: int, rows: list[Record], by_no: dict, numbers: list[int], i: int) -> int:
        """Record number ``k`` when it is not the common case; returns how many numbers it took (1 or 2)."""
        def rows_of(n: int) -> list[Record]:
            got = by_no.get(n)
            return [] if got is None else got if isinstance(got, list) else [got]

        self.records += 1
        if k > self.expected and k - 1 in self.floors and self.prev is not None:
            r = next((x for x in rows if _holds(self.prev, x.event, x.link)), None)
            if r is not None:  # the chain goes on past a recorded skip, linked across it
                self.skipped.append((self.expected, k - 1, self.prev))
                self.strays += [x for x in rows if x is not r]
                self.prev, self._alt, self.expected = r.link, None, k + 1
                return 1
        if self.prev is None or k > self.expected:
            r = _followed(rows, rows_of(k + 1)) or min(rows, key=lambda r: r.row_id)
            if self.prev is not None:
                self._gaps.append(_Gap(self.expected, k - 1, self.prev, r))
            self.strays += [x for x in rows if x is not r]
            self.prev, self._alt, self.expected = r.link, None, k + 1
            return 1
        r = next((x for x in rows if _holds(self.prev, x.event, x.link)), None)
        if r is None and self._alt is not None:
            r = next((x for x in rows if _holds(self._alt, x.event, x.link)), None)
            if r is not None:  # the predecessor's content holds; its stored link was altered
                f = self.findings[-1]
                self.findings[-1] = f._replace(detail=f"record {f.records[0]} has an altered link (its content "
                                                      "links to its predecessor, its successor to the original link)")
        if r is not None:
            self.strays += [x for x in rows if x is not r]
            self.prev, self._alt, self.expected = r.link, None, k + 1
            return 1
        r = min(rows, key=lambda r: r.row_id)
        self.strays += [x for x in rows if x is not r]
        following = rows_of(k + 1) if i + 1 < len(numbers) and numbers[i + 1] == k + 1 else []
        after = following[0] if following else None
        if after is not None and _holds(self.prev, after.event, r.link) and _holds(r.link, r.event, after.link):
            self.findings.append(Finding(self.scale_id, "reordered", (k, k + 1),
                                         f"records {k} and {k + 1} hold each other's content"))
            self.strays += following[1:]
            self.records += 1
            self.prev, self._alt, self.expected = after.link, None, k + 2
            return 2
        self.findings.append(Finding(self.scale_id, "changed", (k,), f"record {k} (row id {r.row_id}) does not "
                                     "link to its predecessor: it was changed, or the predecessor and its link "
                                     "were rewritten"))
        self._alt = hashlib.sha256(self.prev + r.event).digest() if r.event else None
        self.prev, self.expected = r.link, k + 1
        return 1

    def _close(self) -> None:
        """Before the gaps are filled: the head (records past it, its link) and the gap up to it."""
        if self.head is None or (self.prev is None and not self.records):
            return  # the end is not known, or a range that holds none of this scale's records
        head_no, head_link = self.head
        if self._beyond:
            beyond = sorted(self._beyond, key=lambda r: (r.record_no, r.row_id))
            numbers = [r.record_no for r in beyond if r.record_no is not None]  # all: each is past the head
            linked = self.expected == head_no + 1 and numbers == list(range(head_no + 1, head_no + 1 + len(beyond)))
            prev = self.prev
            for r in beyond if linked else ():
                linked = _holds(prev, r.event, r.link)
                prev = r.link
            if linked:
                said = f"is record {head_no}" if head_no else "is missing"
                self.findings.append(Finding(self.scale_id, "head", _named(numbers), (
                    f"the head in ingestor_claims {said}, but records {_span(numbers)} are stored and link "
                    "on: the head was set back (the next records written would repeat their numbers)")))
                self.prev, self.expected, self._alt = prev, numbers[-1] + 1, None
                self.records += len(beyond)
                self.head = (numbers[-1], None)
                return
            self.strays += beyond
        if head_no >= self.expected and head_no in self.floors and head_link is not None and head_link == self.prev:
            self.skipped.append((self.expected, head_no, self.prev))  # moved to a skip's floor, no record after it yet
            self.expected = head_no + 1
        elif head_no >= self.expected:
            self._gaps.append(_Gap(self.expected, head_no, self.prev, None))
            self.expected = head_no + 1
        elif head_link is not None and self.records and self.prev != head_link and self._alt != head_link:
            self.findings.append(Finding(self.scale_id, "head", (head_no,), (
                f"the head in ingestor_claims holds another link for record {head_no} than the one stored: it was "
                "altered (the next record written would not link)")))

    def _fill(self, gap: _Gap, late: dict[int, list[Record]], pool: list[tuple[int, Record]],
              budget: list[int]) -> None:
        """Put late records and strays (any scale's: ``pool``) into ``gap`` where their links say they belong;
        name what they say was done, and what stays empty as deleted (or truncated, at the head)."""
        placed, used, back, jumped = self._place(gap, late, pool, budget)
        self._name_placed(gap, placed, back)
        at = gap.first
        for first, last in jumped:  # what a recorded skip jumped over is not empty
            if first > at:
                self._name_empty(gap._replace(first=at, last=first - 1, after=gap.after or _INSIDE), placed)
            at = last + 1
        if at <= gap.last:
            self._name_empty(gap._replace(first=at), placed)
        pool[:] = [(s, r) for s, r in pool if id(r) not in used]
        for number, rows in list(late.items()):
            late[number] = [r for r in rows if id(r) not in used]

    def _place(self, gap: _Gap, late: dict[int, list[Record]], pool: list[tuple[int, Record]],
               budget: list[int]) -> tuple[dict[int, tuple[int, Record, bool]], set[int], int, list[tuple[int, int]]]:
        """Where rows fit ``gap``: forward from the link before it (across a recorded skip where the links hold
        across it), backward from the record after it (a row's link is what its successor links to), then late
        rows of their own number in between. Returns (position -> (its scale, the row, its content holds), ids
        of the rows used, where going backward stopped, the runs of positions a skip jumped over)."""
        scale = self.scale_id
        placed: dict[int, tuple[int, Record, bool]] = {}
        used: set[int] = set()

        def candidates(position: int) -> Iterator[tuple[int, Record]]:
            yield from ((scale, r) for r in late.get(position, ()) if id(r) not in used)
            for s, r in pool:
                if budget[0] <= 0:
                    return
                if id(r) not in used and r.link is not None and r.event:
                    budget[0] -= 1
                    yield s, r

        position, prev = gap.first, gap.before
        jumped: list[tuple[int, int]] = []
        while position <= gap.last and prev is not None:
            found = next(((s, r) for s, r in candidates(position) if _holds(prev, as_scale(r.event, scale), r.link)),
                         None)
            # a recorded skip the links hold across comes before a row moved here from elsewhere
            landing = self._landing(position, prev, gap, candidates) if found is None or found[0] != scale \
                or found[1].record_no != position else None
            if landing is None and found is None:
                break
            if landing is not None:
                floor, found = landing
                self.skipped.append((position, floor, prev))
                jumped.append((position, floor))
                position = floor + 1
                if found is None:  # landed on the record after the gap, or the head sits on the floor
                    break
            assert found is not None  # each way to here found the row that holds
            placed[position] = (*found, True)
            used.add(id(found[1]))
            prev, position = found[1].link, position + 1
        back, after = gap.last, gap.after
        while back >= position and after is not None and after.event:
            event = as_scale(after.event, scale)
            found = next(((s, r) for s, r in candidates(back) if _holds(r.link, event, after.link)), None)
            if found is None:
                break
            before = gap.before if back == gap.first else placed[back - 1][1].link if back - 1 in placed else None
            placed[back] = (*found, _holds(before, as_scale(found[1].event, scale), found[1].link))
            used.add(id(found[1]))
            after, back = found[1], back - 1
        for number, rows in late.items():  # late rows of their own number that link to neither side
            r = next((r for r in rows if id(r) not in used), None)
            if position <= number <= back and number not in placed and r is not None:
                placed[number] = (scale, r, False)
                used.add(id(r))
        return placed, used, back, jumped

    def _landing(self, position: int, prev: bytes, gap: _Gap, candidates) -> tuple[int, tuple | None] | None:
        """A recorded skip from ``position`` on: (its floor, the row at floor + 1 that links to ``prev``, or None
        when that is the record after the gap, or the head sitting on the floor with ``prev``); None: none."""
        for floor in sorted(f for f in self.floors if position <= f <= gap.last):
            if floor < gap.last:  # only the row stored under floor + 1 lands there
                found = next(((s, r) for s, r in candidates(floor + 1) if s == self.scale_id
                              and r.record_no == floor + 1 and _holds(prev, r.event, r.link)), None)
                if found is not None:
                    return floor, found
            elif gap.after is not None and _holds(prev, gap.after.event, gap.after.link):
                return floor, None
            elif gap.after is None and self.head is not None and self.head[0] == floor and self.head[1] == prev:
                return floor, None
        return None

    def _name_placed(self, gap: _Gap, placed: dict[int, tuple[int, Record, bool]], back: int) -> None:
        """A finding for each placed row that is not simply a late record of its own number that links."""
        scale = self.scale_id
        for number in sorted(placed):
            s, r, holds = placed[number]
            s = int.from_bytes(r.event[:4], "little", signed=True) if r.event else s  # the scale it is stored as
            elsewhere = s != scale or r.record_no != number
            where = f"stored as scale {s} record {r.record_no} (row id {r.row_id})"
            if elsewhere and holds:
                self.findings.append(Finding(scale, "moved", (number,), f"record {number} is {where}"))
            elif not holds and (number == gap.first and gap.before is not None or number - 1 in placed):
                self.findings.append(Finding(scale, "changed", (number,), (
                    f"record {number} ({where}) does not link to its predecessor" if elsewhere else
                    f"record {number} (row id {r.row_id}) does not link to its predecessor: it was changed "
                    "(stored out of order: its created_at was changed too, or it was written around midnight)")))
            elif elsewhere:
                self.findings.append(Finding(scale, "moved", (number,), f"record {number} is {where}"))
        if gap.after is not None and gap.last in placed and back == gap.last:  # nothing linked the after-record back
            if not _holds(placed[gap.last][1].link, gap.after.event, gap.after.link):
                self.findings.append(Finding(scale, "changed", (gap.last + 1,), (
                    f"record {gap.last + 1} (row id {gap.after.row_id}) does not link to its predecessor")))
        if gap.after is None and gap.last in placed and self.head is not None and self.head[1] is not None \
                and placed[gap.last][1].link != self.head[1]:
            self.findings.append(Finding(scale, "head", (gap.last,), (
                f"the head in ingestor_claims holds another link for record {gap.last} than the one stored")))

    def _name_empty(self, gap: _Gap, placed: dict) -> None:
        """Each run of positions nothing fills: deleted, or truncated where it reaches the head."""
        if gap.last - gap.first >= MAX_NAMED:  # a vast gap: a forged record number; its ends are what can be named
            self.findings.append(Finding(self.scale_id, "truncated" if gap.after is None else "deleted",
                                         (gap.first, gap.last), f"records {gap.first}..{gap.last} missing"))
            return
        run: list[int] = []
        for n in (n for n in range(gap.first, gap.last + 1) if n not in placed):
            if run and n != run[-1] + 1:
                self._missing(run, gap, False)
                run = []
            run.append(n)
        if run:
            self._missing(run, gap, gap.after is None and run[-1] == gap.last)

    def _missing(self, run: list[int], gap: _Gap, at_head: bool) -> None:
        if at_head:
            self.findings.append(Finding(self.scale_id, "truncated", tuple(run),
                                         f"record(s) {_span(run)} missing at the chain's end"))
        else:
            across = (f", or record {run[-1] + 1} changed (it does not link across the skip recorded to {run[-1]})"
                      if run[-1] in self.floors else "")
            self.findings.append(Finding(self.scale_id, "deleted", tuple(run),
                                         f"record(s) {_span(run)} missing from the chain{across}"))


def resolve(checks: Iterable[ChainCheck]) -> list[Finding]:
    """Every check's findings once all pieces were fed: gaps filled with late records and with strays of any
    scale (a row moved to another scale_id or record_no), what is left named as deleted, truncated or inserted."""
    checks = list(checks)
    for check in checks:
        check._close()
    # any late record or stray may be what a gap lacks: under another number or scale, its link tells
    pool = [(c.scale_id, r) for c in checks for r in (*c.late, *c.strays) if r.link is not None and r.event]
    others = [(c.scale_id, r) for c in checks for r in c.strays if not (r.link is not None and r.event)]
    budget = [PLACE_BUDGET]
    late_of: dict[int, dict[int, list[Record]]] = {}
    for check in checks:
        late = late_of[check.scale_id] = {}
        for r in check.late:
            if r.record_no is not None:  # always: a late record has a number below the expected one
                late.setdefault(r.record_no, []).append(r)
        for gap in check._gaps:
            check._fill(gap, late, pool, budget)
    findings = [f for c in checks for f in c.findings]
    leftover: dict[int, list[tuple[int, str]]] = {}
    for check in checks:
        for number, same_number in late_of[check.scale_id].items():
            for r in same_number:
                if check._first_read is None or number < check._first_read:
                    findings.append(Finding(check.scale_id, "changed", (number,), (
                        f"record {number} (row id {r.row_id}) is stored among later records: its created_at "
                        "was changed")))
                else:
                    leftover.setdefault(check.scale_id, []).append((r.row_id, f"a second row under record {number}"))
    late_ids = {id(r) for c in checks for r in c.late}
    for s, r in pool + others:
        if id(r) in late_ids:
            continue  # named above with its scale's late records
        leftover.setdefault(s, []).append(
            (r.row_id, "not in the chain" if r.record_no is None else f"a row under record {r.record_no}"))
    for s, rows in leftover.items():
        rows.sort()
        ids = tuple(i for i, _ in rows)
        findings.append(Finding(s, "inserted", ids if len(ids) <= MAX_NAMED else (ids[0], ids[-1]),
                                f"rows that are not in the chain: {_rows(rows)}"))
    return findings


def verify_heads(scale_id: int, records: Sequence[Record], heads: Sequence[tuple[int, bytes]]) -> list[Finding]:
    """Check heads a seal signed, (record number, link), against the stored records of the scale.

    A head whose record is gone, or holds another link, means the chain was
    rewritten or cut after that seal.
    """
    stored = {r.record_no: r.link for r in records if r.record_no is not None}
    findings = []
    for record_no, link in heads:
        if stored.get(record_no) != link:
            why = "is gone" if record_no not in stored else "holds another link"
            findings.append(Finding(scale_id, "sealed", (record_no,),
                                    f"record {record_no}, sealed as the chain's head, {why}: rewritten or cut since"))
    return findings


def _named(numbers: list[int]) -> tuple[int, ...]:
    return tuple(numbers) if len(numbers) <= MAX_NAMED else (numbers[0], numbers[-1])


def _span(numbers: Sequence[int]) -> str:
    return str(numbers[0]) if len(numbers) == 1 else f"{numbers[0]}..{numbers[-1]}"


def _rows(rows: list[tuple[int, str]]) -> str:
    shown = "; ".join(f"row id {i} ({why})" for i, why in rows[:10])
    return shown + (f"; and {len(rows) - 10} more" if len(rows) > 10 else "")
