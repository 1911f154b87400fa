"""The MQTT input (ingestor/mqtt.py) with a real mosquitto broker, a real service and real processes: every QoS 1
message is stored once and acknowledged to the broker only after commit, also when the input is SIGKILLed
mid-stream; an unmappable message is a dead letter with its topic, never a silent drop."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import psycopg
import pytest

from ingestor import config, failpoints
from ingestor.child import Child
from ingestor.config import MqttConfig
from ingestor.mqtt_map import PayloadFields
from ingestor.roles import DeadLetterArgs, MqttArgs

from .checker import START_MS
from .fix_service import free_port, require_command

pytestmark = pytest.mark.slow  # the long tier; the README's runs the promise (marked) test only

ROOT = Path(__file__).resolve().parent.parent
SPAWN = multiprocessing.get_context("spawn")
TEMPLATE = "plant/+/scale/{scale_id}/weight"
TemplateFilter = "plant/+/scale/+/weight"


class Broker:
    """One mosquitto with persistence on a free port; ``restart()`` keeps its queued messages.

    ``secure``: as a plant runs it: TLS only (a certificate signed by a CA of the test's own, and one required of
    each client), no anonymous clients, a password file (``admin`` for the tests' own clients; ``plant`` for the
    input, with ``plant_password``).
    """

    def __init__(self, directory: Path, secure: bool = False, plant_password: str = "plant-secret") -> None:
        self.directory = directory
        self.secure = secure
        self.port = free_port()
        self.conf = directory / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "persistence true", f"persistence_location {directory}/",
                 # no bound on a session's queue or in-flight window: the plant's rule (docs/operations.md#mqtt-input: a broker's
                 # default of 1,000 queued QoS 1 messages drops the rest while the ingestor is away)
                 "max_queued_messages 0", "max_inflight_messages 0"]
        if os.geteuid() == 0:
            # as root mosquitto drops to the user "mosquitto", which cannot enter pytest's 0700 directory to save
            # its persistence file; stay root there (the tests' directories are ours)
            lines.append("user root")
        if secure:
            self.tls = certificates(directory)
            self.passwords = directory / "passwd"
            self.set_password("admin", "admin-secret")
            self.set_password("plant", plant_password)
            lines += ["allow_anonymous false", f"password_file {self.passwords}", f"cafile {self.tls['ca']}",
                      f"certfile {self.tls['server.crt']}", f"keyfile {self.tls['server.key']}",
                      "require_certificate true"]
        else:
            lines.append("allow_anonymous true")
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def set_password(self, user: str, password: str) -> None:
        """Set ``user``'s password in the password file (mosquitto_passwd); a running broker reads it at SIGHUP."""
        create = [] if self.passwords.exists() else ["-c"]
        subprocess.run([require_command("mosquitto_passwd"), *create, "-b", str(self.passwords), user, password],
                       check=True, capture_output=True)
        self.passwords.chmod(0o600)

    def reload(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

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

    def client(self, client_id: str, **kwargs) -> paho.Client:
        """A connected test client (as ``admin``, over TLS with a client certificate, when secure); it keeps
        every message it publishes in flight at once."""
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, **kwargs)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        if self.secure:
            client.username_pw_set("admin", "admin-secret")
            client.tls_set(ca_certs=self.tls["ca"], certfile=self.tls["client.crt"], keyfile=self.tls["client.key"])
        client.connect("127.0.0.1", self.port)
        return client


