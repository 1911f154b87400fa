"""The invariant checker shared by the fault tests: what was sent against what the service kept.

From what a test sender sent (and what acked mode acknowledged), the
database, the dead letters, the log and the stats, :func:`check` asserts the
promise of docs/operations.md#guarantees:

- every accepted event is stored exactly once (no (scale_id, seq) twice),
  with the content that was sent; or it was rejected by PostgreSQL and is
  dead-lettered with its reason (in a dead-letter file, or in the log when
  the disk refused the file); or it is counted ``lost`` and logged with its
  number: never silently missing;
- every acknowledged event is stored (docs/PROTOCOL.md §5);
- the identity of docs/operations.md#stats holds, with nothing pending once the service is idle;
- each scale's latest state is its history's greatest (ts, seq).
"""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import psycopg

from ingestor import deadletter
from ingestor.client import Sender, Unanswered

START_MS = 1_700_000_000_000


def identity_holds(s: dict) -> bool:
    """docs/operations.md#stats: every received event is exactly one of these (``lost`` counted too, v1.1)."""
    return s["received_events"] == (s["invalid"] + s["duplicates"] + s["persisted"] + s["failed"] + s["pending"]
                                    + s.get("lost", 0))


class Sent:
    """What a test sender sent: valid events by key, and the keys PostgreSQL is set up to refuse."""

    def __init__(self) -> None:
        self.events: dict[tuple[int, int], dict] = {}  # valid by the wire rules
        self.refused_by_db: set[tuple[int, int]] = set()  # valid, but a CHECK constraint refuses them
        self.invalid = 0  # events the front must dead-letter
        self.acknowledged: set[tuple[int, int]] = set()


def plant_messages(sent: Sent, messages: int = 40, per_message: int = 50, scales: int = 20,
                   refused_scale: int | None = 666, invalid_every: int = 10, junk: int = 0) -> list[list[bytes]]:
    """Acked-mode messages ``[token, frame]``: MessagePack arrays of events, a few refused or invalid.

    ``junk``: that many more invalid events per message, each ~300 bytes of dead letter.
    """
    out = []
    seq = dict.fromkeys(range(1, scales + 1), 0)
    for m in range(messages):
        events = []
        for k in range(per_message):
            scale = 1 + (m * per_message + k) % scales
            seq[scale] += 1
            event = {"scale_id": scale, "seq": seq[scale], "ts": START_MS + seq[scale] * 10 + scale,
                     "data_1": f"{scale}.{seq[scale]} kg", "data_2": "°C µg é"}
            events.append(event)
            sent.events[(scale, seq[scale])] = event
        if refused_scale is not None and m % invalid_every == 3:
            event = {"scale_id": refused_scale, "seq": m, "ts": START_MS + m}
            events.append(event)
            sent.events[(refused_scale, m)] = event
            sent.refused_by_db.add((refused_scale, m))
        if invalid_every and m % invalid_every == 5:
            events.append({"scale_id": 1, "seq": 10**9 + m, "ts": START_MS + 10**12})  # > 24 h ahead
            sent.invalid += 1
        for j in range(junk):
            events.append({"scale_id": 2, "seq": 10**10 + m * junk + j, "ts": START_MS + 10**12, "data_1": "x" * 60})
            sent.invalid += 1
        out.append([f"m{m}".encode(), msgspec.msgpack.encode(events)])
    return out


def send_acked(endpoint: str, messages: list[list[bytes]], sent: Sent, resend_s: float = 3.0,
               deadline_s: float = 120.0) -> None:
    """Send every ``[token, frame]`` with :class:`ingestor.client.Sender`, which re-sends what has no reply.

    Marks the valid events of every answered message acknowledged. Raises
    AssertionError when some message is still unanswered after ``deadline_s``.
    """
    by_token = {m[0]: m for m in messages}
    with Sender(endpoint, acked=True, resend_after_s=resend_s) as sender:
        for token, message in by_token.items():
            sender.send_frames(message[1:], token=token)
        try:
            sender.wait(deadline_s)
        except Unanswered as e:
            raise AssertionError(str(e)) from None
        finally:
            for token in sender.replies:
                for event in msgspec.msgpack.decode(by_token[token][1]):
                    if (key := (event["scale_id"], event["seq"])) in sent.events:  # not the invalid ones
                        sent.acknowledged.add(key)


