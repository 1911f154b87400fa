"""The OPC UA input (ingestor/opcua.py): every change of a weighing variable is one measurement, stored once and
acknowledged to the server only after commit, through a session's lost network and through the input's SIGKILL;
what OPC UA cannot give back (a server queue's overflow) is counted, never silent.

The terminal is a real asyncua server in its own process (tests/opcua_scale.py); the network between it and the
service goes through a TCP proxy that can cut every connection, as a switch's reboot does.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psycopg
import pytest
from asyncua import ua

from ingestor.config import OpcuaScale
from ingestor.opcua import SEQ_FIELD, Scales, handle

from .fix_service import free_port
from .opcua_scale import T0

ROOT = Path(__file__).resolve().parent.parent
T0_MS = int(T0.timestamp() * 1000)
SCALES = (OpcuaScale(scale_id=17, data=("ns=2;s=Scale17.Weight", "ns=2;s=Scale17.Unit")),
          OpcuaScale(scale_id=18, data=("ns=2;s=Scale18.Weight",), seq="ns=2;s=Scale18.Counter"))


def change(scale: int, field: int, value, ms: int | None, status: int = 0) -> ua.MonitoredItemNotification:
    at = T0 + dt.timedelta(milliseconds=ms) if ms is not None else None
    return ua.MonitoredItemNotification(ClientHandle=handle(scale, field), Value=ua.DataValue(
        ua.Variant(value), StatusCode=ua.StatusCode(status), SourceTimestamp=at))


def test_each_weighing_change_is_a_measurement_with_its_source_time_and_the_values_of_its_time():
    scales = Scales(SCALES)
    events, refused, overflows = scales.take([
        change(0, 0, 12.5, 5), change(0, 1, "lb", 9), change(0, 0, 13.0, 9), change(0, 1, "kg", 2),
        change(1, SEQ_FIELD, 7, 3), change(1, 0, 99.5, 3)])
    assert (refused, overflows) == ([], 0)
    assert events == [  # in time order; at 9 ms the unit of 9 ms, though it came after the weighing
        {"scale_id": 18, "seq": 7, "ts": T0_MS + 3, "data_1": 99.5},
        {"scale_id": 17, "seq": T0_MS + 5, "ts": T0_MS + 5, "data_1": 12.5, "data_2": "kg"},
        {"scale_id": 17, "seq": T0_MS + 9, "ts": T0_MS + 9, "data_1": 13.0, "data_2": "lb"},
    ]


def test_a_counter_that_did_not_change_since_the_last_weighing_is_refused_rather_than_taken_as_a_duplicate():
    scales = Scales(SCALES)
    scales.take([change(1, SEQ_FIELD, 7, 3), change(1, 0, 99.5, 3)])
    events, refused, _ = scales.take([change(1, 0, 100.0, 8)])  # its counter's change not (yet) there
    assert events == [] and refused == ["scale 18 (ns=2;s=Scale18.Weight): counter ns=2;s=Scale18.Counter is still 7, "
                                        "the previous weighing's"]
    events, refused, _ = scales.take([change(1, SEQ_FIELD, 8, 9), change(1, 0, 100.5, 9)])
    assert [e["seq"] for e in events] == [8] and refused == []
    events, refused, _ = scales.take([change(1, SEQ_FIELD, 8, 9), change(1, 0, 100.5, 9)])  # the same weighing again
    assert [e["seq"] for e in events] == [8] and refused == []  # (a new subscription's first values): a duplicate


@pytest.mark.parametrize("item,reason", [
    (change(0, 0, 1.0, 5, status=0x80000000), "status Bad"),
    (change(0, 0, 1.0, None), "no source or server timestamp"),
    (change(0, 0, b"\x00", 5), "is not text or a number"),
    (change(0, 0, [1.0, 2.0], 5), "is not text or a number"),
], ids=["bad status", "no time", "bytes", "array"])
def test_a_weighing_that_cannot_be_read_is_refused_naming_scale_and_variable(item, reason):
    events, refused, _ = Scales(SCALES).take([item])
    assert events == [] and len(refused) == 1 and refused[0].startswith("scale 17 (ns=2;s=Scale17.Weight): ")
    assert reason in refused[0]


def test_values_of_every_kind_become_data_fields_and_a_queue_overflow_is_counted():
    scales = Scales(SCALES)
    at = T0 + dt.timedelta(seconds=1)
    values = [("t", "t"), (5, 5), (2.25, 2.25), (True, "true"), (None, None), (at, T0_MS + 1000)]
    for value, expected in values:
        scales.take([change(0, 1, value, 1)])
        (event,), _, _ = scales.take([change(0, 0, 1.0, 2)])
        assert event["data_2"] == expected
    _, _, overflows = scales.take([change(0, 0, 1.0, 3, status=0x0480), change(0, 1, "kg", 3, status=0x0480)])
    assert overflows == 2


def test_client_handles_are_fixed_by_the_configuration():
    requests = Scales(SCALES).requests(queue_size=100, sampling_ms=100.0)
    assert [(r.RequestedParameters.ClientHandle, r.ItemToMonitor.NodeId.to_string(), r.RequestedParameters.QueueSize)
            for r in requests] == [(1, "ns=2;s=Scale17.Weight", 100), (2, "ns=2;s=Scale17.Unit", 100),
                                   (9, "ns=2;s=Scale18.Weight", 100), (14, "ns=2;s=Scale18.Counter", 100)]


# -- a real terminal, the service, a network that fails ---------------------------------------------------------


class Proxy:
    """A TCP proxy on a free port to ``target``: ``cut()`` closes every connection through it."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                near, _ = self.listener.accept()
            except OSError:
                return
            try:
                far = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                near.close()
                continue
            with self.lock:
                self.pairs.append((near, far))
            for a, b in ((near, far), (far, near)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> int:
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for near, far in pairs:
            for s in (near, far):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
        return len(pairs)

    def close(self) -> None:
        self.listener.close()
        self.cut()


class Terminal:
    """tests/opcua_scale.py in its own process."""

    def __init__(self, directory: Path, weighings: int, interval_ms: float) -> None:
        directory.mkdir(exist_ok=True)
        self.directory = directory
        self.port = free_port()
        self.log = open(directory / "terminal.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.opcua_scale", str(self.port), str(directory),
                                      str(weighings), str(interval_ms)], cwd=ROOT, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        wait_until(lambda: (directory / "listening").exists() or self.proc.poll() is not None, 30)
        assert self.proc.poll() is None, (directory / "terminal.log").read_text()

    def go(self) -> None:
        (self.directory / "go").write_text("")

    def done(self) -> bool:
        return (self.directory / "done").exists()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


def wait_until(condition, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def terminal(tmp_path, request):
    weighings, interval_ms = getattr(request, "param", (400, 15))
    t = Terminal(tmp_path / "terminal", weighings, interval_ms)
    yield t
    t.close()


def service_with(service_factory, dsn, tmp_path, port: int, *args):
    config_file = tmp_path / "ingestor.toml"
    config_file.write_text(f'[opcua]\nendpoint = "opc.tcp://127.0.0.1:{port}/"\npublishing_interval_ms = 50\n'
                           '[[opcua.scales]]\nscale_id = 17\ndata = ["ns=2;s=Scale17.Weight", "ns=2;s=Scale17.Unit"]\n'
                           'seq = "ns=2;s=Scale17.Counter"\n')
    svc = service_factory("--dsn", dsn, "--config", str(config_file), *args)
    svc.wait_ready()
    svc.wait_for(lambda s: s["inputs"] and s["inputs"][0]["connected"])
    time.sleep(1)  # its monitored items created: the first notification (the current values) is in
    return svc


def stored(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute("SELECT seq FROM weighing_logs WHERE seq > 0 ORDER BY seq").fetchall()]


@pytest.mark.slow
def test_every_weighing_is_stored_once_though_the_network_to_the_terminal_is_cut_twice(
        terminal, service_factory, dsn, tmp_path):
    proxy = Proxy(terminal.port)
    try:
        svc = service_with(service_factory, dsn, tmp_path, proxy.port)
        terminal.go()
        for progress in (100, 250):
            wait_until(lambda p=progress: len(stored(dsn)) >= p, 60)
            assert proxy.cut() >= 1  # the session's connection gone mid-stream; asyncua reconnects through the proxy
        wait_until(terminal.done, 60)
        wait_until(lambda: len(stored(dsn)) >= 400, 90)
        time.sleep(1)
        f = svc.stats()["inputs"][0]
        assert stored(dsn) == list(range(1, 401))  # every weighing, once, in order of its counter
        letters = [p.read_text() for p in (tmp_path / "dead-letters").glob("opcua-*")]
        assert (f["name"], f["seq_gaps"], f["unmappable"]) == ("opcua", 0, 0), letters
        assert svc.terminate() == 0
    finally:
        proxy.close()


@pytest.mark.slow
def test_an_input_sigkilled_mid_stream_takes_over_its_subscription_and_loses_no_weighing(
        terminal, service_factory, dsn, tmp_path):
    svc = service_with(service_factory, dsn, tmp_path, terminal.port)
    terminal.go()
    wait_until(lambda: len(stored(dsn)) >= 100, 60)
    os.kill(svc.stats()["inputs"][0]["pid"], signal.SIGKILL)  # the supervisor starts another; it transfers
    svc.wait_for(lambda s: s["inputs"][0]["restarts"] == 1 and s["inputs"][0]["connected"])
    wait_until(terminal.done, 60)
    try:
        wait_until(lambda: len(stored(dsn)) >= 400, 30)
    except AssertionError:
        raise AssertionError((len(stored(dsn)), svc.stats()["inputs"],
                              [line for line in svc.output().splitlines() if "opcua" in line][-40:])) from None
    assert stored(dsn) == list(range(1, 401))
    assert "taking over subscription" in svc.output()
    assert svc.terminate() == 0
    assert not (tmp_path / "data" / "opcua-subscription.json").exists()  # a clean stop ends the subscription
    assert np.all(np.diff(stored(dsn)) == 1)


@pytest.mark.slow
def test_the_protocols_terminal_and_configuration_examples_store_the_ten_weighings(service_factory, dsn, tmp_path):
    from .test_mqtt import doc_example

    port = free_port()
    protocol = ROOT / "docs" / "PROTOCOL.md"
    config_file = tmp_path / "ingestor.toml"
    config_file.write_text(doc_example(protocol, "opcua-config").replace(":4840/", f":{port}/"))
    terminal = subprocess.Popen([sys.executable, "-c", doc_example(protocol, "opcua-terminal").replace(
        ":4840/", f":{port}/")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert terminal.stdout.readline().startswith("serving")
        svc = service_factory("--dsn", dsn, "--config", str(config_file))
        svc.wait_ready()
        svc.wait_for(lambda s: s["inputs"][0]["connected"])
        time.sleep(1)  # subscribed
        terminal.stdin.write("\n")
        terminal.stdin.flush()
        assert terminal.stdout.readline().strip() == "recorded 10"
        wait_until(lambda: len(stored(dsn)) >= 10, 30)
        assert stored(dsn) == list(range(1, 11))
        assert svc.terminate() == 0
    finally:
        terminal.kill()
        terminal.wait(10)
        terminal.stdin.close()
        terminal.stdout.close()


def test_the_operations_example_of_the_opcua_table_loads_as_written(tmp_path):
    from ingestor import config

    from .test_mqtt import doc_example

    text = doc_example(ROOT / "docs" / "operations.md", "opcua-operations")
    for name in ("opcua-cert.pem", "opcua-key.pem", "opcua-password"):
        (tmp_path / name).write_text("x\n")
        text = text.replace(f"/etc/ingestor/{name}", str(tmp_path / name))
    (tmp_path / "ingestor.toml").write_text(text)
    cfg, _ = config.load({}, config_file=str(tmp_path / "ingestor.toml"), environ={})
    assert cfg.opcua is not None and [s.scale_id for s in cfg.opcua.scales] == [17, 18]
    assert cfg.opcua.scales[0].seq == "ns=2;s=Scale17.Counter" and cfg.opcua.scales[1].seq == ""
