"""systemd's notify protocol (``Type=notify``): READY, STATUS, WATCHDOG and STOPPING messages.

The protocol is one datagram per message to the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (a path, or an abstract name written with a leading
``@``); see sd_notify(3). It is ten lines, so it lives here rather than
pulling in libsystemd bindings. Without ``$NOTIFY_SOCKET`` (not run by
systemd) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages; ``watchdog_interval_s`` is how often to ping (half of WATCHDOG_USEC), or None."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._sock: socket.socket | None = None
        if self._address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_interval_s = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 and mine else None

    def notify(self, *lines: str) -> None:
        """Send ``lines`` (``"READY=1"``, ``"STATUS=…"``) as one message; errors are logged, never raised."""
        if self._sock is None:
            return
        try:
            self._sock.sendto("\n".join(lines).encode(), self._address)
        except OSError as e:
            log.warning("sd_notify to %s failed: %s", self._address.replace("\0", "@"), e)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
