"""ZeroMQ CURVE on the input endpoints: key files, and who may connect.

With ``curve_secret_key`` (the service's key pair, a ZeroMQ certificate file
as written by ``ingestor keys generate``) and ``curve_clients_dir`` (a
directory of the allowed senders' public ``*.key`` files) configured, the
front makes its PULL and ROUTER sockets CURVE servers (RFC 26/CurveZMQ):
traffic is encrypted, and each handshake is checked by pyzmq's ZAP
authenticator (RFC 27) against the allowed keys. An unknown key is refused
before any frame of it is read, counted (``refused_clients``) and logged once
per key; a sender without CURVE fails the handshake, and is counted and
logged (once a minute) too. Key files added to or removed from the directory take effect on the
next handshake, without a restart.

Files are in the format of pyzmq's :mod:`zmq.auth.certs` (the czmq
certificate format), so keys made with czmq's ``zcert`` or any pyzmq sender
work as they are.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from .errors import ConfigError

log = logging.getLogger(__name__)

ZAP_DOMAIN = b"ingestor"
WATCH_POLL_MS = 200  # how often a handshake watcher looks at its stop flag
# A sender without CURVE fails in the greeting: the service sees the mechanism
# mismatch itself (PROTOCOL), or, when the sender noticed first and hung up,
# only the handshake's end (NO_DETAIL). ZAP refusals are counted by the callback.
HANDSHAKE_FAILED = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
PLAIN_LOG_EVERY_S = 60.0  # a sender without CURVE reconnects over and over: one log line a minute


def new_key_paths(directory: str | os.PathLike, name: str, public_suffix: str, secret_suffix: str) -> tuple[Path, Path]:
    """(public, secret) paths ``directory/NAME+suffix`` for a new key pair; ``directory`` is created.

    Raises ConfigError for a name that is not a plain file name,
    FileExistsError when either file exists (a key pair is never overwritten:
    the other side holds the public half).
    """
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"invalid key name {name!r}: a plain file name is needed")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = directory / f"{name}{public_suffix}", directory / f"{name}{secret_suffix}"
    for path in (public, secret):
        if path.exists():
            raise FileExistsError(f"{path} exists; not overwriting a key")
    return public, secret


def generate_keys(directory: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public) and ``NAME.key_secret`` (mode 0600) into ``directory``.

    Returns (public file, secret file). Raises FileExistsError when either
    exists (a key pair is never overwritten: senders hold the public half),
    ConfigError when ZeroMQ was built without CURVE.
    """
    if not zmq.has("curve"):
        raise ConfigError("this libzmq has no CURVE support")
    public, secret = new_key_paths(directory, name, ".key", ".key_secret")
    directory = public.parent
    # the secret file must never exist with wider permissions, even briefly
    old = os.umask(0o077)
    try:
        zmq.auth.create_certificates(directory, name)
    finally:
        os.umask(old)
    public.chmod(0o644)
    return public, secret


