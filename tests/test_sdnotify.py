"""systemd's notify protocol, seen on a real datagram socket the test owns as NOTIFY_SOCKET."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ingestor.sdnotify import Notifier
from tests.fix_service import require_command


def receive(sock: socket.socket, until, timeout_s: float) -> list[str]:
    """Messages received until ``until(messages)`` holds (or the timeout)."""
    messages: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not until(messages):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            messages.append(sock.recv(4096).decode())
        except TimeoutError:
            break
    return messages


@pytest.mark.slow
def test_service_reports_ready_status_watchdog_and_stopping(service_factory, dsn, tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    svc = service_factory("--dsn", dsn, "--writers", "1",
                          env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
    got = receive(sock, lambda m: sum(x == "WATCHDOG=1" for x in m) >= 3, 60)
    ready = [m for m in got if m.startswith("READY=1")]
    assert ready and "STATUS=running: 1 writer(s)" in ready[0]
    assert got.index(ready[0]) < got.index("WATCHDOG=1")
    assert sum(m == "WATCHDOG=1" for m in got) >= 3  # the loop pings every half WATCHDOG_USEC
    rate = receive(sock, lambda m: any("events/s" in x and "persisted" in x for x in m), 15)
    assert any(x.startswith("STATUS=running: ") and "database up" in x for x in rate)
    svc.proc.send_signal(signal.SIGTERM)
    stopping = receive(sock, lambda m: any(x.startswith("STOPPING=1") for x in m), 30)
    assert any(x.startswith("STOPPING=1\nSTATUS=draining") for x in stopping)
    assert svc.proc.wait(60) == 0
    sock.close()


def test_notifier_speaks_to_abstract_sockets_and_is_silent_without_systemd():
    name = f"ingestor-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    notifier = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "8000000", "WATCHDOG_PID": str(os.getpid())})
    notifier.notify("READY=1", "STATUS=ok")
    assert sock.recv(100) == b"READY=1\nSTATUS=ok"
    assert notifier.watchdog_interval_s == 4.0
    assert Notifier({"WATCHDOG_USEC": "8000000", "WATCHDOG_PID": "1"}).watchdog_interval_s is None  # not ours
    Notifier({}).notify("READY=1")  # no NOTIFY_SOCKET: nothing happens, nothing raised
    notifier.close()
    sock.close()


UNIT = Path(__file__).resolve().parent.parent / "systemd" / "ingestor.service"


def test_the_unit_file_passes_systemd_analyze_verify_and_is_hardened(tmp_path):
    require_command("systemd-analyze")
    # ExecStart must name an existing program for verify: point it at this environment's ingestor
    text = UNIT.read_text().replace("/opt/scale-ingestor/.venv/bin/ingestor",
                                     shutil.which("ingestor") or os.path.join(os.path.dirname(sys.executable), "ingestor"))
    unit = tmp_path / "ingestor.service"
    unit.write_text(text)
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "User=ingestor", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "ReadWritePaths=", "PrivateTmp=yes", "ProtectHome=yes",
                 "EnvironmentFile=", "--config /etc/ingestor/ingestor.toml"):
        assert line in text, line
    security = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)],
                              capture_output=True, text=True, timeout=60)
    exposure = float(re.search(r"Overall exposure level for ingestor.service: ([\d.]+)", security.stdout).group(1))
    assert exposure <= 3.0, security.stdout[-2000:]


def test_the_central_setup_timer_and_its_service_pass_systemd_analyze_verify(tmp_path):
    require_command("systemd-analyze")
    program = shutil.which("ingestor") or os.path.join(os.path.dirname(sys.executable), "ingestor")
    for name in ("ingestor-central.service", "ingestor-central.timer"):
        text = (UNIT.parent / name).read_text().replace("/opt/scale-ingestor/.venv/bin/ingestor", program)
        (tmp_path / name).write_text(text)
    verify = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "ingestor-central.timer"),
                             str(tmp_path / "ingestor-central.service")], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    service = (tmp_path / "ingestor-central.service").read_text()
    for line in ("Type=oneshot", "User=ingestor", "EnvironmentFile=/etc/ingestor/central.env", "ProtectSystem=strict",
                 "--edge-dsn ${INGESTOR_EDGE_DSN}", "--schema ${INGESTOR_SCHEMA}"):
        assert line in service, line
    security = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(tmp_path / "ingestor-central.service")],
                              capture_output=True, text=True, timeout=60)
    exposure = float(re.search(r"Overall exposure level for ingestor-central.service: ([\d.]+)",
                               security.stdout).group(1))
    assert exposure <= 3.0, security.stdout[-2000:]
