"""``ingestor top`` against the running service: one frame, no service, and q in a real terminal (pty)."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

import pytest

from .fix_service import free_port

pytestmark = pytest.mark.slow


def test_top_once_shows_counts_writers_and_ring(service_factory, dsn):
    svc = service_factory("--dsn", dsn, "--writers", "2")
    svc.wait_ready()
    r = subprocess.run([sys.executable, "-m", "ingestor.cli", "top", "--once", "--stats-endpoint", svc.stats_endpoint],
                       capture_output=True, text=True, timeout=30, env={**os.environ, "COLUMNS": "120"})
    assert r.returncode == 0, r.stderr
    for word in ("status", "running", "persisted", "ring", "spool", "writer", "alive", "connected"):
        assert word in r.stdout, word
    assert "q quits" not in r.stdout  # one frame, printed: nothing to quit (finding 9 of issue 26)
    assert svc.terminate() == 0


def test_top_without_a_service_says_so_and_exits_1():
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    r = subprocess.run([sys.executable, "-m", "ingestor.cli", "top", "--once", "--stats-endpoint", endpoint],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and f"no ingestor answered on {endpoint}" in r.stderr


def test_top_in_a_terminal_quits_on_q(service_factory, dsn):
    svc = service_factory("--dsn", dsn, "--writers", "1")
    svc.wait_ready()
    fd, terminal = pty.openpty()  # a real terminal for the child's stdin and stdout
    proc = subprocess.Popen([sys.executable, "-m", "ingestor.cli", "top", "--stats-endpoint", svc.stats_endpoint],
                            stdin=terminal, stdout=terminal, stderr=terminal, start_new_session=True)
    os.close(terminal)
    seen = b""
    deadline = time.monotonic() + 20
    while b"writer" not in seen and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.5)[0]:
            seen += os.read(fd, 65536)
    assert b"writer" in seen, seen[-500:]
    deadline = time.monotonic() + 20
    next_q = 0.0
    while proc.poll() is None and time.monotonic() < deadline:
        if time.monotonic() >= next_q:  # again now and then: a loaded machine may take a moment
            os.write(fd, b"q")
            next_q = time.monotonic() + 1.0
        if select.select([fd], [], [], 0.2)[0]:
            try:
                seen += os.read(fd, 65536)  # keep the terminal drained so the child never blocks writing
            except OSError:
                break
    try:
        status = proc.wait(10)  # the terminal closes (EIO) a moment before the process has exited
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"ingestor top did not quit on q: {seen[-300:]!r}") from None
    assert status == 0
    os.close(fd)
    assert svc.terminate() == 0
