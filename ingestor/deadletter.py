"""The dead-letter store: invalid events as JSON Lines files under ``--dead-letter-dir``.

One line per rejected event (SPEC §1.1)::

    {"time": "2026-11-22T18:00:00.123456+00:00", "source": "front",
     "kind": "future_ts", "reason": "ts ... is more than 24 h in the future",
     "scale_id": 7, "index": 3, "frame": "{...}", "frame_encoding": "text"}

``frame`` is the frame as received (for an event inside an array frame, that
event's own bytes, with ``index`` its position), as UTF-8 text when it is
valid UTF-8, otherwise base64 with ``frame_encoding: "base64"``.

Each process writes its own file (``<source>-<UTC date>.jsonl``), so lines of
two processes never interleave; a batch of lines goes out in one write.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

import msgspec

from .protocol import Rejected


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


class DeadLetterWriter:
    """Appends dead letters of one process (``source``: ``front``, ``writer-0``…) to its file."""

    def __init__(self, directory: str | os.PathLike[str], source: str) -> None:
        self.directory = Path(directory)
        self.source = source
        self.directory.mkdir(parents=True, exist_ok=True)

    def path_for(self, when: dt.datetime) -> Path:
        return self.directory / f"{self.source}-{when:%Y%m%d}.jsonl"

    def write(self, rejected: Iterable[Rejected], sqlstate: str | None = None) -> int:
        """Append one line per rejected event; return how many lines were written.

        Raises OSError when the directory cannot be written (the caller counts it).
        """
        now = dt.datetime.now(dt.timezone.utc)
        stamp = now.isoformat()
        lines = []
        for r in rejected:
            frame, encoding = _frame_text(r.raw)
            letter = DeadLetter(
                time=stamp, source=self.source, kind=r.kind, reason=r.reason, frame=frame,
                frame_encoding=encoding, scale_id=r.scale_id, index=r.index, sqlstate=sqlstate,
            )
            lines.append(_encoder.encode(letter))
        if not lines:
            return 0
        with open(self.path_for(now), "ab") as f:
            f.write(b"\n".join(lines) + b"\n")
        return len(lines)


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
