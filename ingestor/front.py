"""The front process: ZeroMQ PULL socket in, ring records out.

The loop: wait for a message, drain what else is queued (up to
:data:`MAX_BATCH_BYTES`), decode every frame of the batch into one
:class:`~ingestor.protocol.RecordBuilder`, dead-letter the invalid events,
and put the valid records into their lanes (``scale_id % lanes``).

Back-pressure: when a lane is full, :meth:`Lane.put_all` waits for its
writer, so the front stops reading; the socket's receive high-water mark
then fills and ZeroMQ stops the senders (SPEC §1.2). Nothing received and
accepted is ever dropped. A stop request (SIGTERM from the supervisor) ends
the loop after the batch in hand is in the ring.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable

import numpy as np
import zmq

from .deadletter import DeadLetterWriter
from .protocol import RecordBuilder, Rejected, decode_frame
from .ring import Ring

log = logging.getLogger(__name__)

# Bytes drained from the socket into one batch: large enough that the
# per-batch costs (numpy array, ring publish) vanish, small enough that the
# records of one batch fit comfortably in a lane.
MAX_BATCH_BYTES = 4 * 1024 * 1024
POLL_MS = 100  # how often an idle front looks at its stop flag
RCVHWM = 1000  # messages ZeroMQ queues before it pushes back on senders


class Front:
    """Receives frames on ``bind`` and fills ``ring``; ``run()`` returns when ``stopping()`` says so."""

    def __init__(
        self,
        *,
        ring: Ring,
        counters: np.ndarray,
        bind: str,
        max_frame_bytes: int,
        dead_letters: DeadLetterWriter,
        stopping: Callable[[], bool],
    ) -> None:
        self.ring = ring
        self.counters = counters
        self.bind = bind
        self.max_frame_bytes = max_frame_bytes
        self.dead_letters = dead_letters
        self.stopping = stopping

    def run(self) -> None:
        ctx = zmq.Context()
        pull = ctx.socket(zmq.PULL)
        try:
            pull.setsockopt(zmq.RCVHWM, RCVHWM)
            pull.setsockopt(zmq.MAXMSGSIZE, self.max_frame_bytes)
            pull.bind(self.bind)
            log.info("Front listening on %s (PULL)", self.bind)
            while not self.stopping():
                if pull.poll(POLL_MS):
                    self.accept(_drain(pull))
        finally:
            pull.close(linger=0)
            ctx.term()

    def accept(self, messages: list[list[bytes]]) -> None:
        """Decode ``messages`` (each a list of frames) and put their valid events into the ring."""
        received_ns = time.time_ns()
        now_us = received_ns // 1000
        builder = RecordBuilder()
        rejected: list[Rejected] = []
        frames = events = 0
        for message in messages:
            for frame in message:
                frames += 1
                n, bad = decode_frame(frame, builder, now_us)
                events += n
                if bad:
                    rejected += bad
        c = self.counters
        c["received_frames"] += frames
        c["received_events"] += events
        if rejected:
            c["invalid"] += len(rejected)
            try:
                self.dead_letters.write(rejected)
            except OSError as e:
                c["dead_letter_errors"] += len(rejected)
                log.error("Could not write %d dead letters to %s: %s", len(rejected), self.dead_letters.directory, e)
        if len(builder):
            self._route(builder.build(received_ns))

    def _route(self, records: np.ndarray) -> None:
        lanes = self.ring.lanes
        if len(lanes) == 1:
            lanes[0].put_all(records)
            return
        lane_of = records["scale_id"] % len(lanes)
        order = np.argsort(lane_of, kind="stable")  # stable: a scale's events keep their order
        bounds = np.searchsorted(lane_of[order], np.arange(len(lanes) + 1))
        for i, lane in enumerate(lanes):
            if bounds[i] < bounds[i + 1]:
                lane.put_all(records[order[bounds[i] : bounds[i + 1]]])


def _drain(sock: zmq.Socket) -> list[list[bytes]]:
    """Every message queued on ``sock`` now, up to MAX_BATCH_BYTES (at least one)."""
    messages = []
    size = 0
    while size < MAX_BATCH_BYTES:
        try:
            message = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            break
        messages.append(message)
        size += sum(len(f) for f in message)
    return messages


def run_front(
    *,
    stop: Callable[[], bool],
    ring_handles: tuple,
    counters_name: str,
    writers: int,
    bind: str,
    max_frame_bytes: int,
    dead_letter_dir: str,
) -> int:
    """Child entry (see :mod:`ingestor.child`): attach to the shared blocks and run the front.

    Returns child.EXIT_BOOT_ERROR when the endpoint cannot be bound.
    """
    from .child import EXIT_BOOT_ERROR
    from .protocol import RECORD_DTYPE
    from .stats import Counters

    spec, sems = ring_handles
    ring = Ring.attach(spec, RECORD_DTYPE, sems)
    counters = Counters.attach(counters_name, writers)
    counters.front["pid"] = os.getpid()
    front = Front(
        ring=ring, counters=counters.front, bind=bind, max_frame_bytes=max_frame_bytes,
        dead_letters=DeadLetterWriter(dead_letter_dir, "front"), stopping=stop,
    )
    try:
        front.run()
    except zmq.ZMQError as e:
        log.error("Cannot bind %s: %s", bind, e)
        return EXIT_BOOT_ERROR
    finally:
        del front  # drop its views into the shared blocks before closing them
        counters.close()
        ring.close()
    log.info("Front stopped")
    return 0
