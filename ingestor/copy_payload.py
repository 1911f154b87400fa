"""Binary COPY payloads for ``weighing_logs``, built from ring records in bulk.

The format is PostgreSQL's binary COPY (docs: "COPY", section "Binary
Format"): a 19-byte header, then per row an int16 field count and per field
an int32 byte length (-1 for NULL) followed by the value in the type's binary
send format, then the int16 trailer -1. All integers are big-endian.

Per row we send 9 fields, in :data:`COLUMNS` order:

    scale_id     int4    4 bytes
    seq          int8    8 bytes
    measured_at  timestamptz  int8 microseconds since 2000-01-01 UTC
    created_at   timestamptz  same
    data_1..5    jsonb   version byte 1, then the JSON text {"val":"<text>"}
    record_no    int8    8 bytes, or NULL with the alibi chain off
    link         bytea   32 bytes (SHA-256), or NULL with the chain off

Every row is laid out at its widest (each text as wide as the batch's
longest in its column) in a uint8 matrix by column slices, then one boolean
mask drops the unused text bytes: no per-row Python. A text holding a quote, a backslash or a control character
needs JSON escaping, which can make it longer; the rare rows holding one are
encoded one by one with msgspec and appended (row order does not matter to
COPY).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import msgspec
import numpy as np

from .protocol import DATA_FIELDS, MAX_TEXT_BYTES

COLUMNS = ("scale_id", "seq", "measured_at", "created_at", *DATA_FIELDS, "record_no", "link")
COPY_SQL = f"COPY weighing_logs ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"

HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
TRAILER = b"\xff\xff"
PG_EPOCH_US = 946_684_800 * 1_000_000  # 2000-01-01 UTC in Unix microseconds

_FIXED = np.dtype(
    [
        ("nfields", ">i2"),
        ("len_scale_id", ">i4"),
        ("scale_id", ">i4"),
        ("len_seq", ">i4"),
        ("seq", ">i8"),
        ("len_measured", ">i4"),
        ("measured", ">i8"),
        ("len_created", ">i4"),
        ("created", ">i8"),
    ]
)
_JSON_PREFIX = b'\x01{"val":"'
_JSON_SUFFIX = b'"}'


class Chained(NamedTuple):
    """The alibi chain's columns of a batch (:func:`ingestor.alibi.chain`), one entry per record."""

    record_no: np.ndarray  #: int64, (n,)
    link: np.ndarray  #: uint8, (n, 32): each record's SHA-256 link

    def take(self, index: np.ndarray) -> Chained:
        return Chained(self.record_no[index], self.link[index])


def build(records: np.ndarray, created_us: int, chained: Chained | None = None) -> bytes:
    """Return the whole binary COPY payload (header to trailer) for ``records``.

    ``records`` is a ``protocol.RECORD_DTYPE`` array of any length;
    ``created_us`` (Unix microseconds) becomes every row's ``created_at``;
    ``chained``: the rows' record numbers and links, None for NULLs (the
    chain off).
    """
    n = len(records)
    text = records["text"].view(np.uint8).reshape(n, len(DATA_FIELDS), MAX_TEXT_BYTES)
    widths = np.maximum(records["text_len"].max(axis=0, initial=-1), 0).tolist()
    needs_escape = np.zeros(n, bool)
    for k, width in enumerate(widths):  # only up to the column's longest text: the rest is padding
        if width:
            needs_escape |= _NEEDS_ESCAPE[text[:, k, :width]].any(axis=1)
    if not needs_escape.any():
        return b"".join((HEADER, _build_clean(records, created_us, chained), TRAILER))
    clean = ~needs_escape
    parts = [HEADER, _build_clean(records[clean], created_us, chained.take(clean) if chained else None)]
    for i in np.flatnonzero(needs_escape).tolist():
        parts.append(_build_row(records[i], created_us, None if chained is None else
                                (int(chained.record_no[i]), chained.link[i].tobytes())))
    parts.append(TRAILER)
    return b"".join(parts)


_NULL_CHAIN = struct.pack(">ii", -1, -1)
_LINK_BYTES = 32


