"""The MQTT input (ingestor/mqtt.py) with a real mosquitto broker, a real service and real processes: every QoS 1
message is stored once and acknowledged to the broker only after commit, also when the input is SIGKILLed
mid-stream; an unmappable message is a dead letter with its topic, never a silent drop."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import psycopg
import pytest

from ingestor import failpoints
from ingestor.child import Child
from ingestor.config import MqttConfig
from ingestor.mqtt_map import PayloadFields
from ingestor.roles import DeadLetterArgs, MqttArgs

from .checker import START_MS
from .fix_service import free_port, require_command

pytestmark = pytest.mark.slow  # the long tier; the README's runs the promise (marked) test only

SPAWN = multiprocessing.get_context("spawn")
TEMPLATE = "plant/+/scale/{scale_id}/weight"
TemplateFilter = "plant/+/scale/+/weight"


class Broker:
    """One mosquitto with persistence on a free port; ``restart()`` keeps its queued messages."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.conf = directory / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {directory}/\n"
            # no bound on a session's queue or in-flight window: the plant's rule (docs: a broker's default
            # of 1,000 queued QoS 1 messages drops the rest while the ingestor is away)
            "max_queued_messages 0\nmax_inflight_messages 0\n"
            # as root mosquitto drops to the user "mosquitto", which cannot enter pytest's 0700 directory to save
            # its persistence file; stay root there (the tests' directories are ours)
            + ("user root\n" if os.geteuid() == 0 else ""))
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with open(self.directory / "mosquitto.log", "ab") as log:
            self.proc = subprocess.Popen([require_command("mosquitto"), "-c", str(self.conf)],
                                         stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                assert self.proc.poll() is None, (self.directory / "mosquitto.log").read_text()
                assert time.monotonic() < deadline, "mosquitto did not listen"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def broker(tmp_path) -> Iterator[Broker]:
    (tmp_path / "broker").mkdir()
    b = Broker(tmp_path / "broker")
    yield b
    b.stop()


def publish(broker: Broker, messages: list[tuple[str, bytes]], qos: int = 1) -> None:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="test-publisher")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        infos = [client.publish(topic, body, qos=qos) for topic, body in messages]
        for info in infos:
            info.wait_for_publish(30)
    finally:
        client.disconnect()
        client.loop_stop()


def weighing(scale: int, seq: int) -> tuple[str, bytes]:
    return (f"plant/hall-{scale % 3}/scale/{scale}/weight",
            json.dumps({"seq": seq, "ts": START_MS + seq, "data_1": f"{seq}.5 kg"}).encode())


def open_session(broker: Broker, client_id: str = "ingestor-test", qos: int = 1) -> None:
    """Subscribe as the input's persistent session and leave: from now on the broker queues its messages (as at a
    plant where the input has run before), so a test's messages do not race the input's first subscription."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    subscribed: list[int] = []
    client.on_subscribe = lambda c, u, mid, codes, props: subscribed.append(mid)
    client.connect("127.0.0.1", broker.port)
    client.subscribe(TemplateFilter, qos)
    deadline = time.monotonic() + 10
    while not subscribed:
        assert time.monotonic() < deadline, "the broker did not confirm the subscription"
        client.loop(0.05)
    client.disconnect()


def mqtt_input(broker: Broker, svc, tmp_path: Path, **overrides) -> Child:
    """The input as a child of its own, as the supervisor starts it, but killed and restarted by the test."""
    args = MqttArgs(source=MqttConfig(broker=broker.address, topics=(TEMPLATE,), fields=PayloadFields(), **overrides),
                    client_id="ingestor-test", ack_endpoint=svc.ack_bind,
                    dead_letters=DeadLetterArgs(str(tmp_path / "dead-letters"), 1 << 20))
    c = Child(args)
    c.start(SPAWN, "info", "test")
    return c


def stored(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        rows, keys = conn.execute("SELECT count(*), count(DISTINCT (scale_id, seq)) FROM weighing_logs").fetchone()
    return rows, keys


def wait_stored(dsn: str, n: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while stored(dsn)[0] < n:
        assert time.monotonic() < deadline, f"stored {stored(dsn)} of {n}"
        time.sleep(0.1)


def queued_at_broker(broker: Broker, client_id: str = "ingestor-test") -> int:
    """Messages the broker still holds for the input's session: connect as it, count what arrives, ack none."""
    got: list[int] = []
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False, manual_ack=True)
    client.on_message = lambda c, u, m: got.append(m.mid)
    client.connect("127.0.0.1", broker.port)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        client.loop(0.05)
    client.disconnect()
    return len(got)


