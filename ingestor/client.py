"""The sender side of the wire protocol, as a small library (docs/PROTOCOL.md).

:class:`Sender` connects to a running ingestor and sends measurements:

- fire-and-forget (``acked=False``): a PUSH socket to the PULL endpoint
  (docs/PROTOCOL.md §2). :meth:`Sender.send` returns once ZeroMQ has queued
  the message; when the ingestor pushes back (every buffer full), it blocks.
- acked (``acked=True``): a DEALER socket to the ROUTER endpoint (§5). Each
  message carries a token; :meth:`Sender.wait` collects the replies and
  re-sends every message still unanswered after ``resend_after_s``, which is
  safe because a re-sent event is stored once (§4). A reply means every
  accepted event of the message is committed.

Events are mappings (or :class:`ingestor.protocol.Event` values) with the
fields of §3; each message holds them as MessagePack (or JSON) arrays of at
most ``events_per_frame`` events, the fastest form for the ingestor to
decode. This module needs only pyzmq and msgspec::

    with Sender("tcp://127.0.0.1:5556", acked=True) as s:
        s.send([{"scale_id": 7, "seq": 1, "ts": 1764064800000, "data_1": "12.5 kg"}])
        s.wait(timeout_s=10)   # raises Unanswered if the service never answered
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import msgspec
import zmq

from .errors import IngestorError
from .security import apply_client

MAX_EVENTS_PER_FRAME = 1000  # docs/PROTOCOL.md §2: an array frame holds at most 1,000 events
MAX_TOKEN_BYTES = 64  # §5
SNDHWM = 1000  # messages queued here before send() blocks (back-pressure, §4)
CLOSE_LINGER_S = 10.0  # how long close() lets queued fire-and-forget messages reach the ingestor
RETRY_SEND_S = 0.1  # a re-send ZeroMQ could not queue (no ingestor connected, queue full) is tried again after this


class Reply(msgspec.Struct, frozen=True):
    """The ingestor's answer to one acked message (docs/PROTOCOL.md §5); counts are events."""

    accepted: int
    duplicates: int
    invalid: int
    error: str | None = None  #: "bad_token" or "no_frames" when the message itself broke §5


class CurveKeys(NamedTuple):
    """A sender's CURVE keys, z85 bytes (40 characters each): ``ingestor keys generate`` makes them (§6)."""

    server_public: bytes  #: the ingestor's public key
    public: bytes  #: this sender's public key, allowed in the ingestor's --curve-clients-dir
    secret: bytes  #: this sender's secret key


class Unanswered(IngestorError):
    """Acked messages got no reply before the deadline; ``tokens`` names them (they may still be stored)."""

    def __init__(self, tokens: Sequence[bytes], timeout_s: float) -> None:
        self.tokens = list(tokens)
        super().__init__(f"{len(self.tokens)} acked message(s) unanswered after {timeout_s:g} s "
                         f"(is the ingestor running and its acked endpoint reachable?)")


_REPLY = msgspec.msgpack.Decoder(Reply)