def load_secret_key(path: str | os.PathLike) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys of a ``.key_secret`` file.

    Raises ConfigError naming the file when it is missing, unreadable or
    holds no secret key (a public ``.key`` file given by mistake).
    """
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"curve_secret_key {str(path)!r}: {e}") from None
    if secret is None:
        raise ConfigError(f"curve_secret_key {str(path)!r} holds no secret key (use the .key_secret file)")
    return public, secret


def load_public_key(path: str | os.PathLike) -> bytes:
    """The z85 public key of a ``.key`` (or ``.key_secret``) file. Raises ConfigError naming the file."""
    try:
        return zmq.auth.load_certificate(path)[0]
    except (OSError, ValueError) as e:
        raise ConfigError(f"CURVE key file {str(path)!r}: {e}") from None


def load_client_keys(directory: str | os.PathLike) -> set[bytes]:
    """The z85 public keys of every ``*.key`` file in ``directory``.

    Raises ConfigError when the directory is missing or a file in it is not a certificate.
    """
    try:
        return set(zmq.auth.load_certificates(directory))
    except (OSError, ValueError) as e:
        raise ConfigError(f"curve_clients_dir {str(directory)!r}: {e}") from None


def apply_client(sock: zmq.Socket, server_public: bytes, public: bytes, secret: bytes) -> None:
    """Make ``sock`` a CURVE client of the service whose public key is ``server_public`` (before it connects)."""
    sock.curve_serverkey = server_public
    sock.curve_publickey = public
    sock.curve_secretkey = secret


class CurveServer:
    """Makes sockets CURVE servers and decides, per handshake, who may connect.

    ``on_refused`` is called once per refused handshake, from the
    authenticator's or a watcher's thread, never two at once. ``extra_clients`` are z85 public keys allowed besides
    the directory's (the bundled simulator's key made for this run).
    """

    def __init__(
        self,
        secret_key_file: str | os.PathLike,
        clients_dir: str | os.PathLike,
        on_refused: Callable[[], None],
        extra_clients: tuple[bytes, ...] = (),
    ) -> None:
        self.public, self.secret = load_secret_key(secret_key_file)
        self.clients_dir = Path(clients_dir)
        self.on_refused = on_refused
        self._extra = set(extra_clients)
        self._allowed = load_client_keys(self.clients_dir)
        self._stamp = self._dir_stamp()
        self._refused_logged: set[bytes] = set()
        self._lock = threading.Lock()  # the ZAP thread and the watcher threads share the key set and the count
        self._auth: ThreadAuthenticator | None = None
        self._stopping = threading.Event()
        self._watchers: list[threading.Thread] = []
        self._plain_logged_at = -PLAIN_LOG_EVERY_S
        log.info("CURVE on: %d allowed client key(s) in %s", len(self._allowed), self.clients_dir)

    def start(self, ctx: zmq.Context) -> None:
        """Start the ZAP handler of ``ctx`` (before any socket is bound)."""
        self._auth = ThreadAuthenticator(ctx, log=logging.getLogger("ingestor.zap"))
        self._auth.start()
        self._auth.configure_curve_callback(ZAP_DOMAIN.decode(), credentials_provider=self)

    def stop(self) -> None:
        """Stop the ZAP handler and the handshake watchers (before the context is terminated)."""
        self._stopping.set()
        for t in self._watchers:
            t.join()
        self._watchers.clear()
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def apply(self, sock: zmq.Socket, endpoint: str) -> None:
        """Make ``sock`` a CURVE server (before it binds to ``endpoint``).

        A sender without CURVE fails in the ZMTP greeting (mechanism
        mismatch) before ZAP is asked; a socket monitor watched by a thread of
        its own counts failed handshakes as refused too (logged at most once
        a minute).
        """
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True
        sock.zap_domain = ZAP_DOMAIN
        monitor = f"inproc://ingestor-curve-monitor-{len(self._watchers)}"
        sock.monitor(monitor, HANDSHAKE_FAILED)
        watcher = threading.Thread(target=self._watch, args=(sock.context, monitor, endpoint), name=f"curve-monitor-{endpoint}",
                                   daemon=True)
        watcher.start()
        self._watchers.append(watcher)

    def _watch(self, ctx: zmq.Context[zmq.Socket[bytes]], monitor: str, endpoint: str) -> None:
        events = ctx.socket(zmq.PAIR)
        events.connect(monitor)
        try:
            while not self._stopping.is_set():
                if not events.poll(WATCH_POLL_MS):
                    continue
                event = recv_monitor_message(events)
                self._count_refused()
                now = time.monotonic()
                if now - self._plain_logged_at >= PLAIN_LOG_EVERY_S:
                    self._plain_logged_at = now
                    log.warning("Refused a sender on %s: handshake failed (%s, %s); senders need CURVE and the "
                                "service's public key", endpoint, getattr(event["event"], "name", event["event"]),
                                getattr(event["value"], "name", event["value"]))
        finally:
            events.close(linger=0)

    def _count_refused(self) -> None:
        with self._lock:
            self.on_refused()

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq's credentials-provider hook: True when ``key`` (z85) may connect."""
        with self._lock:
            self._reload_if_changed()
            if key in self._allowed or key in self._extra:
                return True
            first = key not in self._refused_logged
            if first and len(self._refused_logged) < 10_000:
                self._refused_logged.add(key)
        self._count_refused()
        if first:
            log.warning("Refused a sender with unknown CURVE key %s (not in %s)", key.decode(), self.clients_dir)
        return False

    def _dir_stamp(self) -> tuple:
        try:
            entries = sorted((p.name, p.stat().st_mtime_ns) for p in self.clients_dir.glob("*.key"))
        except OSError:
            entries = []
        return tuple(entries)

    def _reload_if_changed(self) -> None:
        stamp = self._dir_stamp()
        if stamp == self._stamp:
            return
        try:
            allowed = load_client_keys(self.clients_dir)
        except ConfigError as e:
            log.error("Keeping the allowed keys loaded before: %s", e)
            return
        self._stamp = stamp
        if allowed != self._allowed:
            log.info("Allowed client keys reloaded: %d (was %d)", len(allowed), len(self._allowed))
        self._allowed = allowed
