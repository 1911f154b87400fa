"""The alibi chain (issue 15, first layer): each scale's stored events linked by SHA-256, record by record.

Scale terminals keep an "alibi memory" for weighings that are legal for
trade (WELMEC 7.2, extension L): every registered weighing gets a record
number and a checksum, and a verifier shows when a record changed. Here each
stored event gets its scale's next record number and a link::

    link(n) = SHA-256(link(n-1) || canonical(event n))
    link(0) = SHA-256(GENESIS || scale_id as int32 LE)   (no chain can pass for another scale's)

``canonical`` is a fixed-width encoding of the event as received
(:data:`CANON_DTYPE`, 353 bytes): scale_id int32, seq int64, ``measured_at``
and ``created_at`` as int64 µs since 1970 (all little-endian), then per data
field its byte length as int8 (-1 for NULL) and its UTF-8 text zero-padded
to 64 bytes (docs/PROTOCOL.md §3: at most 64 bytes). Fixed width, so a
writer builds a whole batch's encodings from ring records with numpy
(:func:`canonical_from_records`) and a verifier the same bytes from stored
rows (:func:`canonical_from_rows`); only the SHA-256 calls run per event
(:func:`chain`).

This module is the chain's arithmetic; where the links are stored, the
heads kept, the seals signed and the verifier run are the next layers. Nothing
is stored with this encoding yet, so it may still change: on 5,000 records it
took 5.3 ms to encode and 4.7 ms to link (3.6 ms of it SHA-256 over 385 bytes,
7 blocks, per event), against ~5 ms for the batch's COPY payload; a
variable-width encoding (2 blocks for a typical event) is the next step
toward issue 15's ≤ 10 % throughput cost.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Iterable, Sequence

import numpy as np

from .protocol import DATA_FIELDS, MAX_TEXT_BYTES

GENESIS = b"scale-ingestor alibi v1"
LINK_BYTES = 32

CANON_DTYPE = np.dtype(
    [("scale_id", "<i4"), ("seq", "<i8"), ("measured_us", "<i8"), ("created_us", "<i8")]
    + [item for k in range(1, len(DATA_FIELDS) + 1)
       for item in ((f"len_{k}", "i1"), (f"text_{k}", f"S{MAX_TEXT_BYTES}"))],
    align=False,
)
CANON_BYTES = CANON_DTYPE.itemsize  # 353

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def genesis(scale_id: int) -> bytes:
    """The link before a scale's first record."""
    return hashlib.sha256(GENESIS + int(scale_id).to_bytes(4, "little", signed=True)).digest()


def canonical_from_records(records: np.ndarray, created_us: int) -> np.ndarray:
    """The canonical encodings of ring records (``protocol.RECORD_DTYPE``, length n): a CANON_DTYPE array, length n.

    ``created_us``: the batch's ``created_at`` in Unix µs (as copy_payload.build
    writes it). Text bytes past each length are zeroed, whatever the slot held.
    """
    n = len(records)
    out = np.zeros(n, CANON_DTYPE)
    out["scale_id"], out["seq"] = records["scale_id"], records["seq"]
    out["measured_us"], out["created_us"] = records["measured_us"], created_us
    lengths = records["text_len"]
    text = records["text"].view(np.uint8).reshape(n, len(DATA_FIELDS), MAX_TEXT_BYTES)
    kept = np.arange(MAX_TEXT_BYTES) < np.maximum(lengths, 0)[:, :, None]
    text = np.where(kept, text, 0).astype(np.uint8)
    for k in range(len(DATA_FIELDS)):
        out[f"len_{k + 1}"] = lengths[:, k]
        out[f"text_{k + 1}"] = text[:, k, :].copy().view(f"S{MAX_TEXT_BYTES}").reshape(n)
    return out


def canonical_from_rows(rows: Iterable[Sequence]) -> np.ndarray:
    """The canonical encodings of stored rows ``(scale_id, seq, measured_at, created_at, val_1, …, val_5)``.

    Times are aware datetimes, the vals str or None (``data_k->>'val'``).
    Raises ValueError for a val over 64 bytes of UTF-8 (no valid event has one).
    """
    rows = list(rows)
    out = np.zeros(len(rows), CANON_DTYPE)
    for i, (scale_id, seq, measured_at, created_at, *vals) in enumerate(rows):
        out[i]["scale_id"], out[i]["seq"] = scale_id, seq
        out[i]["measured_us"], out[i]["created_us"] = _us(measured_at), _us(created_at)
        for k, val in enumerate(vals, 1):
            if val is None:
                out[i][f"len_{k}"] = -1
                continue
            data = val.encode()
            if len(data) > MAX_TEXT_BYTES:
                raise ValueError(f"data_{k} of scale {scale_id} seq {seq} is {len(data)} bytes, over {MAX_TEXT_BYTES}")
            out[i][f"len_{k}"], out[i][f"text_{k}"] = len(data), data
    return out


def _us(moment: dt.datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def chain(canon: np.ndarray, heads: dict[int, bytes]) -> list[bytes]:
    """The links of ``canon`` (CANON_DTYPE, in chain order within each scale), one per event, in input order.

    ``heads``: each scale's last link (absent: its genesis); updated in place
    to the new last links. Scales interleave freely: each event extends its
    own scale's chain (bench/test_micro.py times a batch).
    """
    sha256 = hashlib.sha256
    raw = canon.tobytes()
    scales = canon["scale_id"].tolist()
    links = []
    for i, scale in enumerate(scales):
        prev = heads.get(scale)
        if prev is None:
            prev = genesis(scale)
        link = sha256(prev + raw[i * CANON_BYTES:(i + 1) * CANON_BYTES]).digest()
        heads[scale] = link
        links.append(link)
    return links