def _build_clean(records: np.ndarray, created_us: int, chained: Chained | None) -> bytes:
    n = len(records)
    if n == 0:
        return b""
    fixed = np.empty(n, _FIXED)
    fixed["nfields"] = len(COLUMNS)
    fixed["len_scale_id"] = 4
    fixed["scale_id"] = records["scale_id"]
    fixed["len_seq"] = 8
    fixed["seq"] = records["seq"]
    fixed["len_measured"] = 8
    fixed["measured"] = records["measured_us"] - PG_EPOCH_US
    fixed["len_created"] = 8
    fixed["created"] = created_us - PG_EPOCH_US

    text_len = records["text_len"].astype(np.int32)  # (n, 5), -1 for NULL
    text = records["text"].view(np.uint8).reshape(n, len(DATA_FIELDS), MAX_TEXT_BYTES)
    field_len = np.where(text_len < 0, -1, text_len + len(_JSON_PREFIX) + len(_JSON_SUFFIX))

    # Each text column is as wide as this batch's longest text in it, not 64
    # bytes: plant texts are short, and every byte of width costs every row.
    widths = np.maximum(text_len.max(axis=0), 0).tolist()
    framing = 4 + len(_JSON_PREFIX) + len(_JSON_SUFFIX)
    chain_width = 4 + 8 + 4 + _LINK_BYTES if chained is not None else len(_NULL_CHAIN)
    row_width = _FIXED.itemsize + sum(widths) + framing * len(DATA_FIELDS) + chain_width
    rows = np.empty((n, row_width), np.uint8)
    keep = np.ones((n, row_width), bool)
    rows[:, : _FIXED.itemsize] = fixed.view(np.uint8).reshape(n, _FIXED.itemsize)
    at = _FIXED.itemsize
    for k, width in enumerate(widths):
        present = text_len[:, k, None] >= 0
        rows[:, at : at + 4] = field_len[:, k].astype(">i4").view(np.uint8).reshape(n, 4)
        at += 4
        rows[:, at : at + len(_JSON_PREFIX)] = np.frombuffer(_JSON_PREFIX, np.uint8)
        keep[:, at : at + len(_JSON_PREFIX)] = present
        at += len(_JSON_PREFIX)
        rows[:, at : at + width] = text[:, k, :width]
        keep[:, at : at + width] = np.arange(width) < text_len[:, k, None]
        at += width
        rows[:, at : at + len(_JSON_SUFFIX)] = np.frombuffer(_JSON_SUFFIX, np.uint8)
        keep[:, at : at + len(_JSON_SUFFIX)] = present
        at += len(_JSON_SUFFIX)
    if chained is None:
        rows[:, at:] = np.frombuffer(_NULL_CHAIN, np.uint8)
    else:
        tail = np.empty(n, _CHAIN_DTYPE)
        tail["len_record_no"], tail["record_no"] = 8, chained.record_no
        tail["len_link"], tail["link"] = _LINK_BYTES, chained.link
        rows[:, at:] = tail.view(np.uint8).reshape(n, _CHAIN_DTYPE.itemsize)
    return rows[keep].tobytes()


_CHAIN_DTYPE = np.dtype([("len_record_no", ">i4"), ("record_no", ">i8"), ("len_link", ">i4"),
                         ("link", np.uint8, (_LINK_BYTES,))])


_ROW_FIXED = struct.Struct(">hiiiqiqiq")
# Bytes JSON must escape inside a string: control characters, '"' and '\\'.
# NUL never occurs inside a text (protocol rejects it), so NUL is padding.
_NEEDS_ESCAPE = np.zeros(256, bool)
_NEEDS_ESCAPE[1:0x20] = True
_NEEDS_ESCAPE[[0x22, 0x5C]] = True


def _build_row(record: np.void, created_us: int, chained: tuple[int, bytes] | None) -> bytes:
    """One row the slow way, for texts that need JSON escaping."""
    out = [
        _ROW_FIXED.pack(
            len(COLUMNS),
            4, int(record["scale_id"]),
            8, int(record["seq"]),
            8, int(record["measured_us"]) - PG_EPOCH_US,
            8, created_us - PG_EPOCH_US,
        )
    ]
    for k in range(len(DATA_FIELDS)):
        length = int(record["text_len"][k])
        if length < 0:
            out.append(b"\xff\xff\xff\xff")
            continue
        value = b'\x01{"val":' + msgspec.json.encode(bytes(record["text"][k][:length]).decode()) + b"}"
        out.append(struct.pack(">i", len(value)) + value)
    out.append(_NULL_CHAIN if chained is None else struct.pack(">iqi", 8, chained[0], _LINK_BYTES) + chained[1])
    return b"".join(out)


