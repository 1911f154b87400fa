"""A plant of simulated scales: deterministic measurements over a ZeroMQ PUSH socket.

Event ``i`` of a run belongs to scale ``i % scales + 1`` with seq
``seq_start + i // scales``, so a run is fully described by its arguments:
tests and benchmarks know exactly which rows must end up stored. Events are
sent as MessagePack arrays of up to ``events_per_frame`` (docs/PROTOCOL.md §2), paced to
``rate`` events/s (0: as fast as the ingestor takes them; a full ZeroMQ
high-water mark blocks the sender, which is the back-pressure of docs/PROTOCOL.md §4).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Literal

import msgspec

from .client import CurveKeys, Sender
from .roles import SimulatorArgs

log = logging.getLogger(__name__)

TICK_S = 0.01  # the longest pause between two looks at what is due


class Summary(msgspec.Struct):
    """What a simulator run sent."""

    endpoint: str
    scales: int
    events: int
    frames: int
    seconds: float
    events_per_s: float
    seq_start: int
    start_ms: int


def event(i: int, *, scales: int, seq_start: int, start_ms: int, period_ms: float) -> dict:
    """The ``i``-th event of a run, as a sender would send it."""
    scale_id = i % scales + 1
    n = i // scales
    weight = ((scale_id * 7919 + n * 104_729) % 100_000) / 100
    return {
        "scale_id": scale_id,
        "seq": seq_start + n,
        "ts": start_ms + int(n * period_ms),
        "data_1": f"{weight:.2f}",
        "data_2": "kg",
        "data_3": "stable" if n % 10 else "settling",
        "data_4": scale_id % 50,
        "data_5": None,
    }


class Simulator:
    """Sends ``events`` events (0: until stopped) from ``scales`` scales to ``endpoint``."""

    def __init__(
        self,
        endpoint: str,
        *,
        scales: int = 300,
        rate: float = 300.0,
        events: int = 0,
        duration_s: float = 0.0,
        events_per_frame: int = 100,
        seq_start: int = 0,
        start_ms: int | None = None,
        fmt: Literal["msgpack", "json"] = "msgpack",
        curve: CurveKeys | None = None,
    ) -> None:
        if scales < 1:
            raise ValueError(f"scales must be >= 1, got {scales!r}")
        if not 1 <= events_per_frame <= 1000:
            raise ValueError(f"events_per_frame must be 1..1000, got {events_per_frame!r}")
        if fmt not in ("msgpack", "json"):
            raise ValueError(f"fmt must be 'msgpack' or 'json', got {fmt!r}")
        self.endpoint = endpoint
        self.scales = scales
        self.rate = rate
        self.events = events
        self.duration_s = duration_s
        self.events_per_frame = events_per_frame
        self.seq_start = seq_start
        self.start_ms = int(time.time() * 1000) if start_ms is None else start_ms
        # each scale measures rate/scales times a second
        self.period_ms = 1000.0 * scales / rate if rate > 0 else 1.0
        self.fmt = fmt
        self.curve = curve

    def _events(self, first: int, count: int) -> list[dict]:
        return [event(i, scales=self.scales, seq_start=self.seq_start, start_ms=self.start_ms, period_ms=self.period_ms)
                for i in range(first, first + count)]

    def run(self, stopping: Callable[[], bool] = lambda: False) -> Summary:
        sender = Sender(self.endpoint, events_per_frame=self.events_per_frame, fmt=self.fmt, curve=self.curve)
        sent = frames = 0
        started = time.perf_counter()
        try:
            while not stopping():
                elapsed = time.perf_counter() - started
                if self.duration_s and elapsed >= self.duration_s:
                    break
                due = int(elapsed * self.rate) + 1 if self.rate > 0 else sent + self.events_per_frame
                if self.events:
                    due = min(due, self.events)
                    if sent >= self.events:
                        break
                if due <= sent:
                    # until the next frame is due, so frames come evenly spaced as from independent
                    # scales (a 10 ms tick sent them in bursts); a tick at most: a frame takes what is due
                    next_frame_due = (sent + self.events_per_frame - 1) / self.rate
                    time.sleep(min(TICK_S, max(next_frame_due - elapsed, 0.0)))
                    continue
                while sent < due and not stopping():
                    count = min(self.events_per_frame, due - sent)
                    sender.send(self._events(sent, count))
                    sent += count
                    frames += 1
        finally:
            sender.close()  # lets queued frames reach the ingestor
        seconds = time.perf_counter() - started
        return Summary(
            endpoint=self.endpoint, scales=self.scales, events=sent, frames=frames, seconds=round(seconds, 3),
            events_per_s=round(sent / seconds, 1) if seconds else 0.0, seq_start=self.seq_start, start_ms=self.start_ms,
        )


def run_simulator(args: SimulatorArgs, stop: Callable[[], bool]) -> None:
    """Child entry (see :mod:`ingestor.child`) for ``ingestor run --simulate-scales``, until ``stop()``."""
    # seq counts on from the wall clock, so a restarted simulator never repeats one
    sim = Simulator(args.endpoint, scales=args.scales, rate=args.rate, seq_start=int(time.time() * 1000),
                    curve=args.curve)
    log.info("Simulating %d scales at %g events/s into %s", args.scales, args.rate, args.endpoint)
    summary = sim.run(stop)
    log.info("Simulator sent %d events in %d frames", summary.events, summary.frames)