class Sender:
    """Sends measurements to an ingestor, or several; use as a context manager or call :meth:`close`.

    ``endpoint``: a ZeroMQ address, the PULL endpoint (default port 5555)
    or, with ``acked=True``, the ROUTER endpoint (default port 5556); or a
    list of them, one per ingestor (docs/operations.md#scaling-out-and-failover):
    ZeroMQ then spreads the messages over the ingestors it is connected to
    and leaves out one whose connection is down (``ZMQ_IMMEDIATE``), and a
    re-sent acked message goes to one that answers; with none connected,
    :meth:`send` blocks until one is.
    ``events_per_frame``: 1..1,000. ``fmt``: "msgpack" or "json".
    ``resend_after_s``: acked messages without a reply are re-sent this
    often while :meth:`wait` runs. ``keep_replies``: keep every reply in
    :attr:`replies` (what :meth:`wait` returns); a sender that runs for months
    and takes its replies from :meth:`poll` passes False and keeps none.
    Raises ValueError for a value out of range.
    """

    def __init__(
        self,
        endpoint: str | Sequence[str],
        *,
        acked: bool = False,
        events_per_frame: int = MAX_EVENTS_PER_FRAME,
        fmt: Literal["msgpack", "json"] = "msgpack",
        resend_after_s: float = 5.0,
        curve: CurveKeys | None = None,
        context: zmq.Context | None = None,
        keep_replies: bool = True,
    ) -> None:
        if not 1 <= events_per_frame <= MAX_EVENTS_PER_FRAME:
            raise ValueError(f"events_per_frame must be 1..{MAX_EVENTS_PER_FRAME}, got {events_per_frame!r}")
        if fmt not in ("msgpack", "json"):
            raise ValueError(f"fmt must be 'msgpack' or 'json', got {fmt!r}")
        if resend_after_s <= 0:
            raise ValueError(f"resend_after_s must be > 0, got {resend_after_s!r}")
        endpoints = [endpoint] if isinstance(endpoint, str) else list(endpoint)
        if not endpoints:
            raise ValueError("no endpoint given")
        self.endpoint = endpoint
        self.acked = acked
        self.events_per_frame = events_per_frame
        self.resend_after_s = resend_after_s
        self._encode = msgspec.msgpack.encode if fmt == "msgpack" else msgspec.json.encode
        self._own_context = context is None
        self._ctx = context or zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER if acked else zmq.PUSH)
        self._sock.setsockopt(zmq.SNDHWM, SNDHWM)
        if len(endpoints) > 1:
            # Queue only to connected ingestors: a message queued to one that died waits for
            # its return (or a re-send), while the others could have taken it.
            self._sock.setsockopt(zmq.IMMEDIATE, 1)
        if curve is not None:
            apply_client(self._sock, *curve)
        for e in endpoints:
            self._sock.connect(e)
        # a token unique to this sender: its replies cannot be confused with an earlier run's
        self._prefix = os.urandom(8)
        self._numbers = itertools.count()
        self._unanswered: dict[bytes, tuple[list[bytes], float]] = {}  # token -> (frames, last sent, monotonic)
        self.replies: dict[bytes, Reply] = {}  #: every reply received, by token (none without keep_replies)
        self._keep_replies = keep_replies
        self.events_sent = 0  #: events handed to ZeroMQ, re-sends not counted
        self.messages_sent = 0  #: messages handed to ZeroMQ, re-sends not counted
        self.messages_resent = 0  #: acked messages re-sent for want of a reply (each time)

    # -- sending ------------------------------------------------------------------

    def frames(self, events: Sequence[Mapping[str, Any] | msgspec.Struct]) -> list[bytes]:
        """``events`` encoded as array frames of at most ``events_per_frame`` events each."""
        step = self.events_per_frame
        return [self._encode(events[i : i + step]) for i in range(0, len(events), step)]

    def send(self, events: Iterable[Mapping[str, Any] | msgspec.Struct], *, token: bytes | None = None) -> bytes | None:
        """Send ``events`` as one message; return its token in acked mode, else None.

        Blocks while ZeroMQ's send queue is full (the ingestor pushes back).
        """
        events = events if isinstance(events, list) else list(events)
        if not events:
            return None
        token = self._send(self.frames(events), token)
        self.events_sent += len(events)
        return token

    def send_frames(self, frames: Sequence[bytes], *, token: bytes | None = None) -> bytes | None:
        """Send already encoded frames (§2) as one message; return its token in acked mode, else None.

        ``token``: acked mode only, at most 64 bytes; default: a new unique one.
        """
        return self._send(list(frames), token)

    def _send(self, frames: list[bytes], token: bytes | None) -> bytes | None:
        if not self.acked:
            if token is not None:
                raise ValueError("a token is for acked mode (acked=True) only")
            self._sock.send_multipart(frames)
        else:
            if token is None:
                token = self._prefix + next(self._numbers).to_bytes(8, "big")
            elif len(token) > MAX_TOKEN_BYTES:
                raise ValueError(f"token of {len(token)} bytes is over {MAX_TOKEN_BYTES} (docs/PROTOCOL.md §5)")
            self._sock.send_multipart([token, *frames])
            self._unanswered[token] = (frames, time.monotonic())
        self.messages_sent += 1
        return token

    # -- acked mode ---------------------------------------------------------------

    @property
    def unanswered(self) -> list[bytes]:
        """Tokens of the acked messages sent and not answered yet."""
        return list(self._unanswered)

    def poll(self, timeout_s: float = 0.0) -> dict[bytes, Reply]:
        """Take the replies that arrive within ``timeout_s``; re-send what is overdue. Returns the new replies."""
        if not self.acked:
            raise ValueError("replies exist in acked mode only (acked=True)")
        new: dict[bytes, Reply] = {}
        deadline = time.monotonic() + timeout_s
        while True:
            self._resend_overdue()
            left = deadline - time.monotonic()
            wait = min(max(left, 0.0), self._next_resend_in())
            if not self._sock.poll(int(wait * 1000)):
                if left <= 0:
                    return new
                continue
            while True:
                try:
                    token, body = self._sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if self._unanswered.pop(token, None) is not None:  # a re-sent message may be answered twice
                    new[token] = _REPLY.decode(body)
                    if self._keep_replies:
                        self.replies[token] = new[token]
            if not self._unanswered or time.monotonic() >= deadline:
                return new

    def wait(self, timeout_s: float = 30.0) -> dict[bytes, Reply]:
        """Wait until every acked message is answered, re-sending; return every reply so far (without
        ``keep_replies``: none).

        Raises :class:`Unanswered` (naming the tokens) when some are still
        unanswered after ``timeout_s``; they stay in :attr:`unanswered` and a
        later :meth:`wait` goes on re-sending them.
        """
        deadline = time.monotonic() + timeout_s
        while self._unanswered and (left := deadline - time.monotonic()) > 0:
            self.poll(left)
        if self._unanswered:
            raise Unanswered(self.unanswered, timeout_s)
        return self.replies

    def _resend_overdue(self) -> None:
        now = time.monotonic()
        for token, (frames, sent_at) in list(self._unanswered.items()):
            if now - sent_at >= self.resend_after_s:
                try:  # never block wait(): with no ingestor to take it, try again in RETRY_SEND_S
                    self._sock.send_multipart([token, *frames], zmq.NOBLOCK)
                except zmq.Again:
                    self._unanswered[token] = (frames, now - self.resend_after_s + RETRY_SEND_S)
                    return
                self._unanswered[token] = (frames, now)
                self.messages_resent += 1

    def _next_resend_in(self) -> float:
        if not self._unanswered:
            return self.resend_after_s
        oldest = min(sent_at for _, sent_at in self._unanswered.values())
        return max(0.0, oldest + self.resend_after_s - time.monotonic())

    # -- lifetime -----------------------------------------------------------------

    def close(self, linger_s: float = CLOSE_LINGER_S) -> None:
        """Close the socket, letting queued fire-and-forget messages go for up to ``linger_s``."""
        if self._sock.closed:
            return
        self._sock.close(linger=int(linger_s * 1000) if not self.acked else 0)
        if self._own_context:
            self._ctx.term()

    def __enter__(self) -> Sender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