# -- binary array parameters --------------------------------------------------

INT4_ARRAY_OID, INT8_ARRAY_OID, LINK_ARRAY_OID = 1007, 1016, 1001  # the last: bytea[] of 32-byte values
TEXT_ARRAY_OID, _TEXT_OID = 1009, 25
_ARRAY_HEADER = struct.Struct(">iiiii")  # ndim, has nulls, element oid, length, lower bound
_LENGTH = struct.Struct(">i")
_NULL = b"\xff\xff\xff\xff"  # an element's length -1
_ELEMENTS = {
    INT4_ARRAY_OID: (23, np.dtype([("len", ">i4"), ("v", ">i4")])),
    INT8_ARRAY_OID: (20, np.dtype([("len", ">i4"), ("v", ">i8")])),
    LINK_ARRAY_OID: (17, np.dtype([("len", ">i4"), ("v", np.uint8, (_LINK_BYTES,))])),
}


class BinaryArray:
    """An int4[], int8[], bytea[] (of 32-byte links, ``values`` uint8 (n, 32)) or text[] (:meth:`texts`) query
    parameter already in PostgreSQL's binary array format.

    Adapting a 5,000-element Python list costs a writer more than the rest of
    its statement; numpy lays out the same bytes in one pass. Passed to
    psycopg with the dumper of :func:`register_dumpers` (docs: "array_send").
    """

    __slots__ = ("oid", "data")

    def __init__(self, values: np.ndarray, oid: int) -> None:
        element_oid, dtype = _ELEMENTS[oid]
        body = np.empty(len(values), dtype)
        body["len"] = dtype["v"].itemsize
        body["v"] = values
        self.oid = oid
        self.data = _ARRAY_HEADER.pack(1, 0, element_oid, len(values), 1) + body.tobytes()

    @classmethod
    def texts(cls, records: np.ndarray, k: int) -> BinaryArray:
        """``data_{k+1}`` of ``records`` (RECORD_DTYPE) as a text[] parameter, NULL where ``text_len`` is -1.

        For the UPSERT and a small batch's statement: psycopg adapting five
        lists of str looked at every element to choose a dumper, then dumped
        each one.
        Texts are UTF-8 (checked at decode) and without NUL, as text requires.
        """
        lens = records["text_len"][:, k].tolist()
        raw = records["text"][:, k].tolist()  # S64 drops the NUL padding
        parts = [_NULL if n < 0 else _LENGTH.pack(n) + b for b, n in zip(raw, lens)]
        array = cls.__new__(cls)  # variable-length elements: laid out here, not by __init__'s fixed-size dtype
        array.oid = TEXT_ARRAY_OID
        array.data = _ARRAY_HEADER.pack(1, int(min(lens, default=0) < 0), _TEXT_OID, len(raw), 1) + b"".join(parts)
        return array


def link_array(links: list[bytes]) -> BinaryArray:
    """A bytea[] parameter of 32-byte links (the alibi chain's)."""
    return BinaryArray(np.frombuffer(b"".join(links), np.uint8).reshape(len(links), _LINK_BYTES), LINK_ARRAY_OID)


def register_dumpers(context) -> None:
    """Teach a psycopg connection (or any adapt context) to send :class:`BinaryArray` as is."""
    from psycopg.adapt import Dumper
    from psycopg.pq import Format

    class BinaryArrayDumper(Dumper):
        format = Format.BINARY

        def dump(self, obj: BinaryArray) -> bytes:
            return obj.data

        def get_key(self, obj: BinaryArray, format) -> tuple:
            return (BinaryArray, obj.oid)

        def upgrade(self, obj: BinaryArray, format) -> Dumper:
            dumper = BinaryArrayDumper(BinaryArray)
            dumper.oid = obj.oid
            return dumper

    context.adapters.register_dumper(BinaryArray, BinaryArrayDumper)
