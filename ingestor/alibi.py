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
from typing import Iterable, NamedTuple, Sequence

import numpy as np

from .protocol import DATA_FIELDS, MAX_TEXT_BYTES

GENESIS = b"scale-ingestor alibi v1"
LINK_BYTES = 32
HEAD = struct.Struct("<iqqq")  # scale_id, seq, measured_us, created_us
_HEAD_DTYPE = np.dtype([("scale_id", "<i4"), ("seq", "<i8"), ("measured_us", "<i8"), ("created_us", "<i8")])

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


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
    delta = moment - _EPOCH
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


class Record(NamedTuple):
    """One stored row of a scale as the verifier reads it."""

    record_no: int | None  #: its place in the chain; None: a row the chain never had
    row_id: int  #: weighing_logs.id, to name it
    link: bytes | None  #: the link stored with it
    event: bytes  #: the canonical encoding of the row as stored now


class Finding(NamedTuple):
    """One thing the chain says was done to the stored records."""

    scale_id: int | None  #: None for a finding about a seal
    kind: str  #: changed, deleted, inserted, reordered, truncated; sealed (a seal's head does not match),
    #: forged (a seal's signature does not hold), unrecorded (a seal of the file missing from the database)
    records: tuple[int, ...]  #: the record numbers (for ``inserted``: the row ids)
    detail: str


def verify_chain(scale_id: int, records: Sequence[Record], last: int | None = None,
                 start: tuple[int, bytes | None] | None = None) -> list[Finding]:
    """What was done to scale ``scale_id``'s chain; [] when every record is as it was linked.

    ``records``: the scale's stored rows, any order. ``last``: the chain's
    last record number as recorded elsewhere (the head kept beside the
    writers' claims, or a seal); records missing at the end are then
    ``truncated``. ``start``: (first record number, the link before it) when
    older records were dropped by retention; default (1, genesis). See
    :class:`ChainCheck`, which this runs over one piece.
    """
    check = ChainCheck(scale_id, start)
    return check.feed(records) + check.finish(last)


class ChainCheck:
    """One scale's chain checked piece by piece (a day at a time), in record order.

    Each record's link is recomputed from its predecessor's *stored* link,
    so one changed record is one finding, not a broken rest of the chain. A
    record whose content changed and whose link was recomputed to match,
    with every later link rewritten too, passes here: only a signed seal
    over a later head (:func:`verify_heads`) catches that.

    ``start``: (first record number, the link before it); a link of None
    trusts the first record held (a time range that begins mid-chain).
    """

    def __init__(self, scale_id: int, start: tuple[int, bytes | None] | None = None) -> None:
        self.scale_id = scale_id
        self.expected, self.prev = start if start is not None else (1, genesis(scale_id))
        self.records = 0  #: records fed that are in the chain

    def feed(self, records: Sequence[Record]) -> list[Finding]:
        """Check the next piece: records whose numbers follow the previous piece's (any order within it)."""
        scale_id = self.scale_id
        findings = []
        chained = sorted((r for r in records if r.record_no is not None), key=lambda r: (r.record_no, r.row_id))
        strays = [r.row_id for r in records if r.record_no is None]
        seen: dict[int, Record] = {}
        for r in chained:  # a second row under a record number is an insert, unless it is the one that verifies
            if r.record_no in seen:
                strays.append(r.row_id)
            else:
                seen[r.record_no] = r
        if strays:
            findings.append(Finding(scale_id, "inserted", tuple(sorted(strays)), "rows that are not in the chain"))
        order = sorted(seen.values(), key=lambda r: r.record_no)
        self.records += len(order)
        expected, prev = self.expected, self.prev
        i = 0
        while i < len(order):
            r = order[i]
            if prev is None:  # the first record of a range: its predecessor is not read
                prev, expected, i = r.link, r.record_no + 1, i + 1
                continue
            if r.record_no > expected:
                gone = tuple(range(expected, r.record_no))
                findings.append(Finding(scale_id, "deleted", gone, f"record(s) {_span(gone)} missing from the chain"))
                prev = r.link  # its predecessor is gone: its own content cannot be checked, only what follows it
                expected, i = r.record_no + 1, i + 1
                continue
            if _link(prev, r.event) == r.link:
                prev, expected, i = r.link, r.record_no + 1, i + 1
                continue
            after = order[i + 1] if i + 1 < len(order) and order[i + 1].record_no == r.record_no + 1 else None
            if after is not None and _link(prev, after.event) == r.link and _link(r.link, r.event) == after.link:
                findings.append(Finding(scale_id, "reordered", (r.record_no, after.record_no),
                                        f"records {r.record_no} and {after.record_no} hold each other's content"))
                prev, expected, i = after.link, after.record_no + 1, i + 2
                continue
            findings.append(Finding(scale_id, "changed", (r.record_no,),
                                    f"record {r.record_no} (row id {r.row_id}) differs from what was linked"))
            prev, expected, i = r.link, r.record_no + 1, i + 1
        self.expected, self.prev = expected, prev
        return findings

    def finish(self, last: int | None) -> list[Finding]:
        """Records missing at the end: ``last`` is the chain's last record number as recorded elsewhere."""
        if last is not None and last >= self.expected:
            gone = tuple(range(self.expected, last + 1))
            return [Finding(self.scale_id, "truncated", gone, f"record(s) {_span(gone)} missing at the chain's end")]
        return []


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


def _link(prev: bytes | None, event: bytes) -> bytes:
    return hashlib.sha256((prev or b"") + event).digest()


def _span(numbers: tuple[int, ...]) -> str:
    return str(numbers[0]) if len(numbers) == 1 else f"{numbers[0]}..{numbers[-1]}"