def certificates(directory: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made by openssl (EC P-256, one day)."""
    openssl = require_command("openssl")
    out = {name: str(directory / name) for name in ("ca", "ca.key", "server.crt", "server.key", "client.crt",
                                                     "client.key")}

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", out["ca.key"], "-out", out["ca"], "-days", "1", "-subj", "/CN=test plant CA")
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        csr = directory / f"{name}.csr"
        (directory / f"{name}.ext").write_text(extension + "\n")
        run("req", *ec, "-keyout", out[f"{name}.key"], "-out", str(csr), "-subj", f"/CN={name}")
        run("x509", "-req", "-in", str(csr), "-CA", out["ca"], "-CAkey", out["ca.key"], "-CAcreateserial",
            "-out", out[f"{name}.crt"], "-days", "1", "-extfile", str(directory / f"{name}.ext"))
    return out


@pytest.fixture
def broker(tmp_path) -> Iterator[Broker]:
    (tmp_path / "broker").mkdir()
    b = Broker(tmp_path / "broker")
    yield b
    b.stop()


def publish(broker: Broker, messages: list[tuple[str, bytes]], qos: int = 1) -> None:
    client = broker.client("test-publisher")
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
    client = broker.client(client_id, clean_session=False)
    subscribed: list[int] = []
    client.on_subscribe = lambda c, u, mid, codes, props: subscribed.append(mid)
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
    client = broker.client(client_id, clean_session=False, manual_ack=True)
    client.on_message = lambda c, u, m: got.append(m.mid)
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


# -- the input as the service runs it: planned from the [mqtt] table, supervised, in the figures ----------------


def configured(tmp_path: Path, broker: Broker, **keys: str) -> str:
    """A configuration file with an [mqtt] table for ``broker`` (and ``keys``, TOML values as text)."""
    lines = [f'broker = "{broker.address}"', f'topics = ["{TEMPLATE}"]', 'client_id = "ingestor-test"',
             *(f"{k} = {v}" for k, v in keys.items())]
    path = tmp_path / "ingestor.toml"
    path.write_text("[mqtt]\n" + "\n".join(lines) + "\n")
    return str(path)


def mqtt_figures(svc) -> dict:
    (figures,) = svc.stats()["inputs"]
    return figures


def metric(svc, line_start: str) -> float:
    with urllib.request.urlopen(f"http://{svc.http}/metrics", timeout=5) as r:
        text = r.read().decode()
    (value,) = [line.rsplit(" ", 1)[1] for line in text.splitlines() if line.startswith(line_start + " ")]
    return float(value)


def test_a_graceful_stop_stops_the_input_first_so_the_broker_keeps_nothing_it_sent(broker, service_factory, dsn,
                                                                                    tmp_path):
    state = tmp_path / "failpoints"
    state.mkdir()
    open_session(broker)
    # each writer's first batch waits 4 s: the SIGTERM comes while the ingestor has not answered the input
    svc = service_factory("--dsn", dsn, "--writers", "2", "--config", configured(tmp_path, broker),
                          env={failpoints.ENV: "writer.dedup=2*sleep(4000)", failpoints.STATE_ENV: str(state)})
    svc.wait_ready()
    messages = [weighing(scale, seq) for seq in range(1, 101) for scale in range(1, 11)]
    publish(broker, messages)
    s = svc.wait_for(lambda s: s["inputs"][0]["received"] == 1000)
    assert s["persisted"] < 1000 and s["inputs"][0]["acknowledged"] < 1000  # answers outstanding
    assert svc.terminate() == 0
    assert stored(dsn) == (1000, 1000)
    assert queued_at_broker(broker) == 0  # the input acknowledged every one before the front stopped
    assert "MQTT input stopped: 1000 received, 1000 acknowledged, 0 delivered again, 0 unmappable" in svc.output()


def test_the_inputs_figures_count_its_messages_and_follow_its_connection_in_stats_and_metrics(
        broker, service_factory, dsn, tmp_path):
    open_session(broker)
    svc = service_factory("--dsn", dsn, "--config", configured(tmp_path, broker))
    svc.wait_ready()
    publish(broker, [weighing(7, seq) for seq in range(1, 201)] + [("plant/h/scale/x/weight", b"{}")] * 2)
    f = svc.wait_for(lambda s: s["inputs"][0]["acknowledged"] == 202)["inputs"][0]
    assert (f["name"], f["alive"], f["connected"], f["received"], f["unmappable"], f["restarts"]) == \
        ("mqtt", True, True, 202, 2, 0)
    svc.wait_for(lambda s: s["persisted"] == 200)
    assert metric(svc, 'ingestor_input_received_messages_total{input="mqtt"}') == 202
    assert metric(svc, 'ingestor_input_unmappable_messages_total{input="mqtt"}') == 2
    assert metric(svc, 'ingestor_input_connected{input="mqtt"}') == 1
    with urllib.request.urlopen(f"http://{svc.http}/metrics", timeout=5) as r:
        exported = r.read().decode()
    alerts = (ROOT / "monitoring" / "prometheus" / "alerts.yml").read_text()
    for name in set(re.findall(r"\b(ingestor_input_\w+)", alerts)):  # the inputs' alerts name real metrics
        assert f"{name}{{" in exported, name

    broker.stop()
    svc.wait_for(lambda s: not s["inputs"][0]["connected"])
    assert metric(svc, 'ingestor_input_connected{input="mqtt"}') == 0
    broker.start()
    svc.wait_for(lambda s: s["inputs"][0]["connected"])

    os.kill(mqtt_figures(svc)["pid"], signal.SIGKILL)  # the supervisor restarts it; the broker delivers again
    svc.wait_for(lambda s: s["inputs"][0]["restarts"] == 1 and s["inputs"][0]["connected"])
    publish(broker, [weighing(7, seq) for seq in range(201, 301)])
    svc.wait_for(lambda s: s["persisted"] == 300)
    assert stored(dsn) == (300, 300)
    assert svc.terminate() == 0
    assert queued_at_broker(broker) == 0


@pytest.fixture
def secure_broker(tmp_path) -> Iterator[Broker]:
    (tmp_path / "broker").mkdir()
    b = Broker(tmp_path / "broker", secure=True, plant_password="not-yet")
    yield b
    b.stop()


def test_over_tls_with_a_password_the_input_stores_everything_once_the_broker_takes_its_password(
        secure_broker, service_factory, dsn, tmp_path):
    broker = secure_broker
    password = tmp_path / "mqtt-password"
    password.write_text("plant-secret\n")
    password.chmod(0o600)
    open_session(broker)
    config_file = configured(tmp_path, broker, username='"plant"', password_file=f'"{password}"',
                        tls_ca=f'"{broker.tls["ca"]}"', tls_cert=f'"{broker.tls["client.crt"]}"',
                        tls_key=f'"{broker.tls["client.key"]}"')
    messages = [weighing(scale, seq) for seq in range(1, 51) for scale in range(1, 5)]
    publish(broker, messages)
    svc = service_factory("--dsn", dsn, "--config", config_file)
    svc.wait_ready()
    time.sleep(3)  # the broker refuses the password it does not know yet: nothing read, nothing lost
    assert not mqtt_figures(svc)["connected"] and stored(dsn) == (0, 0)
    assert f"MQTT broker 127.0.0.1:{broker.port} refused the connection: Not authorized" in svc.output()
    broker.set_password("plant", "plant-secret")  # mended at the broker, as an operator would
    broker.reload()
    wait_stored(dsn, len(messages))
    assert mqtt_figures(svc)["connected"] and stored(dsn) == (200, 200)
    assert svc.terminate() == 0
    assert queued_at_broker(broker) == 0


def test_what_is_published_while_the_ingestor_is_stopped_is_stored_once_when_it_starts_again(
        broker, service_factory, dsn, tmp_path):
    open_session(broker)
    config_file = configured(tmp_path, broker)
    svc = service_factory("--dsn", dsn, "--config", config_file)
    svc.wait_ready()
    publish(broker, [weighing(scale, seq) for seq in range(1, 51) for scale in range(1, 11)])
    svc.wait_for(lambda s: s["persisted"] == 500)
    assert svc.terminate() == 0
    publish(broker, [weighing(scale, seq) for seq in range(51, 101) for scale in range(1, 11)])  # held by the broker
    assert queued_at_broker(broker) == 500  # (this peek acknowledges none)
    svc = service_factory("--dsn", dsn, "--config", config_file)
    svc.wait_ready()
    s = svc.wait_for(lambda s: s["persisted"] == 500 and s["inputs"][0]["acknowledged"] == 500)
    assert (s["duplicates"], s["invalid"], s["inputs"][0]["received"]) == (0, 0, 500)
    assert stored(dsn) == (1000, 1000)


def test_a_database_that_stalls_delays_the_acknowledgements_and_loses_or_repeats_nothing(
        broker, service_factory, dsn, tmp_path):
    open_session(broker)
    svc = service_factory("--dsn", dsn, "--config", configured(tmp_path, broker))
    svc.wait_ready()
    with psycopg.connect(dsn) as blocker:
        blocker.execute("LOCK TABLE weighing_logs IN ACCESS EXCLUSIVE MODE")  # every COPY waits for it
        publish(broker, [weighing(scale, seq) for seq in range(1, 201) for scale in range(1, 11)])
        s = svc.wait_for(lambda s: s["inputs"][0]["received"] == 2000)
        time.sleep(6)  # longer than a client's default re-send interval (5 s)
        s = svc.stats()
        assert (s["persisted"], s["inputs"][0]["acknowledged"]) == (0, 0)  # nothing committed, nothing acknowledged
    s = svc.wait_for(lambda s: s["inputs"][0]["acknowledged"] == 2000)
    assert (s["persisted"], s["duplicates"], s["received_events"], s["inputs"][0]["received"]) == (2000, 0, 2000, 2000)
    assert stored(dsn) == (2000, 2000)
    assert svc.terminate() == 0
    assert queued_at_broker(broker) == 0


def doc_example(path: Path, name: str) -> str:
    """The code block after ``<!-- example: NAME -->`` in a document."""
    found = re.search(rf"<!-- example: {name} -->\n```\w+\n(.*?)```", path.read_text(), re.S)
    assert found, f"no example {name} in {path}"
    return found[1]


def test_the_readmes_configuration_runs_the_three_inputs_and_the_protocols_senders_store_every_weighing_once(
        broker, service_factory, dsn, tmp_path):
    """README's configuration example runs the MQTT, Sparkplug B and OPC UA inputs; PROTOCOL.md's publisher (§11.1),
    edge node (§12.1) and terminal (§13.1) send: all as written, but for the broker's and the terminal's ports
    (the examples name 1883 and 4840; these listen on free ports)."""
    protocol = ROOT / "docs" / "PROTOCOL.md"
    port = free_port()
    terminal = subprocess.Popen([sys.executable, "-c", doc_example(protocol, "opcua-terminal").replace(
        ":4840/", f":{port}/")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert terminal.stdout is not None and terminal.stdin is not None
        assert terminal.stdout.readline().startswith("serving")
        config_file = tmp_path / "ingestor.toml"
        config_file.write_text(doc_example(ROOT / "README.md", "readme-inputs").replace(
            "127.0.0.1:1883", broker.address).replace(":4840/", f":{port}/"))
        svc = service_factory("--dsn", dsn, "--config", str(config_file))
        svc.wait_ready()
        svc.wait_for(lambda s: [(i["name"], i["connected"]) for i in s["inputs"]] ==
                     [("mqtt", True), ("sparkplug", True), ("opcua", True)])
        time.sleep(1)  # subscribed (new sessions: nothing is queued for them before)
        for name, printed in (("mqtt-publisher", "published 100"), ("sparkplug-node", "published 20")):
            sender = doc_example(protocol, name).replace('"127.0.0.1", 1883', f'"127.0.0.1", {broker.port}')
            run = subprocess.run([sys.executable, "-c", sender], capture_output=True, text=True, timeout=60)
            assert run.returncode == 0 and run.stdout.strip() == printed, run.stderr
        publish(broker, [weighing(17, seq) for seq in range(101, 111)], qos=2)  # QoS 2 arrives as 1: stored once too
        terminal.stdin.write("\n")
        terminal.stdin.flush()
        assert terminal.stdout.readline().strip() == "recorded 10"
        # 110 MQTT and 20 Sparkplug B weighings of scale 17; 10 of the terminal, scale 40, and its first value
        s = svc.wait_for(lambda s: s["persisted"] == 141)
        assert [(i["name"], i["unmappable"], i["seq_gaps"]) for i in s["inputs"]] == \
            [("mqtt", 0, 0), ("sparkplug", 0, 0), ("opcua", 0, 0)]
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT scale_id, count(*) FROM weighing_logs WHERE seq > 0 GROUP BY 1 ORDER BY 1"
                                ).fetchall() == [(17, 130), (40, 10)]
        assert svc.terminate() == 0
    finally:
        terminal.kill()
        terminal.wait(10)
        for pipe in (terminal.stdin, terminal.stdout):
            if pipe is not None:
                pipe.close()


def test_the_operations_example_of_the_mqtt_table_loads_as_written(tmp_path):
    text = doc_example(ROOT / "docs" / "operations.md", "mqtt-config")
    for name in ("mqtt-password", "mqtt-ca.pem"):  # the files it names, readable here
        (tmp_path / name).write_text("x\n")
        text = text.replace(f"/etc/ingestor/{name}", str(tmp_path / name))
    (tmp_path / "ingestor.toml").write_text(text)
    cfg, _ = config.load({}, config_file=str(tmp_path / "ingestor.toml"), environ={})
    assert cfg.mqtt is not None and cfg.mqtt.broker == "mqtt.plant.local:8883" and cfg.mqtt.username == "ingestor"
    assert cfg.mqtt.fields == PayloadFields()
