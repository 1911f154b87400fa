"""``ingestor top``: a live terminal view of the running service (rich), read from the stats socket.

Every ``interval`` seconds it asks the stats endpoint (docs/operations.md#stats) and redraws:
the event rates and counts, ring and spool fill, each writer's state, the
database state and the supervisor's recent events. ``q`` or Ctrl-C ends it
with exit code 0; while no service answers it says so on screen and keeps
asking. ``--once`` prints one frame and exits (for scripts, and for
terminals that are not interactive).
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator

from rich.console import Console, ConsoleRenderable, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from . import stats
from .errors import StatsUnavailable
from .stats import Figures


def render(s: Figures | None, endpoint: str, error: str | None = None, live: bool = True) -> Panel:
    """One frame for the figures ``s`` (None: nobody answered, ``error`` says why); ``live``: it is redrawn and q
    quits it (not for --once)."""
    if s is None:
        return Panel(Text(f"No ingestor answers on {endpoint}: {error}\nStill asking; q quits.", style="bold red"),
                     title="ingestor top")
    head = Table.grid(padding=(0, 3))
    for _ in range(4):
        head.add_column()
    db = Text("connected", style="green") if s.database_connected else Text("UNREACHABLE", style="bold red")
    lat = s.latency_ms
    head.add_row("status", Text(s.status, style="bold"), "uptime", f"{s.uptime_s:.0f} s")
    head.add_row("events/s", f"{s.events_per_s:,.1f}", "database", db)
    head.add_row("received", f"{s.received_events:,}", "persisted", f"{s.persisted:,}")
    head.add_row("pending", f"{s.pending:,}", "invalid", f"{s.invalid:,}")
    head.add_row("duplicates", f"{s.duplicates:,}", "failed", f"{s.failed:,}")
    head.add_row("refused frames", f"{s.refused_frames:,}", "refused senders", f"{s.refused_clients:,}")
    if s.lost or s.lost_after_commit:
        head.add_row(Text("LOST", style="bold red"), Text(f"{s.lost:,}", style="bold red"),
                     Text("lost after commit", style="bold red"), Text(f"{s.lost_after_commit:,}", style="bold red"))
    head.add_row("batch", f"{s.average_batch_size:,.0f} events / {s.average_batch_ms:.0f} ms",
                 "latency p50 / p99", f"{lat.p50:g} / {lat.p99:g} ms" if lat.p50 is not None else "none yet")

    fill = Table.grid(padding=(0, 2))
    fill.add_column(width=6)
    fill.add_column(width=40)
    fill.add_column()
    fill.add_row("ring", ProgressBar(total=max(1, s.ring_capacity), completed=s.ring_used, width=40),
                 f"{s.ring_used:,} / {s.ring_capacity:,} slots")
    fill.add_row("spool", "", f"{s.spool_bytes / 2**20:,.1f} MiB, {s.spool_events:,} events")

    writers = Table("writer", "pid", "state", "restarts", "persisted", "batches", "last batch", box=None)
    for i, w in enumerate(s.writers):
        state = Text("alive", style="green") if w.alive else Text("dead", style="bold red")
        writers.add_row(str(i), str(w.pid), state, str(w.restarts), f"{w.persisted:,}", f"{w.batches:,}",
                        f"{w.last_batch_ms} ms")

    parts: list[ConsoleRenderable] = [head, Text(""), fill, Text(""), writers, Text("")]
    if s.inputs:
        inputs = Table("input", "pid", "state", "source", "restarts", "received", "acknowledged", "again",
                       "unmappable", "seq gaps", "rebirths", box=None)
        for one in s.inputs:
            state = Text("alive", style="green") if one.alive else Text("dead", style="bold red")
            source = Text("connected", style="green") if one.connected else Text("not connected", style="bold red")
            inputs.add_row(one.name, str(one.pid), state, source, str(one.restarts), f"{one.received:,}",
                           f"{one.acknowledged:,}", f"{one.redelivered:,}", f"{one.unmappable:,}", f"{one.seq_gaps:,}",
                           f"{one.rebirths:,}")
        parts += [inputs, Text("")]

    recent = Table("time (UTC)", "recent events", box=None)
    for e in s.recent_events[-8:]:
        recent.add_row(e.time, e.event)
    if not s.recent_events:
        recent.add_row("", Text("none", style="dim"))
    return Panel(Group(*parts, recent),
                 title=f"ingestor top — {endpoint}", subtitle="q quits" if live else None)


@contextlib.contextmanager
def _keys() -> Iterator[Callable[[float], str | None]]:
    """Yield ``pressed(timeout_s) -> str | None`` reading single keys from the terminal (cbreak mode)."""
    fd = sys.stdin.fileno()
    old = termios.tcgetattr(fd)
    tty.setcbreak(fd, termios.TCSANOW)  # TCSANOW: a key typed already is kept, not flushed
    try:
        def pressed(timeout_s: float) -> str | None:
            ready, _, _ = select.select([fd], [], [], timeout_s)
            return os.read(fd, 1).decode(errors="replace") if ready else None

        yield pressed
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


def _ask(endpoint: str, timeout_s: float) -> tuple[Figures | None, str | None]:
    try:
        return stats.fetch(endpoint, timeout_s), None
    except StatsUnavailable as e:
        return None, str(e)


def run(endpoint: str, interval_s: float = 1.0, once: bool = False) -> int:
    """Show the view until q or Ctrl-C (exit 0); with ``once``, print one frame (exit 1 when nobody answers)."""
    console = Console()
    if once or not sys.stdin.isatty():
        s, error = _ask(endpoint, 2.0)
        if s is None:
            print(f"ingestor top: {error}", file=sys.stderr)
            return 1
        console.print(render(s, endpoint, live=False))
        return 0
    s, error = _ask(endpoint, 2.0)
    if s is None:
        print(f"ingestor top: {error}", file=sys.stderr)
        return 1
    try:
        with _keys() as pressed, Live(render(s, endpoint), console=console, screen=True, auto_refresh=False) as live:
            while True:
                deadline = time.monotonic() + interval_s
                while (left := deadline - time.monotonic()) > 0:
                    if pressed(left) in ("q", "Q"):
                        return 0
                s, error = _ask(endpoint, min(2.0, interval_s * 2))
                live.update(render(s, endpoint, error), refresh=True)
    except KeyboardInterrupt:
        return 0
