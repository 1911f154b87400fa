"""The on-disk spool: a bounded FIFO of ring records for when the ring is full.

When the writers cannot keep up (the database is down, or slower than the
senders) the ring fills; accepted events then go to the spool instead of
being dropped (docs/PROTOCOL.md §4), and come back into the ring, in order, as soon as
it has room. Only when the spool is full too does the front stop reading.

The spool is a directory of *segment* files, read in the order of their
numbers. A segment is a 32-byte header (magic ``b"INGESTOR-SPOOL\\n"``, format
version, record size, a checksum of the record layout) followed by *blocks*,
one per :meth:`Spool.append`::

    block header, 16 bytes: magic b"SPLB", records u32, payload bytes u32,
                            CRC-32 of (records, payload bytes, payload)
    payload:                the records, RECORD_DTYPE, little-endian

Every append is written with one ``write`` and made durable with ``fsync``
before it returns (the directory too when a segment is created), so what
:meth:`Spool.append` accepted survives a power cut. A power cut during an
append leaves a torn block at the end of a segment: opening the spool checks
every block's checksum and cuts the file at the first bad one, logging the
bytes cut; a torn or corrupt block is never replayed.

Reading takes the oldest block (:meth:`peek`) and drops it once its records
are in the ring (:meth:`consume`). The ``position`` file holds, for each
segment read in part, the offset of its first unread block; a segment is
deleted once read to its end; a crash between
moving a block to the ring and recording that replays the block, whose
events the writers then count as duplicates: stored once either way.
"""

from __future__ import annotations

import builtins
import errno
import logging
import os
import struct
import zlib
from pathlib import Path

import msgspec
import numpy as np

from .errors import SpoolError
from .failpoints import failpoint

log = logging.getLogger(__name__)

SEGMENT_MAGIC = b"INGESTOR-SPOOL\n"
SEGMENT_VERSION = 1
_SEGMENT_HEADER = struct.Struct("<15sBQII")  # magic, version, record size, layout checksum, reserved
_SEGMENT_HEADER_PAD = 32
BLOCK_MAGIC = b"SPLB"
_BLOCK_HEADER = struct.Struct("<4sIII")  # magic, records, payload bytes, crc32
SEGMENT_BYTES = 64 * 1024 * 1024  # a new segment is started past this size
_FIRST_SEGMENT = 1 << 32  # room below for segments put in front of the queue
_POSITION_FILE = "position"


class _Block(msgspec.Struct, array_like=True):
    segment: int
    offset: int  # of the block header in the segment file
    records: int

    def size(self, itemsize: int) -> int:
        return _BLOCK_HEADER.size + self.records * itemsize


def _layout_checksum(dtype: np.dtype) -> int:
    return zlib.crc32(repr(dtype.descr).encode())


def _block_crc(records: int, payload: bytes | memoryview) -> int:
    return zlib.crc32(payload, zlib.crc32(struct.pack("<II", records, len(payload))))


