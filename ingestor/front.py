"""The front process: ZeroMQ PULL socket in, ring records out (the spool when it is full).

The loop: move what the spool holds into the ring while there is room; wait
for a message, drain what else is queued (up to :data:`MAX_BATCH_BYTES`),
decode every frame of the batch into one
:class:`~ingestor.protocol.RecordBuilder`, dead-letter the invalid events,
and place the valid records into their lanes (``scale_id % lanes``).

Placing (docs/PROTOCOL.md §4): records go into the ring while the spool is empty and
their lane has room. When a lane is full the front waits for its writer as
long as the writers keep freeing slots (they are only slower than the
senders: back-pressure); once they have freed nothing for
:data:`SPILL_AFTER_S` (the database is gone), the rest, and everything
received while the spool holds anything, is appended to the spool (one
fsync'd block per received batch), so each scale's events reach the writers
in arrival order. When the ring and the spool are both full the front waits
for the writers, and stops reading; the socket's receive high-water mark then fills and ZeroMQ
stops the senders. Nothing received and accepted is ever dropped. A stop
request (SIGTERM from the supervisor) ends the loop after the batch in hand
is placed; what the spool holds stays there for the next start, which
replays it before any new frame's events.

Acked mode (docs/PROTOCOL.md §5): messages from the ROUTER socket are decoded the same
way; their records carry the message's tag, and :class:`~ingestor.acks.Replies`
says when the writers have committed all of them, so the reply can go out.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable

import numpy as np
import zmq

from .acks import MAX_AWAITING, AckTable, Replies
from .children import FrontArgs
from .deadletter import DeadLetterWriter
from .errors import BootError, ConfigError, SpoolError
from .failpoints import failpoint
from .protocol import RECORD_DTYPE, RecordBuilder, Rejected, decode_frame, split_events
from .ring import Ring
from .security import CurveServer
from .shm import attached
from .spool import Spool
from .stats import Counters

log = logging.getLogger(__name__)

# Bytes drained from the socket into one batch: large enough that the
# per-batch costs (numpy array, ring publish) vanish, small enough that the
# records of one batch fit comfortably in a lane.
MAX_BATCH_BYTES = 4 * 1024 * 1024
POLL_MS = 100  # how often an idle front looks at its stop flag
SPOOL_POLL_MS = 10  # while the spool holds events, how often the front tries to move them to the ring
SPOOL_GATHER_S = 0.05  # while spooling, how long the front gathers frames into one spool block
SPACE_WAIT_S = 0.05  # one wait for ring space when ring and spool are full
SPILL_AFTER_S = 0.5  # a full ring whose writers free nothing for this long spills to the spool
SPOOL_RETRY_S = 1.0  # after a failed spool write, how long before the disk is tried again
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
    """Receives frames on ``bind`` and fills ``ring`` (then ``spool``); ``run()`` returns when ``stopping()`` says so."""

    def __init__(
        self,
        *,
        ring: Ring,
        spool: Spool,
        counters: np.ndarray,
        bind: str,
        max_frame_bytes: int,
        dead_letters: DeadLetterWriter,
        stopping: Callable[[], bool],
        ack_bind: str | None = None,
        acks: AckTable | None = None,
        curve: CurveServer | None = None,
    ) -> None:
        self.ring = ring
        self.curve = curve
        self.ack_bind = ack_bind
        self.replies = Replies(acks) if acks is not None else None
        self.spool = spool
        self.counters = counters
        self.bind = bind
        self.max_frame_bytes = max_frame_bytes
        self.dead_letters = dead_letters
        self.stopping = stopping
        self._carry: list[np.ndarray] | None = None  # the oldest spool block, split by lane, as yet unplaced
        self._replay_left = 0
        self._spool_failing = False  # the last append failed (logged once until one succeeds)
        self._spool_retry_at = 0.0  # monotonic time before which the spool is not tried again
        self._read_failing = False  # the last read of a spool block failed (logged once until one succeeds)
        self._held = 0  # received records in hand, in no ring or spool yet

    def run(self) -> None:
        self._open_spool()
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
            for sock, endpoint in ((pull, self.bind), (router, self.ack_bind)):
                if sock is not None:
                    sock.setsockopt(zmq.RCVHWM, RCVHWM)
                    sock.setsockopt(zmq.MAXMSGSIZE, ZMQ_MAXMSGSIZE_FACTOR * self.max_frame_bytes)
                    if self.curve is not None:
                        self.curve.apply(sock, endpoint)
                    sock.bind(endpoint)
            log.info("Front listening on %s (PULL)%s%s", self.bind,
                     f" and {self.ack_bind} (ROUTER, acked mode)" if router is not None else "",
                     ", CURVE" if self.curve is not None else "")
            poller = zmq.Poller()
            poller.register(pull, zmq.POLLIN)
            while not self.stopping():
                self.refill_from_spool()
                if router is not None:
                    self.reply_committed(router)
                    # too many awaiting replies would reuse their rows: stop reading acked input
                    poller.register(router, 0 if self.replies.full() else zmq.POLLIN)
                spooling = self.spool.events > 0
                timeout = SPOOL_POLL_MS if spooling else ACK_POLL_MS if self.replies else POLL_MS
                ready = dict(poller.poll(timeout))
                gather = SPOOL_GATHER_S if spooling else 0.0
                if pull in ready:
                    messages = _receive(pull, gather)
                    failpoint("front.after_receive")
                    self.accept(messages)
                if router is not None and router in ready:
                    messages = _receive(router, gather)
                    failpoint("front.after_receive")
                    self.accept(messages, acked=True)
            self._requeue_carry()
        finally:
            pull.close(linger=0)
            if router is not None:
                router.close(linger=0)
            if self.curve is not None:
                self.curve.stop()
            ctx.term()
            self.spool.close()

    def accept(self, messages: list[list[bytes]], acked: bool = False) -> None:
        """Decode ``messages`` (each a list of frames) and place their valid events (ring, else spool).

        With ``acked=True`` each message is ``[identity, token, frame, ...]``
        from the ROUTER socket (docs/PROTOCOL.md §5): its records get the message's tag
        and its reply waits in ``_awaiting`` until they are committed.
        """
        received_ns = time.time_ns()
        now_us = received_ns // 1000
        builder = RecordBuilder()
        rejected: list[Rejected] = []
        frames = events = 0
        tagged: list[tuple[int, int, int]] = []  # (tag, first record, end record)
        for message in messages:
            if acked:
                start, invalid_before = len(builder), len(rejected)
                identity, token, message = message[0], message[1] if len(message) > 1 else b"", message[2:]
                error = None
                if len(token) > MAX_TOKEN_BYTES:  # docs/PROTOCOL.md §5 v1.1: each event dead-lettered, counted invalid
                    error = "bad_token"
                    for frame in message:
                        raws = split_events(frame)
                        rejected += [_bad_token(token, raw, None if raw is frame else index)
                                     for index, raw in enumerate(raws)]
                        events += len(raws)
                    frames += len(message)
                    message = []
                elif not message:
                    error = "no_frames"
            for frame in message:
                frames += 1
                if len(frame) > self.max_frame_bytes:
                    rejected.append(self._refuse(frame))
                    events += 1
                    continue
                n, bad = decode_frame(frame, builder, now_us)
                events += n
                if bad:
                    rejected += bad
            if acked:
                tag = self.replies.add(identity, token, len(builder) - start, len(rejected) - invalid_before, error)
                tagged.append((tag, start, len(builder)))
        c = self.counters
        # Held and invalid are counted before received: a stats reader may see an
        # event counted twice for a moment, never missing, so once `received_events`
        # shows a batch, the other side of the identity of docs/operations.md#stats already does too.
        self._hold(len(builder))
        c["invalid"] += len(rejected)
        c["received_frames"] += frames
        c["received_events"] += events
        if acked:
            c["acked_messages"] += len(messages)
        if rejected:
            self.dead_letters.write(rejected)
            self.dead_letters.count_into(c)
        if len(builder):
            records = builder.build(received_ns)
            for tag, start, end in tagged:
                records["tag"][start:end] = tag
            self.place(records)

    def _refuse(self, frame: bytes) -> Rejected:
        """A frame over ``max_frame_bytes``: one invalid event, dead-lettered with its first KiB."""
        self.counters["refused_frames"] += 1
        reason = f"frame of {len(frame)} bytes is over --max-frame-bytes {self.max_frame_bytes}"
        return Rejected("frame_too_large", reason, None, frame[:REFUSED_KEEP_BYTES], None)

    def reply_committed(self, router: zmq.Socket) -> None:
        """Answer every acked message whose accepted events are all committed (docs/PROTOCOL.md §5)."""
        for reply in self.replies.ready():
            router.send_multipart(reply, zmq.NOBLOCK)
            self.counters["ack_replies"] += 1
        # added, not stored: the shared total outlives a restarted front, whose own count starts at 0
        self.counters["ack_expired"] += self.replies.expired
        self.replies.expired = 0

    # -- ring first, then spool -------------------------------------------------

    def place(self, records: np.ndarray) -> None:
        """Put accepted ``records`` into the ring, or behind the spool's content; never drop them silently.

        While the spool holds anything, new records go behind it (a scale's
        events stay in order). A full ring whose writers still free slots is
        waited for; one that frees nothing for SPILL_AFTER_S spills to the
        spool. When neither has room, or the spool's disk fails (retried every
        SPOOL_RETRY_S), this waits for the writers: the front stops reading
        (docs/PROTOCOL.md §4). Every wait ends on a stop request: the records in hand
        then go to the spool beyond its bound, else to the ring as far as it
        has room, and the rest are counted ``lost`` and logged with their
        number (:meth:`_give_up`).
        """
        stalled_at = time.monotonic()
        while len(records):
            self._hold(len(records))
            if not self.spool.events:
                before = len(records)
                records = self._put_fitting(records)
                if not len(records):
                    break
                now = time.monotonic()
                if len(records) < before:
                    stalled_at = now
                if now - stalled_at < SPILL_AFTER_S and not self.stopping():
                    # The writers are moving, only slower than the senders: that is
                    # back-pressure, not an outage, and the disk would only add work.
                    self._wait_for_space()
                    continue
            if self.stopping():
                if not self._spool(records):
                    self._give_up(self._put_fitting(records))
                break
            fit = self.spool.room_for()
            if fit and time.monotonic() >= self._spool_retry_at and self._spool(records[:fit]):
                records = records[fit:]
                continue
            self.refill_from_spool()
            self._wait_for_space()
        self._hold(0)
        failpoint("front.after_place")

    def _give_up(self, records: np.ndarray) -> None:
        """Count and log accepted records that can be kept nowhere (stopping, ring full, spool failing).

        Their acked messages are never answered (their tags are never counted).
        """
        if len(records):
            self.counters["lost"] += len(records)
            self._hold(0)
            log.error("LOST %d accepted events: stopping with the ring full and the spool not writable "
                      "(they are counted in stats 'lost'; acked senders get no reply and re-send)", len(records))

    def _put_fitting(self, records: np.ndarray) -> np.ndarray:
        """Put what fits now into each lane; return the rest (each lane's order kept)."""
        rest = [part[lane.put(part):] for lane, part in zip(self.ring.lanes, self._split(records)) if len(part)]
        rest = [r for r in rest if len(r)]
        rest = np.concatenate(rest) if rest else records[:0]
        self._hold(len(rest))
        return rest

    def _split(self, records: np.ndarray) -> list[np.ndarray]:
        """``records`` by lane (``scale_id % lanes``), each lane's part in arrival order."""
        lanes = len(self.ring.lanes)
        if lanes == 1:
            return [records]
        lane_of = records["scale_id"] % lanes
        order = np.argsort(lane_of, kind="stable")  # stable: a scale's events keep their order
        bounds = np.searchsorted(lane_of[order], np.arange(lanes + 1))
        return [records[order[bounds[i] : bounds[i + 1]]] for i in range(lanes)]

    def _spool(self, records: np.ndarray) -> bool:
        """Append ``records`` to the spool; False when its disk failed (logged once per episode).

        After a failure the spool is tried again only after SPOOL_RETRY_S;
        meanwhile the records stay in hand and the front stops reading.
        """
        try:
            self.spool.append(records)
            self._held -= len(records)  # from hand to spool: front_pending stays the same
        except SpoolError as e:
            self._spool_retry_at = time.monotonic() + SPOOL_RETRY_S
            if not self._spool_failing:
                log.error("%s; holding the events in hand and not reading until the ring or the spool "
                          "takes them (retrying every %.0f s)", e, SPOOL_RETRY_S)
            self._spool_failing = True
            return False
        if self._spool_failing:
            log.info("Spool writable again")
            self._spool_failing = False
        self.counters["spooled_events"] += len(records)
        self._publish_pending()
        return True

    def refill_from_spool(self) -> None:
        """Move the spool's oldest blocks into the ring while every lane they need has room."""
        while self.spool.events:
            if self._carry is None:
                try:
                    self._carry = self._split(self.spool.peek())
                except OSError as e:  # the block stays in the spool: tried again on the next round
                    if not self._read_failing:
                        log.error("Cannot read the spool's oldest block from %s (%s); retrying",
                                  self.spool.directory, e)
                    self._read_failing = True
                    break
                if self._read_failing:
                    log.info("Spool readable again")
                    self._read_failing = False
            self._carry = [part[lane.put(part):] for lane, part in zip(self.ring.lanes, self._carry)]
            self._publish_pending()
            if any(len(part) for part in self._carry):
                break
            failpoint("front.refill")
            done = self.spool.oldest_records
            self._carry = None
            self.spool.consume()
            self._publish_pending()
            if self._replay_left:
                self._replay_left = max(0, self._replay_left - done)
                if not self._replay_left:
                    log.info("Replayed %d events from spool", int(self.counters["replayed_events"]))

    def _wait_for_space(self) -> None:
        lanes = self.ring.lanes
        if self._carry is not None:
            stuck = next((lanes[i] for i, part in enumerate(self._carry) if len(part)), lanes[0])
        else:
            stuck = min(lanes, key=lambda lane: lane.free())
        stuck.wait_space(SPACE_WAIT_S)

    def _requeue_carry(self) -> None:
        """At stop: give the spool back the part of its oldest block not yet in the ring."""
        if self._carry is None:
            return
        rest = [part for part in self._carry if len(part)]
        try:
            self.spool.requeue_oldest(np.concatenate(rest) if rest else self.spool.peek()[:0])
        except (SpoolError, OSError) as e:
            # The whole block stays in the spool: its part already in the ring is
            # replayed too and found duplicate, never lost.
            log.warning("%s; the spool's oldest block is replayed whole at the next start", e)
        self._carry = None
        self._publish_pending()

    def _open_spool(self) -> None:
        c = self.counters
        if self.spool.cut_bytes:
            c["spool_cut_bytes"] += self.spool.cut_bytes
        if c["spool_opened"]:
            self._reconcile_after_crash()
        elif self.spool.events:
            # Events of an earlier run: received again, by this run (keeps the identity of docs/operations.md#stats).
            self._publish_pending()  # pending shows them before received does (see accept)
            c["received_events"] += self.spool.events
            c["replayed_events"] = self.spool.events
            self._replay_left = self.spool.events
            log.info("Spool holds %d events from the last run; replaying them before new frames", self.spool.events)
        c["spool_opened"] = 1
        self._publish_pending()

    def _reconcile_after_crash(self) -> None:
        """A front of this run died: settle what it held against what its spool holds now.

        The dead front published, after each step, ``front_pending`` (events
        in its hands or in the spool, not in the ring) and ``spool_in_ring``
        (records of spool blocks already put in the ring whose blocks are
        still in the spool files). Opening the spool again reads those blocks
        whole: their records in the ring come twice, so they count as
        received again (the writers find them duplicate). Of ``front_pending``,
        what is not in the spool now was in the dead front's memory only:
        counted ``lost`` and logged with its number.
        """
        c = self.counters
        in_ring, pending = int(c["spool_in_ring"]), int(c["front_pending"])
        on_disk = self.spool.events - in_ring
        c["received_events"] += in_ring
        c["replayed_events"] += in_ring
        if on_disk > pending:  # cannot happen unless a count was torn by the crash: keep the identity
            c["received_events"] += on_disk - pending
            log.warning("The spool holds %d events more than the dead front had published", on_disk - pending)
        elif pending > on_disk:
            c["lost"] += pending - on_disk
            log.error("LOST %d accepted events: the front died holding them in memory (counted in stats 'lost'; "
                      "acked senders get no reply and re-send)", pending - on_disk)
        c["held_events"] = 0
        if in_ring:
            log.warning("Front restarted: %d spool events already in the ring are replayed (found duplicate)", in_ring)

    def _hold(self, n: int) -> None:
        """``n`` received records are in the front's hands now (in no ring or spool)."""
        self._held = n
        self._publish_pending()

    def _publish_pending(self) -> None:
        """Publish the front's share of ``pending`` after every step (one store of ``front_pending``).

        A crash between two steps leaves exact figures for the next front
        (:meth:`_reconcile_after_crash`).
        """
        in_ring = 0
        if self._carry is not None:
            in_ring = self.spool.oldest_records - sum(len(part) for part in self._carry)
        c = self.counters
        c["spool_in_ring"] = in_ring
        c["spool_events"] = self.spool.events - in_ring
        c["held_events"] = self._held
        c["front_pending"] = self._held + self.spool.events - in_ring
        c["spool_bytes"] = self.spool.bytes


def _bad_token(token: bytes, raw: bytes, index: int | None) -> Rejected:
    reason = f"acked-mode token is {len(token)} bytes, more than {MAX_TOKEN_BYTES} (docs/PROTOCOL.md §5)"
    return Rejected("bad_token", reason, None, raw, index)


def _receive(sock: zmq.Socket, gather_s: float) -> list[list[bytes]]:
    """The messages queued on ``sock``, up to MAX_BATCH_BYTES; for ``gather_s`` more seconds if given.

    Gathering makes spool blocks (one fsync each) bigger while spooling.
    """
    messages: list[list[bytes]] = []
    size = 0
    deadline = time.monotonic() + gather_s
    while size < MAX_BATCH_BYTES:
        try:
            message = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            left = deadline - time.monotonic()
            if left <= 0 or not sock.poll(left * 1000):
                break
            continue
        messages.append(message)
        size += sum(len(f) for f in message)
    return messages


def run_front(args: FrontArgs, stop: Callable[[], bool]) -> None:
    """Child entry (see :mod:`ingestor.child`): attach to the shared blocks and run the front until ``stop()``.

    Raises BootError when an endpoint cannot be bound, the spool cannot be
    opened or the CURVE keys cannot be read.
    """
    shared = args.shared
    with attached(Ring.attach(shared.ring, RECORD_DTYPE, shared.semaphores),
                  Counters.attach(shared.counters, shared.ring.lanes),
                  AckTable.attach(shared.acks, shared.ring.lanes)) as (ring, counters, acks):
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
    front = Front(
        ring=ring, spool=spool, counters=front_counts, bind=args.bind, max_frame_bytes=args.max_frame_bytes,
        dead_letters=DeadLetterWriter(args.dead_letters.directory, "front", args.dead_letters.max_bytes),
        stopping=stop, ack_bind=args.ack_bind, acks=acks, curve=curve,
    )
    try:
        front.run()
    except zmq.ZMQError as e:
        raise BootError(f"cannot bind {args.bind}{f' or {args.ack_bind}' if args.ack_bind else ''}: {e}") from None
