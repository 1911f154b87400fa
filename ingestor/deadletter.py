"""The dead-letter store: invalid events as JSON Lines files under ``--dead-letter-dir``.

One line per rejected event (docs/PROTOCOL.md §3)::

    {"time": "2026-11-22T18:00:00.123456+00:00", "source": "front",
     "kind": "future_ts", "reason": "ts ... is more than 24 h in the future",
     "scale_id": 7, "index": 3, "frame": "{...}", "frame_encoding": "text"}

``frame`` is the frame as received (for an event inside an array frame, that
event's own bytes, with ``index`` its position), as UTF-8 text when it is
valid UTF-8, otherwise base64 with ``frame_encoding: "base64"``.

Each process writes its own files (``<source>-<UTC date>-<n>.jsonl``), so
lines of two processes never interleave; a batch of lines goes out in one
write. A file is closed past ``file_bytes`` and the next one started; at
that moment, and at start, the oldest files of the directory (by
modification time, any process's) are deleted until the directory holds at
most ``max_bytes`` (``--dead-letter-max-bytes``). Their lines are counted in
:attr:`DeadLetterWriter.dropped` and logged; the directory's total can
exceed the bound by at most the open files (one per process, each under
``file_bytes``).

A dead letter that cannot be written (a full or failing disk: ENOSPC, EIO)
is never dropped silently, and never stops the process: the whole line is
logged at ERROR instead (the journal keeps it) and counted in
:attr:`DeadLetterWriter.errors` (stats ``dead_letter_errors``). The front
and the writers share this one policy; the event itself was refused either
way (counted ``invalid`` or ``failed``), so nothing accepted is lost.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import msgspec

from .failpoints import failpoint
from .protocol import Rejected

log = logging.getLogger(__name__)


class DeadLetter(msgspec.Struct, omit_defaults=True):
    """One line of a dead-letter file."""

    time: str
    source: str
    kind: str
    reason: str
    frame: str
    frame_encoding: str = "text"
    scale_id: int | None = None
    index: int | None = None
    sqlstate: str | None = None

    def frame_bytes(self) -> bytes:
        """The original bytes of the frame (or event) this line holds."""
        if self.frame_encoding == "base64":
            return base64.b64decode(self.frame)
        return self.frame.encode()


_encoder = msgspec.json.Encoder()


def _frame_text(raw: bytes) -> tuple[str, str]:
    try:
        return raw.decode(), "text"
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode(), "base64"


DEFAULT_MAX_BYTES = 256 * 1024 * 1024
MIN_FILE_BYTES = 64 * 1024


class DeadLetterWriter:
    """Appends dead letters of one process (``source``: ``front``, ``writer-0``…) to its files.

    ``max_bytes`` bounds the directory (see the module docstring); files
    rotate past ``file_bytes`` (default: ``max_bytes / 16``, at least 64 KiB).
    """

    def __init__(self, directory: str | os.PathLike[str], source: str, max_bytes: int = DEFAULT_MAX_BYTES,
                 file_bytes: int | None = None) -> None:
        self.directory = Path(directory)
        self.source = source
        self.max_bytes = max_bytes
        self.file_bytes = file_bytes or max(MIN_FILE_BYTES, max_bytes // 16)
        self.dropped = 0  # dead letters deleted to keep the bound
        self.errors = 0  # dead letters that could not be written (logged instead)
        self._published = (0, 0)  # (dropped, errors) already added to the shared counters
        self._path: Path | None = None
        self._size = 0
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._enforce_bound(0)
        except OSError as e:  # the first write tries again, and logs what it cannot keep
            log.error("Dead-letter directory %s is not usable: %s", self.directory, e)

    def path_for(self, when: dt.datetime, incoming: int) -> Path:
        """The file the next ``incoming`` bytes go to (a new one past ``file_bytes``)."""
        day = f"{self.source}-{when:%Y%m%d}"
        if self._path is None or not self._path.name.startswith(day + "-") or not self._path.exists():
            numbers = [int(n) for p in self.directory.glob(f"{day}-*.jsonl") if (n := p.stem.rsplit("-", 1)[1]).isdigit()]
            self._path = self.directory / f"{day}-{max(numbers, default=1)}.jsonl"
            self._size = self._path.stat().st_size if self._path.exists() else 0
        if self._size and self._size + incoming > self.file_bytes:
            failpoint("deadletter.rotate")
            number = int(self._path.stem.rsplit("-", 1)[1]) + 1
            self._path, self._size = self.directory / f"{day}-{number}.jsonl", 0
            self._enforce_bound(incoming)
        return self._path

    def _enforce_bound(self, incoming: int) -> None:
        """Delete the oldest files until the directory plus ``incoming`` bytes fits ``max_bytes``."""
        files = []
        for p in self.directory.glob("*.jsonl"):
            try:
                st = p.stat()
            except FileNotFoundError:  # another process deleted it meanwhile
                continue
            files.append((st.st_mtime_ns, p, st.st_size))
        total = sum(size for _, _, size in files) + incoming
        for _, path, size in sorted(files):
            if total <= self.max_bytes:
                break
            if path == self._path:
                continue
            try:
                lines = path.read_bytes().count(b"\n")
                path.unlink()
            except FileNotFoundError:
                continue
            total -= size
            self.dropped += lines
            log.warning("Dead-letter store over %d bytes: deleted %s (%d dead letters, the oldest)",
                        self.max_bytes, path.name, lines)

    def count_into(self, counters) -> None:
        """Add what was dropped or not written since the last call to ``counters``' fields
        ``dead_letters_dropped`` and ``dead_letter_errors`` (shared totals outlive a restarted process)."""
        dropped, errors = self._published
        counters["dead_letters_dropped"] += self.dropped - dropped
        counters["dead_letter_errors"] += self.errors - errors
        self._published = (self.dropped, self.errors)

    def write(self, rejected: Iterable[Rejected], sqlstate: str | None = None) -> int:
        """Append one line per rejected event; return how many lines were written to the store.

        Never raises: lines the disk refuses are logged at ERROR, whole, and
        counted in :attr:`errors` (see the module docstring).
        """
        now = dt.datetime.now(dt.UTC)
        stamp = now.isoformat()
        lines = []
        for r in rejected:
            frame, encoding = _frame_text(r.raw)
            letter = DeadLetter(
                time=stamp, source=self.source, kind=r.kind, reason=r.reason, frame=frame,
                frame_encoding=encoding, scale_id=r.scale_id, index=r.position, sqlstate=sqlstate,
            )
            lines.append(_encoder.encode(letter))
        if not lines:
            return 0
        data = b"\n".join(lines) + b"\n"
        try:
            self._append(now, data)
        except OSError as e:
            self.errors += len(lines)
            log.error("Could not write %d dead letter(s) to %s (%s); they follow here instead:\n%s",
                      len(lines), self.directory, e, data.decode(errors="replace").rstrip("\n"))
            return 0
        return len(lines)

    def _append(self, now: dt.datetime, data: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path_for(now, len(data))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            start = os.fstat(fd).st_size
            try:
                failpoint("deadletter.write")
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            except OSError:
                os.ftruncate(fd, start)  # no torn line left for the next write to follow
                raise
        finally:
            os.close(fd)
        self._size += len(data)


def read(directory: str | os.PathLike[str]) -> Iterator[tuple[Path, DeadLetter]]:
    """Every dead letter under ``directory``, file by file in name order.

    A line that is not a dead letter (a torn last line after a crash) is skipped.
    """
    for path in sorted(Path(directory).glob("*.jsonl")):
        yield from read_file(path)


_decoder = msgspec.json.Decoder(DeadLetter)


def read_file(path: Path) -> Iterator[tuple[Path, DeadLetter]]:
    """The dead letters of one file; a torn or foreign line is skipped."""
    with open(path, "rb") as f:
        for line in f:
            try:
                yield path, _decoder.decode(line)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue


def summarize(directory: str | os.PathLike[str]) -> dict:
    """Counts by kind, with the first and last time and one example reason per kind."""
    counts: Counter[str] = Counter()
    first: dict[str, str] = {}
    last: dict[str, str] = {}
    example: dict[str, str] = {}
    for _, letter in read(directory):
        counts[letter.kind] += 1
        first.setdefault(letter.kind, letter.time)
        last[letter.kind] = letter.time
        example.setdefault(letter.kind, letter.reason)
    return {
        kind: {"count": counts[kind], "first": first[kind], "last": last[kind], "example": example[kind]}
        for kind in sorted(counts)
    }