class Spool:
    """A bounded FIFO of ``dtype`` records in ``directory`` (created if missing).

    ``max_bytes`` bounds the files' total size; :meth:`has_room` says whether
    an append fits. Opening scans every segment (see the module docstring):
    afterwards :attr:`events` is what an earlier run left, :attr:`cut_bytes`
    what was cut as torn or corrupt. Raises SpoolError when a segment was
    written with another record layout (an upgrade: replaying it would be
    garbage) or the directory cannot be used.

    Not thread-safe, and only one process may have a directory open at a time.
    """

    def __init__(self, directory: str | os.PathLike[str], dtype: np.dtype, max_bytes: int,
                 segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = Path(directory)
        self.dtype = dtype
        self.itemsize = dtype.itemsize
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.events = 0
        self.cut_bytes = 0
        self._blocks: list[_Block] = []
        self._sizes: dict[int, int] = {}  # segment -> file size
        self._active: int | None = None  # segment appended to
        self._active_fd = -1
        self._read_from: dict[int, int] = {}
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._scan()
        except OSError as e:
            raise SpoolError(f"cannot use spool directory {str(self.directory)!r}: {e}") from None
        # Segment numbers are never reused in a run: a segment whose unlink failed
        # may still be on disk, and a new one must not collide with it.
        self._newest = max(self._sizes, default=_FIRST_SEGMENT - 1)
        self._oldest = min(self._sizes, default=_FIRST_SEGMENT)

    # -- opening ------------------------------------------------------------

    def _segment_path(self, segment: int) -> Path:
        return self.directory / f"{segment:020d}.spool"

    def _scan(self) -> None:
        self._read_from = self._read_position()
        segments = sorted(int(p.stem) for p in self.directory.glob("*.spool") if p.stem.isdigit())
        for segment in segments:
            self._scan_segment(segment, self._read_from.get(segment, 0))
        self._read_from = {k: v for k, v in self._read_from.items() if k in self._sizes}

    def _read_position(self) -> dict[int, int]:
        """Segment -> offset of its first unread block, for segments read in part."""
        try:
            return msgspec.json.decode((self.directory / _POSITION_FILE).read_bytes(), type=dict[int, int])
        except FileNotFoundError:
            return {}
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("Spool position file in %s is unreadable; replaying from the start", self.directory)
            return {}

    def _scan_segment(self, segment: int, start: int) -> None:
        path = self._segment_path(segment)
        with open(path, "rb") as f:
            data = f.read()
        self._check_segment_header(path, data)
        offset = _SEGMENT_HEADER_PAD
        blocks = []
        while offset < len(data):
            n = self._valid_block_at(data, offset)
            if n is None:
                break
            if offset >= start:  # blocks before the read position were replayed already
                blocks.append(_Block(segment, offset, n))
            offset += _BLOCK_HEADER.size + n * self.itemsize
        if offset < len(data):
            cut = len(data) - offset
            self.cut_bytes += cut
            log.warning("Spool segment %s: cut %d bytes of a torn or corrupt block at offset %d "
                        "(never replayed)", path, cut, offset)
            os.truncate(path, offset)
        if not blocks:
            path.unlink()
            return
        self._blocks += blocks
        self._sizes[segment] = offset
        self.events += sum(b.records for b in blocks)

    def _check_segment_header(self, path: Path, data: bytes) -> None:
        if len(data) < _SEGMENT_HEADER_PAD:
            return  # torn at creation: treated as empty, cut below
        magic, version, itemsize, layout, _ = _SEGMENT_HEADER.unpack_from(data)
        if magic != SEGMENT_MAGIC:
            raise SpoolError(f"{path} is not a spool segment (bad magic {magic!r}); move it out of the spool directory")
        if version != SEGMENT_VERSION or itemsize != self.itemsize or layout != _layout_checksum(self.dtype):
            raise SpoolError(
                f"{path} was written by another version of the ingestor (format {version}, record size "
                f"{itemsize}); replay it with that version or move it out of the spool directory"
            )

    def _valid_block_at(self, data: bytes, offset: int) -> int | None:
        """The record count of the block at ``offset``, or None when it is torn or corrupt."""
        if offset + _BLOCK_HEADER.size > len(data):
            return None
        magic, records, nbytes, crc = _BLOCK_HEADER.unpack_from(data, offset)
        start = offset + _BLOCK_HEADER.size
        if magic != BLOCK_MAGIC or nbytes != records * self.itemsize or start + nbytes > len(data):
            return None
        if _block_crc(records, memoryview(data)[start : start + nbytes]) != crc:
            return None
        return int(records)

    @property
    def bytes(self) -> int:
        """Disk space the spool's segment files take now (a segment is freed once read to its end)."""
        return sum(self._sizes.values())

    # -- writing ------------------------------------------------------------

    def block_bytes(self, records: int) -> int:
        """Bytes an append of ``records`` records takes on disk (a new segment's header included)."""
        return _SEGMENT_HEADER_PAD + _BLOCK_HEADER.size + records * self.itemsize

    def has_room(self, records: int) -> bool:
        """Whether appending ``records`` records keeps the spool within ``max_bytes``."""
        return self.bytes + self.block_bytes(records) <= self.max_bytes

    def room_for(self) -> int:
        """How many records one append may take now within ``max_bytes`` (0 when full)."""
        return max(0, (self.max_bytes - self.bytes - self.block_bytes(0)) // self.itemsize)

    def append(self, records: np.ndarray, *, first: bool = False) -> None:
        """Write ``records`` as one block and fsync it; they are read after everything held now.

        With ``first=True`` they are read *before* everything held now (the
        supervisor puts back what was left in the ring at shutdown, which is
        older than the spool's content). The size bound is the caller's to
        check (:meth:`has_room`); an append never refuses. Raises SpoolError
        when the disk write fails (nothing of the block is then counted).
        """
        if not len(records):
            return
        payload = np.ascontiguousarray(records, dtype=self.dtype).tobytes()
        n = len(records)
        block = _BLOCK_HEADER.pack(BLOCK_MAGIC, n, len(payload), _block_crc(n, payload)) + payload
        try:
            if first:
                self._oldest -= 1
                segment = self._oldest
                fd = self._create_segment(segment)
                try:
                    self._write(fd, segment, block, n)
                except OSError:
                    self._forget_segment(segment)
                    raise
                finally:
                    os.close(fd)
                return
            if self._active is None or self._sizes[self._active] >= self.segment_bytes:
                self._close_active()
                self._newest += 1
                self._active_fd = self._create_segment(self._newest)
                self._active = self._newest
            try:
                self._write(self._active_fd, self._active, block, n)
            except OSError:
                # The file's end is unknown now (a write or fsync failed): append to a new
                # segment next time; a torn tail here is cut when the spool is next opened.
                if self._sizes[self._active] == _SEGMENT_HEADER_PAD:
                    self._forget_segment(self._active)
                self._close_active()
                raise
        except OSError as e:
            raise SpoolError(f"cannot write {n} events to the spool in {self.directory}: {e}") from None

    def _create_segment(self, segment: int) -> int:
        """Create segment ``segment`` with its header, durably; on failure nothing of it is left."""
        path = self._segment_path(segment)
        failpoint("spool.create_segment")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o640)
        try:
            header = _SEGMENT_HEADER.pack(SEGMENT_MAGIC, SEGMENT_VERSION, self.itemsize, _layout_checksum(self.dtype), 0)
            if os.write(fd, header.ljust(_SEGMENT_HEADER_PAD, b"\0")) != _SEGMENT_HEADER_PAD:
                raise OSError(errno.ENOSPC, "short write of a segment header")
            _fsync_dir(self.directory)  # the new file's name must survive a power cut too
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self._sizes[segment] = _SEGMENT_HEADER_PAD
        return fd

    def _forget_segment(self, segment: int) -> None:
        """Remove a segment that holds no block (its creation or first write failed)."""
        self._sizes.pop(segment, None)
        try:
            self._segment_path(segment).unlink(missing_ok=True)
        except OSError as e:  # an empty segment left behind is dropped at the next open
            log.warning("Could not remove empty spool segment %s: %s", self._segment_path(segment), e)

    def _write(self, fd: int, segment: int, block: builtins.bytes, records: int) -> None:
        offset = self._sizes[segment]
        try:
            failpoint("spool.write")
            written = os.write(fd, block)
            if written != len(block):  # a full disk
                raise OSError(errno.ENOSPC, f"short write ({written} of {len(block)} bytes)")
            failpoint("spool.fsync")
            os.fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, offset)  # cut what was written: the block was not accepted
            except OSError:
                pass  # cut at the next open instead: its checksum cannot hold
            raise
        entry = _Block(segment, offset, records)
        if self._blocks and segment < self._blocks[0].segment:
            self._blocks.insert(0, entry)
        else:
            self._blocks.append(entry)
        self._sizes[segment] = offset + len(block)
        self.events += records

    # -- reading ------------------------------------------------------------

    @property
    def oldest_records(self) -> int:
        """Records in the oldest block (what :meth:`peek` returns), 0 when empty."""
        return self._blocks[0].records if self._blocks else 0

    def peek(self) -> np.ndarray | None:
        """The oldest block's records (a fresh array), or None when the spool is empty.

        Raises OSError when the block cannot be read whole (it stays the oldest).
        """
        if not self._blocks:
            return None
        b = self._blocks[0]
        failpoint("spool.read")
        with open(self._segment_path(b.segment), "rb") as f:
            f.seek(b.offset + _BLOCK_HEADER.size)
            payload = f.read(b.records * self.itemsize)
        if len(payload) != b.records * self.itemsize:  # the file was cut under us: never half a block
            raise OSError(errno.EIO, f"short read of a spool block ({len(payload)} of {b.records * self.itemsize} bytes)")
        return np.frombuffer(payload, dtype=self.dtype).copy()

    def consume(self) -> None:
        """Drop the oldest block (its records are in the ring now)."""
        self._drop(0)

    def requeue_oldest(self, rest: np.ndarray) -> None:
        """Replace the oldest block by ``rest``, the part of it not taken into the ring.

        ``rest`` is written first (a crash in between replays both: duplicates,
        never a loss). Raises SpoolError like :meth:`append`.
        """
        self.append(rest, first=True)
        self._drop(1 if len(rest) else 0)

    def _drop(self, index: int) -> None:
        b = self._blocks.pop(index)
        self.events -= b.records
        left = [x.offset for x in self._blocks if x.segment == b.segment]
        if left:
            self._read_from[b.segment] = min(left)
        else:  # that segment is read to its end
            self._read_from.pop(b.segment, None)
            if b.segment == self._active:
                self._close_active()
            del self._sizes[b.segment]
            try:
                failpoint("spool.unlink")
                self._segment_path(b.segment).unlink(missing_ok=True)
            except OSError as e:
                log.warning("Could not delete spool segment %s (%s); the next start replays it: "
                            "duplicates, never a loss", self._segment_path(b.segment), e)
        self._write_position()

    def _write_position(self) -> None:
        """Record the read position; a failure only means blocks are replayed: duplicates, never a loss."""
        path = self.directory / _POSITION_FILE
        try:
            failpoint("spool.position")
            if not self._read_from:
                path.unlink(missing_ok=True)
                return
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(msgspec.json.encode({str(k): v for k, v in self._read_from.items()}))
            os.replace(tmp, path)  # no fsync: replaying a block again only yields duplicates
        except OSError as e:
            log.warning("Could not record the spool's read position (%s); the next start replays "
                        "blocks already written: duplicates, never a loss", e)

    def _close_active(self) -> None:
        if self._active_fd >= 0:
            os.close(self._active_fd)
        self._active, self._active_fd = None, -1

    def close(self) -> None:
        self._close_active()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