@pytest.mark.promise
def test_every_qos1_message_is_stored_once_and_acknowledged_only_after_commit(broker, service_factory, dsn,
                                                                              tmp_path):
    svc = service_factory("--dsn", dsn, "--writers", "2")
    svc.wait_ready()
    open_session(broker)
    c = mqtt_input(broker, svc, tmp_path)
    try:
        messages = [weighing(scale, seq) for seq in range(1, 101) for scale in range(1, 11)]
        publish(broker, messages)
        wait_stored(dsn, len(messages))
        c.terminate()
        c.join(30)
    finally:
        c.kill()
    assert stored(dsn) == (1000, 1000)
    assert queued_at_broker(broker) == 0  # every one acknowledged
    s = svc.stats()
    assert (s["persisted"], s["duplicates"], s["invalid"]) == (1000, 0, 0)


def test_an_input_killed_mid_stream_loses_nothing_the_broker_delivers_again_and_dedup_stores_once(
        broker, service_factory, dsn, tmp_path):
    state = tmp_path / "failpoints"
    state.mkdir()
    # each writer's first batch waits 8 s: the input has sent messages the ingestor has not yet answered
    svc = service_factory("--dsn", dsn, "--writers", "2",
                          env={failpoints.ENV: "writer.dedup=2*sleep(8000)", failpoints.STATE_ENV: str(state)})
    svc.wait_ready()
    messages = [weighing(scale, seq) for seq in range(1, 401) for scale in range(1, 11)]
    open_session(broker)
    c = mqtt_input(broker, svc, tmp_path)
    try:
        publish(broker, messages[:2000])
        svc.wait_for(lambda s: s["received_events"] >= 500 and s["persisted"] == 0)
        c.kill()  # SIGKILL with accepted messages unanswered, hence not acknowledged to the broker
        c.join(10)
        publish(broker, messages[2000:])  # queued for the session while the input is away
        c = mqtt_input(broker, svc, tmp_path)
        wait_stored(dsn, len(messages))
        svc.wait_for(lambda s: s["pending"] == 0 and s["received_events"] == s["persisted"] + s["duplicates"])
        c.terminate()
        c.join(30)
    finally:
        c.kill()
    assert stored(dsn) == (4000, 4000)
    assert queued_at_broker(broker) == 0
    s = svc.stats()
    assert s["persisted"] == 4000 and s["duplicates"] >= 500  # delivered again after the kill: stored once


def test_an_unmappable_message_is_a_dead_letter_with_its_topic_and_is_acknowledged(broker, service_factory, dsn,
                                                                                   tmp_path):
    svc = service_factory("--dsn", dsn)
    svc.wait_ready()
    open_session(broker)
    c = mqtt_input(broker, svc, tmp_path)
    try:
        publish(broker, [("plant/h/scale/x7/weight", b'{"seq": 1, "ts": 1}'), ("plant/h/scale/7/weight", b"12.5 kg"),
                         weighing(7, 1)])
        wait_stored(dsn, 1)
        deadline = time.monotonic() + 10
        while len(letters := list((tmp_path / "dead-letters").glob("mqtt-*.jsonl"))) < 1 or \
                len(letters[0].read_text().splitlines()) < 2:
            assert time.monotonic() < deadline, "no dead letters"
            time.sleep(0.05)
        c.terminate()
        c.join(30)
    finally:
        c.kill()
    lines = [json.loads(line) for line in letters[0].read_text().splitlines()]
    assert [(d["kind"], "plant/h/scale/" in d["reason"]) for d in lines] == [("unmappable", True)] * 2
    assert "'x7'" in lines[0]["reason"] and "payload is not JSON" in lines[1]["reason"]
    assert all(d["reason"].startswith("MQTT topic 'plant/h/scale/") for d in lines)
    assert queued_at_broker(broker) == 0


def test_qos0_messages_are_stored_while_the_input_listens(broker, service_factory, dsn, tmp_path):
    svc = service_factory("--dsn", dsn)
    svc.wait_ready()
    c = mqtt_input(broker, svc, tmp_path, qos=0)
    try:
        time.sleep(2)  # subscribed: QoS 0 reaches only a connected subscriber (at most once)
        publish(broker, [weighing(3, seq) for seq in range(1, 51)], qos=0)
        wait_stored(dsn, 50)
    finally:
        c.kill()
    assert stored(dsn) == (50, 50)


def test_the_input_restarts_its_connection_after_the_broker_restarts(broker, service_factory, dsn, tmp_path):
    svc = service_factory("--dsn", dsn)
    svc.wait_ready()
    open_session(broker)
    c = mqtt_input(broker, svc, tmp_path)
    try:
        publish(broker, [weighing(1, seq) for seq in range(1, 51)])
        wait_stored(dsn, 50)
        broker.stop()
        broker.start()
        publish(broker, [weighing(1, seq) for seq in range(51, 101)])
        wait_stored(dsn, 100)
        assert c.alive()
        c.terminate()
        c.join(30)
    finally:
        c.kill()
    assert stored(dsn) == (100, 100)
