"""The front process: ZeroMQ PULL socket in, ring records out (the spool when it is full).

The loop: move what the spool holds into the ring while there is room; wait
for a message, drain what else is queued (up to :data:`MAX_BATCH_BYTES`),
decode every frame of the batch into one
:class:`~ingestor.protocol.RecordBuilder`, dead-letter the invalid events,
and place the valid records into the ring's lanes.

Placing, ring first and then the spool, is :mod:`ingestor.placement`; while
it waits for room the front reads nothing, so the sockets' receive
high-water marks fill and ZeroMQ holds the senders back. A stop request
(SIGTERM from the supervisor) ends the loop after the batch in hand is
placed; what the spool holds stays there for the next start, which replays
it before any new frame's events.

Pacing: each wake of the front costs tens of µs of CPU before it does any
work (the kernel's wake-up, ZeroMQ's mailbox, cold caches), more than
decoding a single-event frame. While frames come more than twice per
``pace_s`` (the group-commit interval, at most 50 ms), the front
sleeps until ``pace_s`` after its last wake and then takes everything
queued meanwhile in one wake (at 300 single-event frames/s about one wake
per twelve frames, and a writer's batch per wake), as long as a paced wake
finds two frames or more. While acked messages wait for their replies it
looks every ``ACK_POLL_MS`` at most, so pacing does not hold a reply back. A
quiet plant's frames are taken as they come. The
frames of a paced wake are stamped (``received_ns``) with the moment of the
front's previous look, the earliest they can have arrived, and the writers
begin a batch at most the group-commit interval after its oldest record's
stamp (:meth:`ingestor.ring.Lane.wait_batch`): pacing moves a frame's wait
from the ring into ZeroMQ's queue and does not lengthen its latency bound.

Acked mode (docs/PROTOCOL.md §5): messages from the ROUTER socket are decoded the same
way; their records carry the message's tag, and :class:`~ingestor.acks.Replies`
says when the writers have committed all of them, so the reply can go out.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import numpy as np
import zmq

from .acks import MAX_AWAITING, AckTable, Replies
from .child import StopFlag, drain_wakeup
from .deadletter import DeadLetterWriter
from .errors import BootError, ConfigError, SpoolError
from .failpoints import failpoint
from .placement import Placement
from .protocol import RECORD_DTYPE, RecordBuilder, Rejected, decode_frame, split_events
from .ring import Ring
from .roles import FrontArgs
from .security import CurveServer
from .spool import Spool
from .stats import Counters

log = logging.getLogger(__name__)

# Bytes drained from the socket into one batch: large enough that the
# per-batch costs (numpy array, ring publish) vanish, small enough that the
# records of one batch fit comfortably in a lane.
MAX_BATCH_BYTES = 4 * 1024 * 1024
POLL_MS = 100  # how often an idle front looks at its stop flag when no signal wakes it (a front in a thread)
# The same with the wakeup pipe of its process's signals: a SIGTERM wakes it at once, so this bounds only noticing
# a dead parent. Each idle look costs ~0.1-0.2 ms of CPU on the 2-core VM (bench/README.md, "The second session
# on the quiet plant").
IDLE_POLL_MS = 1000
SPOOL_POLL_MS = 10  # while the spool holds events, how often the front tries to move them to the ring
SPOOL_GATHER_S = 0.05  # while spooling, how long the front gathers frames into one spool block
ACK_POLL_MS = 10  # while acked messages wait, how often the front looks for their commits
MAX_TOKEN_BYTES = 64  # docs/PROTOCOL.md §5
# Frames over --max-frame-bytes are refused here, counted and dead-lettered.
# ZMQ_MAXMSGSIZE is the hard ceiling above that: libzmq drops the sender's
# connection on a bigger frame (with the frames queued behind it) and tells
# the application nothing, so it is kept for frames no sender should send.
ZMQ_MAXMSGSIZE_FACTOR = 4
REFUSED_KEEP_BYTES = 1024  # of a refused frame, kept in its dead letter
RCVHWM = 1000  # messages ZeroMQ queues before it pushes back on senders


class Front:
    """Receives frames on ``bind`` (and ``ack_bind``) and places their records; ``run()`` returns when ``stopping()`` says so."""

    def __init__(
        self,
        *,
        placement: Placement,
        counters: np.ndarray,
        bind: str,
        max_frame_bytes: int,
        dead_letters: DeadLetterWriter,
        stopping: Callable[[], bool],
        ack_bind: str | None = None,
        acks: AckTable | None = None,
        curve: CurveServer | None = None,
        pace_s: float = 0.0,
        wakeup_fd: int | None = None,
    ) -> None:
        self.placement = placement
        self.curve = curve
        self.ack_bind = ack_bind
        self.replies = Replies(acks) if acks is not None else None
        self.counters = counters
        self.bind = bind
        self.max_frame_bytes = max_frame_bytes
        self.dead_letters = dead_letters
        self.stopping = stopping
        self.pace_s = pace_s
        # readable when a signal comes (child.StopFlag): then an idle front can sleep IDLE_POLL_MS, not POLL_MS
        self.wakeup_fd = wakeup_fd

    @property
    def acked_replies(self) -> Replies:
        """The replies awaiting commits in acked mode; RuntimeError for a front made without ``acks``."""
        if self.replies is None:
            raise RuntimeError("acked input needs the ack table (Front(acks=...))")
        return self.replies

    def run(self) -> None:
        self.placement.open()
        ctx = zmq.Context()
        if self.curve is not None:
            self.curve.start(ctx)  # the ZAP handler must be there before a socket binds
        pull = ctx.socket(zmq.PULL)
        router = ctx.socket(zmq.ROUTER) if self.ack_bind else None
        try:
            if router is not None:
                # room for a reply to every message that may await one, so none is dropped
                # while a sender is slow to read (ROUTER drops at the high-water mark)
                router.setsockopt(zmq.SNDHWM, MAX_AWAITING)
            listeners = [(pull, self.bind)] + ([(router, self.ack_bind)] if router and self.ack_bind else [])
            for sock, endpoint in listeners:
                sock.setsockopt(zmq.RCVHWM, RCVHWM)
                sock.setsockopt(zmq.MAXMSGSIZE, ZMQ_MAXMSGSIZE_FACTOR * self.max_frame_bytes)
                if self.curve is not None:
                    self.curve.apply(sock, endpoint)
                try:
                    sock.bind(endpoint)
                except zmq.ZMQError as e:  # the service halts: a restart would not free the port
                    raise BootError(f"cannot bind {endpoint}: {e}") from None
            log.info("Front listening on %s (PULL)%s%s", self.bind,
                     f" and {self.ack_bind} (ROUTER, acked mode)" if router is not None else "",
                     ", CURVE" if self.curve is not None else "")
            self.counters["listening"] = 1
            self._loop(pull, router)
            self.placement.stop()
        finally:
            pull.close(linger=0)
            if router is not None:
                router.close(linger=0)
            if self.curve is not None:
                self.curve.stop()
            ctx.term()
            self.placement.close()

    def _loop(self, pull: zmq.Socket[bytes], router: zmq.Socket[bytes] | None) -> None:
        """Wait for frames, take them, place their records, until ``stopping()`` (the module doc, "Pacing")."""
        poller = zmq.Poller()
        poller.register(pull, zmq.POLLIN)
        idle_ms = POLL_MS
        if self.wakeup_fd is not None:
            poller.register(self.wakeup_fd, zmq.POLLIN)
            idle_ms = IDLE_POLL_MS
        pacing = False
        woke = time.monotonic()
        looked_ns = time.time_ns()  # the last look at the sockets: frames left after it came later
        while not self.stopping():
            self.placement.refill()
            if router is not None:
                self.reply_committed(router)
                # too many awaiting replies would reuse their rows: stop reading acked input
                poller.register(router, 0 if self.acked_replies.full() else zmq.POLLIN)
            spooling = self.placement.spooling
            paced = pacing and not spooling
            if paced:
                # acked senders wait for their replies: while any wait, a look for commits every ACK_POLL_MS
                pace_s = min(self.pace_s, ACK_POLL_MS / 1000) if self.replies else self.pace_s
                time.sleep(max(0.0, woke + pace_s - time.monotonic()))
                ready = dict(poller.poll(0))
            else:
                ready = dict(poller.poll(SPOOL_POLL_MS if spooling else ACK_POLL_MS if self.replies else idle_ms))
            if self.wakeup_fd is not None and self.wakeup_fd in ready:
                drain_wakeup(self.wakeup_fd)
            previous, woke, woke_ns = woke, time.monotonic(), time.time_ns()
            # a paced wake's frames queued since the last look: stamped with it, the earliest they can have come
            received_ns, looked_ns = (looked_ns if paced else woke_ns), woke_ns
            gather = SPOOL_GATHER_S if spooling else 0.0
            taken = 0
            for sock, acked in ((pull, False), (router, True)):
                if sock is not None and sock in ready:
                    messages = _receive(sock, gather)
                    failpoint("front.after_receive")
                    self.accept(messages, acked=acked, received_ns=received_ns)
                    taken += len(messages)
            # Pace while it saves wakes: from two frames within half a pace, as long as a paced
            # wake finds two or more; not when a pace's frames would near the high-water mark.
            if taken >= RCVHWM // 2 or not self.pace_s:
                pacing = False
            else:
                pacing = taken >= 2 if paced else taken > 0 and woke - previous < self.pace_s / 2

    def accept(self, messages: list[list[bytes]], acked: bool = False, received_ns: int | None = None) -> None:
        """Decode ``messages`` (each a list of frames) and place their valid events (ring, else spool).

        With ``acked=True`` each message is ``[identity, token, frame, ...]``
        from the ROUTER socket (docs/PROTOCOL.md §5): its records get the
        message's tag and its reply waits in :attr:`replies` until they are committed.
        ``received_ns`` (ns since the epoch) stamps the records: when the frames came, by default now.
        """
        if received_ns is None:
            received_ns = time.time_ns()
        batch = _Batch(received_ns // 1000, self.max_frame_bytes, self._refuse)
        tagged: list[tuple[int, int, int]] = []  # (tag, first record, end record)
        for message in messages:
            if not acked:
                batch.decode(message)
                continue
            start, invalid_before = len(batch.builder), len(batch.rejected)
            identity, token, frames = message[0], message[1] if len(message) > 1 else b"", message[2:]
            if len(token) > MAX_TOKEN_BYTES:  # §5 v1.1: each event dead-lettered, counted invalid
                error: str | None = "bad_token"
                batch.reject_all(frames, lambda raw, index: _bad_token(token, raw, index))  # noqa: B023 (called here)
            else:
                error = None if frames else "no_frames"
                batch.decode(frames)
            tag = self.acked_replies.add(identity, token, len(batch.builder) - start, len(batch.rejected) - invalid_before,
                                   error, (f"{r.kind}: {r.reason}" for r in batch.rejected[invalid_before:]))
            tagged.append((tag, start, len(batch.builder)))
        c = self.counters
        # Held and invalid are counted before received: a stats reader may see an
        # event counted twice for a moment, never missing, so once `received_events`
        # shows a batch, the other side of the identity of docs/operations.md#stats already does too.
        self.placement.hold(len(batch.builder))
        c["invalid"] += len(batch.rejected)
        c["received_frames"] += batch.frames
        c["received_events"] += batch.events
        if acked:
            c["acked_messages"] += len(messages)
        if batch.rejected:
            self.dead_letters.write(batch.rejected)
            self.dead_letters.count_into(c)
        if len(batch.builder):
            records = batch.builder.build(received_ns)
            for tag, start, end in tagged:
                records["tag"][start:end] = tag
            self.placement.place(records)

    def _refuse(self, frame: bytes) -> Rejected:
        """A frame over ``max_frame_bytes``: one invalid event, dead-lettered with its first KiB."""
        self.counters["refused_frames"] += 1
        reason = f"frame of {len(frame)} bytes is over --max-frame-bytes {self.max_frame_bytes}"
        return Rejected("frame_too_large", reason, None, frame[:REFUSED_KEEP_BYTES], None)

    def reply_committed(self, router: zmq.Socket[bytes]) -> None:
        """Answer every acked message whose accepted events are all committed (docs/PROTOCOL.md §5)."""
        replies = self.acked_replies
        for reply in replies.ready():
            router.send_multipart(reply, zmq.NOBLOCK)
            self.counters["ack_replies"] += 1
        # added, not stored: the shared total outlives a restarted front, whose own count starts at 0
        self.counters["ack_expired"] += replies.expired
        replies.expired = 0

class _Batch:
    """The frames of one received batch, decoded: valid events as columns, invalid ones with their reasons."""

    def __init__(self, now_us: int, max_frame_bytes: int, refuse: Callable[[bytes], Rejected]) -> None:
        self.builder = RecordBuilder()
        self.rejected: list[Rejected] = []
        self.frames = self.events = 0
        self._now_us = now_us
        self._max_frame_bytes = max_frame_bytes
        self._refuse = refuse

    def decode(self, frames: list[bytes]) -> None:
        for frame in frames:
            self.frames += 1
            if len(frame) > self._max_frame_bytes:
                self.rejected.append(self._refuse(frame))
                self.events += 1
                continue
            n, bad = decode_frame(frame, self.builder, self._now_us)
            self.events += n
            if bad:
                self.rejected += bad

    def reject_all(self, frames: list[bytes], why: Callable[[bytes, int | None], Rejected]) -> None:
        """Every event of ``frames`` is invalid for a reason of the message, not its own."""
        for frame in frames:
            raws = split_events(frame)
            self.rejected += [why(raw, None if raw is frame else index) for index, raw in enumerate(raws)]
            self.events += len(raws)
        self.frames += len(frames)


def _bad_token(token: bytes, raw: bytes, index: int | None) -> Rejected:
    reason = f"acked-mode token is {len(token)} bytes, more than {MAX_TOKEN_BYTES} (docs/PROTOCOL.md §5)"
    return Rejected("bad_token", reason, None, raw, index)


def _receive(sock: zmq.Socket[bytes], gather_s: float) -> list[list[bytes]]:
    """The messages queued on ``sock``, up to MAX_BATCH_BYTES, gathering for ``gather_s`` more seconds.

    Gathering makes spool blocks (one fsync each) bigger while spooling.
    Non-blocking receives until ZeroMQ says ``EAGAIN``: one exception per
    drain, where asking ``ZMQ_EVENTS`` before each message cost more (pyzmq
    makes an enum of every answer).
    """
    messages: list[list[bytes]] = []
    size = 0
    deadline = time.monotonic() + gather_s
    while size < MAX_BATCH_BYTES:
        try:
            message = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            left = deadline - time.monotonic()
            if left <= 0 or not sock.poll(int(left * 1000)):
                break
            continue
        messages.append(message)
        size += sum(map(len, message))
    return messages


def run_front(args: FrontArgs, stop: Callable[[], bool]) -> None:
    """Child entry (see :mod:`ingestor.child`): attach to the shared blocks and run the front until ``stop()``.

    Raises BootError when an endpoint cannot be bound, the spool cannot be
    opened or the CURVE keys cannot be read.
    """
    with args.shared.attached() as (ring, counters, acks):
        counters.front["pid"] = os.getpid()
        _serve(args, ring, counters, acks, stop)  # its views into the blocks are gone when it returns
    log.info("Front stopped")


def _serve(args: FrontArgs, ring: Ring, counters: Counters, acks: AckTable, stop: Callable[[], bool]) -> None:
    front_counts = counters.front

    def refused() -> None:
        front_counts["refused_clients"] += 1  # only the ZAP thread writes this count

    try:
        curve = (CurveServer(args.curve.secret_key_file, args.curve.clients_dir, refused, args.curve.extra_clients)
                 if args.curve is not None else None)
        spool = Spool(args.spool_dir, RECORD_DTYPE, args.spool_max_bytes)
    except (SpoolError, ConfigError) as e:
        raise BootError(str(e)) from None
    placement = Placement(ring=ring, spool=spool, counters=front_counts, stopping=stop)
    front = Front(
        placement=placement, counters=front_counts, bind=args.bind, max_frame_bytes=args.max_frame_bytes,
        dead_letters=DeadLetterWriter(args.dead_letters.directory, "front", args.dead_letters.max_bytes),
        stopping=stop, ack_bind=args.ack_bind, acks=acks, curve=curve, pace_s=args.pace_ms / 1000,
        wakeup_fd=stop.wakeup_fd if isinstance(stop, StopFlag) else None,
    )
    front.run()  # a ZeroMQ error once bound propagates: child.main exits 1 and the supervisor restarts the front
