"""The real service as a subprocess (``ingestor run``), on free local ports."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from ingestor import stats


def require_command(name: str) -> str:
    """The path of command ``name``; without it the test is skipped, and fails in CI (``CI`` set):
    CI installs every command the tests need (.ci/run), so a skip there would hide an untested claim. Daemons
    (mosquitto) live in /usr/sbin, which a normal user's PATH often lacks: it is searched too."""
    path = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/sbin", "/sbin"]))
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"the {name} command is not installed, and CI must run this test (.ci/run installs it)")
        pytest.skip(f"the {name} command is not installed")
    return path


_HANDED_OUT: set[int] = set()


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (outgoing connections take their local port from it)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A local TCP port nothing listens on, below the ephemeral range and not handed out before in this run.

    Below the range: a port the kernel gave out with ``bind(0)`` is an
    ephemeral one, and between this check and the service's bind an outgoing
    connection (a writer's to PostgreSQL, the central lag watch's) could take
    it as its local port: "Address already in use" at the service's start.
    """
    low = _ephemeral_low()
    for _ in range(1000):
        port = random.randrange(max(1025, low - 12000), low)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free port below {low}")


class Service:
    """One ``ingestor run`` process; its stderr goes to ``log``."""

    def __init__(self, args: list[str], workdir: Path, env: dict[str, str] | None = None) -> None:
        self.bind = f"tcp://127.0.0.1:{free_port()}"
        self.ack_bind = f"tcp://127.0.0.1:{free_port()}"
        self.stats_endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.http = f"127.0.0.1:{free_port()}"
        self.dead_letter_dir = workdir / "dead-letters"
        self.data_dir = workdir / "data"
        self.log = next(p for k in range(100) if not (p := workdir / f"service{k or ''}.log").exists())
        cmd = [
            sys.executable, "-m", "ingestor.cli", "run", "--bind", self.bind, "--ack-bind", self.ack_bind,
            "--http-bind", self.http,
            "--stats-endpoint", self.stats_endpoint, "--dead-letter-dir", str(self.dead_letter_dir),
            "--spool-dir", str(workdir / "spool"), "--data-dir", str(workdir / "data"), *args,
        ]
        self._logf = open(self.log, "wb")
        # its own session: kill_tree() can SIGKILL the whole process tree, as a power cut would
        self.proc = subprocess.Popen(cmd, stdout=self._logf, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, **(env or {})})

    def stats(self, timeout_s: float = 2.0) -> dict:
        return stats.query(self.stats_endpoint, timeout_s)

    def wait_ready(self, timeout_s: float = 60) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"service exited with {self.proc.returncode}:\n{self.output()}")
            try:
                s = self.stats(0.5)
                if s["status"] == "running" and all(w["alive"] for w in s["writers"]) and s["database_connected"]:
                    return s
            except stats.StatsUnavailable:
                pass
            time.sleep(0.2)
        raise AssertionError(f"service not ready in {timeout_s} s:\n{self.output()}")

    def wait_for(self, predicate, timeout_s: float = 60) -> dict:
        """Poll stats until ``predicate(stats)`` holds; return those stats."""
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            last = self.stats()
            if predicate(last):
                return last
            time.sleep(0.2)
        raise AssertionError(f"condition not met in {timeout_s} s; last stats: {last}\n{self.output()[-3000:]}")

    def terminate(self, sig: int = signal.SIGTERM, timeout_s: float = 60) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout_s)

    def send(self, *frames: bytes) -> None:
        """Send each frame as one message to the PULL endpoint, and wait until they are out."""
        ctx = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        push.connect(self.bind)
        for frame in frames:
            push.send(frame)
        push.close(linger=5000)
        ctx.term()

    def kill_tree(self) -> None:
        """SIGKILL the supervisor and every child at once; nothing gets to clean up."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def output(self) -> str:
        self._logf.flush()
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:  # graceful first, so the ring's shared memory is unlinked
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._logf.close()


@pytest.fixture
def service_factory(tmp_path: Path) -> Iterator:
    """Start services with ``service_factory("--dsn", dsn, ...)``; all are killed at teardown.

    ``box="name"`` gives the service directories of its own (``tmp_path/name``: data, spool,
    dead letters), as a second edge box would have; by default every service shares ``tmp_path``.
    """
    started: list[Service] = []

    def start(*args: str, env: dict[str, str] | None = None, box: str | None = None) -> Service:
        workdir = tmp_path / box if box else tmp_path
        workdir.mkdir(exist_ok=True)
        svc = Service(list(args), workdir, env)
        started.append(svc)
        return svc

    yield start
    for svc in started:
        svc.close()