def dead_lettered_keys(directory: Path, log_text: str) -> dict[tuple[int, int], str]:
    """(scale_id, seq) -> kind of every dead letter, from the files and from the log's fallback lines."""
    found = {}
    letters = [letter for _, letter in deadletter.read(directory)] if directory.exists() else []
    decoder = msgspec.json.Decoder(deadletter.DeadLetter)
    for line in log_text.splitlines():
        if line.startswith('{"time"'):
            try:
                letters.append(decoder.decode(line))
            except (msgspec.DecodeError, msgspec.ValidationError):
                pass
    for letter in letters:
        try:
            event = msgspec.json.decode(letter.frame_bytes())
        except (msgspec.DecodeError, ValueError):
            continue
        if isinstance(event, dict) and "scale_id" in event and "seq" in event:
            found[(event["scale_id"], event["seq"])] = letter.kind
    return found


def logged_losses(log_text: str) -> int:
    """The sum of the numbers in the log's ``LOST n …`` lines."""
    return sum(int(n) for n in re.findall(r"LOST (\d+) ", log_text))


def check(dsn: str, stats: dict, sent: Sent, dead_letter_dir: Path, log_text: str, *, runs: int = 1) -> dict:
    """Assert every invariant of the module docstring; return a summary.

    ``stats`` are the figures of the last run, taken when it was idle;
    ``log_text`` the logs of every run; ``runs`` how many service runs wrote
    into this database (the identity is checked for the last one only).
    """
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT scale_id, seq, (extract(epoch FROM measured_at) * 1000)::bigint, "
                            "data_1->>'val', data_2->>'val' FROM weighing_logs").fetchall()
        states = conn.execute("SELECT scale_id, seq FROM scale_current_states").fetchall()
        latest = conn.execute("SELECT DISTINCT ON (scale_id) scale_id, seq FROM weighing_logs "
                              "ORDER BY scale_id, measured_at DESC, seq DESC").fetchall()
    stored: dict[tuple[int, int], tuple] = {}
    doubled = []
    for scale, seq, ts, d1, d2 in rows:
        if (scale, seq) in stored:
            doubled.append((scale, seq))
        stored[(scale, seq)] = (ts, d1, d2)
    assert not doubled, f"stored twice: {doubled[:10]} ({len(doubled)} keys)"
    foreign = set(stored) - set(sent.events)
    assert not foreign, f"stored but never sent: {sorted(foreign)[:10]}"
    for key, (ts, d1, d2) in stored.items():
        e = sent.events[key]
        assert (ts, d1, d2) == (e["ts"], e.get("data_1"), e.get("data_2")), f"{key} stored as {(ts, d1, d2)}, sent {e}"
    assert not (set(stored) & sent.refused_by_db), "a row the CHECK constraint refuses was stored"
    letters = dead_lettered_keys(dead_letter_dir, log_text)
    not_lettered = [k for k in sent.refused_by_db if k in sent.acknowledged and letters.get(k) != "rejected_by_database"]
    # a letter may be gone with a file deleted to keep --dead-letter-max-bytes: counted, never silently
    assert len(not_lettered) <= stats.get("dead_letters_dropped", 0), \
        f"refused by PostgreSQL but in no dead letter (file or log) and none dropped: {not_lettered}"
    missing = [k for k in sent.acknowledged - sent.refused_by_db if k not in stored]
    assert not missing, f"acknowledged but not stored: {missing[:10]} ({len(missing)})"
    assert stats["pending"] == 0, f"not idle: {stats['pending']} pending"
    assert identity_holds(stats), f"docs/operations.md#stats identity broken: {stats}"
    assert stats.get("lost", 0) <= logged_losses(log_text), "events counted lost without a LOST log line"
    assert sorted(states) == sorted(latest), "latest states differ from the history's greatest (ts, seq)"
    return {"stored": len(stored), "dead_lettered": len(letters), "lost": stats.get("lost", 0),
            "duplicates": stats["duplicates"], "failed": stats["failed"]}
