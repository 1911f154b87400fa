"""The supervisor's recent notable events, for ``ingestor top`` and the stats' ``recent_events``.

What an operator looking at a running service wants to know happened: a
child died and was restarted, the database went away or came back, the ring
filled and the front began spooling, senders were refused. The supervisor
calls :meth:`RecentEvents.remember` for what it does itself and
:meth:`RecentEvents.notice` with each fresh set of figures for the
transitions they show.
"""

from __future__ import annotations

import collections
import datetime as dt
import time

from .stats import Figures, RecentEvent

KEEP = 20  # events kept
REFUSED_NOTE_EVERY_S = 60.0  # a refused sender reconnects over and over: one event a minute at most


class RecentEvents:
    """The last :data:`KEEP` notable events, oldest first."""

    def __init__(self) -> None:
        self._events: collections.deque[RecentEvent] = collections.deque(maxlen=KEEP)
        self._was_connected: bool | None = None  # None until the writers first connected
        self._was_spooling = False
        self._refused_noted = (0, -REFUSED_NOTE_EVERY_S)  # (refused_clients, monotonic time) when last noted

    def remember(self, what: str) -> None:
        self._events.append(RecentEvent(dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), what))

    def notice(self, f: Figures) -> None:
        """Remember the transitions between the last figures and ``f``."""
        if f.database_connected and self._was_connected is False:
            self.remember("database reachable again")
        elif not f.database_connected and self._was_connected:
            self.remember("database unreachable")
        if f.database_connected or self._was_connected is not None:  # writers still connecting at start: no outage
            self._was_connected = f.database_connected
        spooling = f.spool_events > 0
        if spooling != self._was_spooling:
            self.remember("ring full: spooling to disk" if spooling else "spool drained")
        self._was_spooling = spooling
        noted, at = self._refused_noted
        if f.refused_clients > noted and time.monotonic() - at >= REFUSED_NOTE_EVERY_S:
            self.remember(f"{f.refused_clients - noted} CURVE handshake(s) refused: unknown key or no CURVE "
                          "(see the log)")
            self._refused_noted = (f.refused_clients, time.monotonic())

    def list(self) -> list[RecentEvent]:
        return list(self._events)
