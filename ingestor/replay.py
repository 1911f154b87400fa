"""``ingestor dead-letters replay``: re-submit the dead letters that are valid now, in acked mode.

A dead letter keeps the bytes of its event (docs/operations.md "Dead
letters"). Once the cause is mended (a sender's bug fixed, a clock set
right), the letters that pass the rules of docs/PROTOCOL.md §3 now go back
through the service's acked endpoint with :class:`ingestor.client.Sender`,
so each is stored once like any other event (a letter already stored is a
duplicate). A letter leaves the store only when the service has answered for
it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import msgspec

from . import deadletter
from .client import CurveKeys, Sender, Unanswered
from .protocol import RecordBuilder, decode_frame

RESEND_S = 5.0  # a letter without an answer is sent again this often


class Outcome(msgspec.Struct, frozen=True):
    """What a replay did, in dead letters."""

    answered: int  #: re-submitted and answered: committed, duplicate, or dead-lettered again by the service
    still_invalid: int  #: kept: still breaks a rule
    unanswered: int  #: kept: the service did not answer within the timeout


def replay(directory: Path, endpoint: str, timeout_s: float = 30.0, curve: CurveKeys | None = None) -> Outcome:
    """Re-submit the valid dead letters under ``directory`` to the acked ``endpoint``.

    The files are first renamed to ``*.replaying``, out of the service's
    way, so its processes start new ones instead of appending to files being
    rewritten (an interrupted replay's ``*.replaying`` files are taken too).
    Letters still invalid and letters without an answer within ``timeout_s``
    are appended back to ``*.jsonl`` files. Raises OSError when the
    directory cannot be read or written.
    """
    for path in sorted(directory.glob("*.jsonl")):
        os.replace(path, path.with_suffix(".replaying"))
    letters: list[tuple[Path, deadletter.DeadLetter]] = []
    for work in sorted(directory.glob("*.replaying")):
        letters += deadletter.read_file(work)
    now_us = time.time_ns() // 1000
    valid = {i.to_bytes(8, "big"): i for i, (_, letter) in enumerate(letters)
             if not decode_frame(letter.frame_bytes(), RecordBuilder(), now_us)[1]}
    unanswered: set[int] = set()
    if valid:
        with Sender(endpoint, acked=True, resend_after_s=RESEND_S, curve=curve) as sender:
            for token, i in valid.items():
                sender.send_frames([letters[i][1].frame_bytes()], token=token)
            try:
                sender.wait(timeout_s)
            except Unanswered as e:
                unanswered = {valid[t] for t in e.tokens}
    keep: dict[Path, list[bytes]] = {}
    encoder = msgspec.json.Encoder()
    kept = set(range(len(letters))) - set(valid.values()) | unanswered
    for i in sorted(kept):
        work, letter = letters[i]
        keep.setdefault(work.with_suffix(".jsonl"), []).append(encoder.encode(letter) + b"\n")
    for path, lines in keep.items():
        with open(path, "ab") as f:  # one write; the service may have started this file meanwhile
            f.write(b"".join(lines))
    for work in directory.glob("*.replaying"):
        work.unlink()
    return Outcome(len(valid) - len(unanswered), len(letters) - len(valid), len(unanswered))
