"""ingestor/sparkplug.py: Sparkplug B births, data and deaths as measurements; every break in a node's sequence is
counted and answered with one rebirth request; what cannot be read is refused naming its topic, never guessed.

The edge node here is a list of payloads built with the same protobuf schema; the broker's side (publish) records
what the input would send. tests/test_mqtt.py runs the input against a real mosquitto and a playing edge node.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time

import numpy as np
import paho.mqtt.client as paho
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestor import config, sparkplug
from ingestor.config import SparkplugConfig
from ingestor.mqtt_map import Unmappable, WeighingMetrics
from ingestor.sparkplug import Payload, SparkplugMessages
from ingestor.stats import INPUT_DTYPE

from .test_mqtt import ROOT, Broker, doc_example

T0 = 1_764_064_800_000
GROUP, NODE, DEVICE = "plant", "line-1", "scale-17"


def metric(name: str | None = None, alias: int | None = None, ts: int | None = None, datatype: int | None = None,
           **value) -> object:
    m = Payload.Metric(**value)
    if name is not None:
        m.name = name
    if alias is not None:
        m.alias = alias
    if ts is not None:
        m.timestamp = ts
    if datatype is not None:
        m.datatype = datatype
    return m


def payload(seq: int | None, *metrics, ts: int = T0) -> bytes:
    p = Payload(timestamp=ts, metrics=list(metrics))
    if seq is not None:
        p.seq = seq
    return p.SerializeToString()


class EdgeNode:
    """A node with one scale device: its births name Weight (alias 1, Double), Unit (alias 2) and Tare (alias 3)."""

    def __init__(self, device: str = DEVICE) -> None:
        self.device = device
        self.seq = -1

    def next_seq(self) -> int:
        self.seq = (self.seq + 1) % 256
        return self.seq

    def nbirth(self, bd_seq: int = 0) -> tuple[str, bytes]:
        self.seq = -1
        return (f"spBv1.0/{GROUP}/NBIRTH/{NODE}",
                payload(self.next_seq(), metric("bdSeq", datatype=sparkplug.UINT64, long_value=bd_seq),
                        metric(sparkplug.REBIRTH_METRIC, datatype=sparkplug.BOOLEAN, boolean_value=False)))

    def dbirth(self) -> tuple[str, bytes]:
        return (f"spBv1.0/{GROUP}/DBIRTH/{NODE}/{self.device}",
                payload(self.next_seq(), metric("Weight", 1, T0, sparkplug.DOUBLE, double_value=0.0),
                        metric("Unit", 2, T0, sparkplug.STRING, string_value="kg"),
                        metric("Tare", 3, T0, sparkplug.FLOAT, float_value=0.0)))

    def ddata(self, weight: float, at: int, *more, seq: int | None = None) -> tuple[str, bytes]:
        return (f"spBv1.0/{GROUP}/DDATA/{NODE}/{self.device}",
                payload(self.next_seq() if seq is None else seq, metric(alias=1, ts=at, double_value=weight), *more))

    def ndeath(self, bd_seq: int = 0) -> tuple[str, bytes]:
        return f"spBv1.0/{GROUP}/NDEATH/{NODE}", payload(None, metric("bdSeq", datatype=8, long_value=bd_seq))


class Published(list):
    """What the input publishes, as (topic, payload, qos)."""

    def __call__(self, topic, body, qos=0, retain=False):
        self.append((topic, body, qos))


@pytest.fixture
def messages() -> SparkplugMessages:
    m = SparkplugMessages(SparkplugConfig(broker="127.0.0.1:1", devices=(f"{GROUP}/+/scale-{{scale_id}}",),
                                          metrics=WeighingMetrics(data=("Weight", "Unit", "Tare"))),
                          np.zeros((), INPUT_DTYPE))
    m.publish = Published()
    return m


def take(messages: SparkplugMessages, *msgs: tuple[str, bytes]) -> list[dict]:
    return [event for topic, body in msgs for event in messages.events(topic, body)]


def rebirths(messages: SparkplugMessages) -> list[str]:
    out = []
    for topic, body, qos in messages.publish:
        (m,) = Payload.FromString(body).metrics
        assert (m.name, m.boolean_value, qos) == (sparkplug.REBIRTH_METRIC, True, 0)
        out.append(topic)
    return out


def test_a_weighing_by_alias_is_one_measurement_with_its_metric_time_and_the_devices_last_values(messages):
    node = EdgeNode()
    assert take(messages, node.nbirth(), node.dbirth()) == []  # births are no weighings
    events = take(messages, node.ddata(12.5, T0 + 5), node.ddata(13.25, T0 + 9, metric(alias=2, ts=T0 + 9,
                                                                                        string_value="lb")))
    assert events == [
        {"scale_id": 17, "seq": T0 + 5, "ts": T0 + 5, "data_1": 12.5, "data_2": "kg", "data_3": 0.0},
        {"scale_id": 17, "seq": T0 + 9, "ts": T0 + 9, "data_1": 13.25, "data_2": "lb", "data_3": 0.0},
    ]
    assert (int(messages.counts["seq_gaps"]), int(messages.counts["rebirths"]), rebirths(messages)) == (0, 0, [])


def test_a_break_in_the_sequence_is_counted_and_answered_by_one_rebirth_request_per_interval(messages):
    node = EdgeNode()
    take(messages, node.nbirth(), node.dbirth(), node.ddata(1.0, T0 + 1))
    node.seq += 1  # one message lost between node and broker
    assert len(take(messages, node.ddata(2.0, T0 + 2))) == 1  # what arrives is still stored
    node.seq += 3
    take(messages, node.ddata(3.0, T0 + 3))
    assert int(messages.counts["seq_gaps"]) == 2
    assert rebirths(messages) == [f"spBv1.0/{GROUP}/NCMD/{NODE}"]  # once per REBIRTH_EVERY_S
    take(messages, node.nbirth(), node.dbirth(), node.ddata(4.0, T0 + 4))
    assert int(messages.counts["seq_gaps"]) == 2  # a birth starts the sequence again


def test_the_sequence_wraps_from_255_to_0_without_a_gap(messages):
    node = EdgeNode()
    take(messages, node.nbirth(), node.dbirth())
    events = take(messages, *[node.ddata(float(i), T0 + i) for i in range(600)])
    assert len(events) == 600 and int(messages.counts["seq_gaps"]) == 0


@settings(max_examples=60, deadline=None)
@given(lost=st.lists(st.booleans(), min_size=1, max_size=300))
def test_every_run_of_lost_messages_is_one_gap_and_everything_that_arrives_is_stored(lost):
    m = SparkplugMessages(SparkplugConfig(broker="h:1", devices=(f"{GROUP}/+/scale-{{scale_id}}",)),
                          np.zeros((), INPUT_DTYPE))
    m.publish = Published()
    node = EdgeNode()
    take(m, node.nbirth(), node.dbirth())
    stored = 0
    for i, is_lost in enumerate(lost):
        msg = node.ddata(float(i), T0 + i)
        if not is_lost:
            stored += len(m.events(*msg))
    runs = sum(1 for i, is_lost in enumerate(lost) if is_lost and (i == 0 or not lost[i - 1]) and i + 1 < len(lost)
               and not all(lost[i:]))
    assert stored == lost.count(False)
    assert int(m.counts["seq_gaps"]) == runs  # a run at the very end is not seen until the next message
    assert int(m.counts["rebirths"]) == (1 if runs else 0)  # all within one REBIRTH_EVERY_S


def test_data_before_any_birth_asks_for_a_rebirth_and_a_weighing_by_an_unknown_alias_is_refused(messages):
    node = EdgeNode()
    node.seq = 40
    with pytest.raises(Unmappable, match=r"topic 'spBv1.0/plant/DDATA/line-1/scale-17': metric alias 1 was named by "
                                         r"no birth of node plant/line-1 \(a rebirth is asked for\)"):
        messages.events(*node.ddata(1.0, T0))
    assert rebirths(messages) == [f"spBv1.0/{GROUP}/NCMD/{NODE}"]
    named = (f"spBv1.0/{GROUP}/DDATA/{NODE}/{DEVICE}", payload(42, metric("Weight", ts=T0 + 1, double_value=2.0)))
    assert take(messages, named)[0]["data_1"] == 2.0  # a weighing by name needs no birth


def test_a_death_ends_the_node_until_its_next_birth_and_an_older_sessions_death_is_ignored(messages):
    node = EdgeNode()
    take(messages, node.nbirth(bd_seq=5), node.dbirth())
    take(messages, node.ndeath(bd_seq=4))  # the will of an earlier connection, delivered late
    assert len(take(messages, node.ddata(1.0, T0 + 1))) == 1 and rebirths(messages) == []
    take(messages, node.ndeath(bd_seq=5))
    with pytest.raises(Unmappable):  # its aliases are not trusted after its death
        messages.events(*node.ddata(2.0, T0 + 2))
    assert rebirths(messages) == [f"spBv1.0/{GROUP}/NCMD/{NODE}"]


def test_other_devices_and_other_messages_give_no_measurement_and_no_refusal(messages):
    node, sensor = EdgeNode(), EdgeNode("thermometer-3")
    take(messages, node.nbirth(), node.dbirth())
    sensor.seq = node.seq
    assert take(messages, sensor.ddata(21.5, T0 + 1)) == []  # alias 1 of another device: not ours to read
    node.seq = sensor.seq
    assert take(messages, ("spBv1.0/STATE/scada", b'{"online": true}'), (f"spBv1.0/{GROUP}/NCMD/{NODE}", b"\x00"),
                (f"spBv1.0/{GROUP}/DDATA/{NODE}/{DEVICE}", payload(node.next_seq(), metric(alias=2, string_value="t"))),
                ("plant/other/topic", b"x")) == []
    assert int(messages.counts["seq_gaps"]) == 0


DATA_TYPES = [
    (sparkplug.INT8, {"int_value": 0xFFFFFFFF}, -1), (sparkplug.INT16, {"int_value": 0xFFFF8000}, -32768),
    (sparkplug.INT32, {"int_value": 7}, 7), (sparkplug.UINT32, {"int_value": 0xFFFFFFFF}, 4294967295),
    (sparkplug.INT64, {"long_value": (1 << 64) - 2}, -2), (sparkplug.UINT64, {"long_value": (1 << 64) - 2}, (1 << 64) - 2),
    (sparkplug.FLOAT, {"float_value": 12.3}, 12.3), (sparkplug.DOUBLE, {"double_value": 12.3}, 12.3),
    (sparkplug.BOOLEAN, {"boolean_value": True}, "true"), (sparkplug.STRING, {"string_value": "12,5 kg"}, "12,5 kg"),
    (sparkplug.DATETIME, {"long_value": T0}, T0), (sparkplug.DOUBLE, {"is_null": True}, None),
]


@pytest.mark.parametrize("datatype,value,expected", DATA_TYPES, ids=[f"{t}-{e}" for t, _, e in DATA_TYPES])
def test_each_data_type_is_read_as_its_value(messages, datatype, value, expected):
    node = EdgeNode()
    take(messages, node.nbirth(), node.dbirth())
    topic = f"spBv1.0/{GROUP}/DDATA/{NODE}/{DEVICE}"
    (event,) = take(messages, (topic, payload(node.next_seq(), metric(alias=1, ts=T0, double_value=1.0),
                                              metric("Tare", ts=T0, datatype=datatype, **value))))
    assert event["data_3"] == expected and type(event["data_3"]) is type(expected)


@pytest.mark.parametrize("value", [{"bytes_value": b"\x00"}, {}], ids=["bytes", "no value"])
def test_a_weighing_that_is_no_text_or_number_is_refused_naming_the_topic(messages, value):
    node = EdgeNode()
    take(messages, node.nbirth(), node.dbirth())
    topic = f"spBv1.0/{GROUP}/DDATA/{NODE}/{DEVICE}"
    with pytest.raises(Unmappable, match=rf"^topic '{topic}': metric 'Weight' holds"):
        messages.events(topic, payload(node.next_seq(), metric("Weight", ts=T0, datatype=17, **value)))


@pytest.mark.parametrize("body", [b"\xff\xff\xff", b"\x0a\x05ab"], ids=["corrupt", "truncated"])
def test_a_payload_that_is_not_sparkplug_b_is_refused_naming_the_topic(messages, body):
    with pytest.raises(Unmappable, match="payload is not a Sparkplug B payload"):
        messages.events(f"spBv1.0/{GROUP}/DDATA/{NODE}/{DEVICE}", body)


def test_historical_weighings_in_one_message_are_each_a_measurement_with_the_values_of_their_own_time(messages):
    node = EdgeNode()
    take(messages, node.nbirth(), node.dbirth())
    topic = f"spBv1.0/{GROUP}/DDATA/{NODE}/{DEVICE}"
    flushed = payload(node.next_seq(), *[m for i in range(3) for m in (
        metric(alias=1, ts=T0 + i, double_value=10.0 + i, is_historical=True),
        metric(alias=3, ts=T0 + i, float_value=float(i), is_historical=True))])
    assert [(e["ts"], e["data_1"], e["data_3"]) for e in take(messages, (topic, flushed))] == \
        [(T0, 10.0, 0.0), (T0 + 1, 11.0, 1.0), (T0 + 2, 12.0, 2.0)]


def test_a_counter_metric_is_the_seq_when_configured_and_a_weighing_without_it_is_refused():
    m = SparkplugMessages(SparkplugConfig(broker="h:1", devices=(f"{GROUP}/+/scale-{{scale_id}}",),
                                          metrics=WeighingMetrics(data=("Weight",), seq="Count")),
                          np.zeros((), INPUT_DTYPE))
    m.publish = Published()
    node = EdgeNode()
    take(m, node.nbirth(), node.dbirth())
    topic = f"spBv1.0/{GROUP}/DDATA/{NODE}/{DEVICE}"
    (event,) = take(m, (topic, payload(node.next_seq(), metric(alias=1, ts=T0, double_value=1.0),
                                       metric("Count", ts=T0, datatype=sparkplug.UINT32, int_value=4711))))
    assert event["seq"] == 4711
    with pytest.raises(Unmappable, match="the weighing comes without its 'Count' metric"):
        m.events(topic, payload(node.next_seq(), metric(alias=1, ts=T0, double_value=1.0)))


def test_the_input_subscribes_to_the_groups_its_templates_name():
    def filters(*devices: str) -> list[str]:
        return SparkplugMessages(SparkplugConfig(broker="h:1", devices=devices), np.zeros((), INPUT_DTYPE)).filters

    assert filters("plant/+/scale-{scale_id}", "yard/n/{scale_id}") == ["spBv1.0/plant/#", "spBv1.0/yard/#"]
    assert filters("+/line/{scale_id}") == ["spBv1.0/+/#"]


def test_a_rebirth_request_is_the_specifications_ncmd():
    (m,) = Payload.FromString(sparkplug.rebirth_request(T0)).metrics
    assert (m.name, m.datatype, m.boolean_value, m.timestamp) == ("Node Control/Rebirth", 11, True, T0)
    # field numbers of the specification's Payload.Metric (§6.4): name 1, timestamp 3, datatype 4, boolean_value 14
    raw = sparkplug.rebirth_request(T0)
    assert b"\x0a\x14Node Control/Rebirth" in raw and b"\x20\x0b" in raw and b"\x70\x01" in raw
    assert struct.pack("B", 0x08) + b"" in raw  # Payload.timestamp, field 1 varint


# -- with a real broker and the service -------------------------------------------------------------------


@pytest.fixture
def broker(tmp_path):
    (tmp_path / "broker").mkdir()
    b = Broker(tmp_path / "broker")
    yield b
    b.stop()


def sparkplug_service(service_factory, dsn: str, tmp_path, broker, keys: str, data: list[str]):
    """The service with a [sparkplug] table for ``broker`` (plus ``keys``, TOML lines), its input connected."""
    config_file = tmp_path / "ingestor.toml"
    config_file.write_text(f'[sparkplug]\nbroker = "{broker.address}"\ndevices = ["plant/+/scale-{{scale_id}}"]\n'
                           f'{keys}\n[sparkplug.metrics]\ndata = {json.dumps(data)}\n')
    svc = service_factory("--dsn", dsn, "--config", str(config_file))
    svc.wait_ready()
    svc.wait_for(lambda s: s["inputs"][0]["connected"])
    return svc


@pytest.mark.slow
def test_an_edge_node_through_a_real_broker_stores_what_arrives_and_is_asked_to_be_born_again_after_a_loss(
        broker, service_factory, dsn, tmp_path):
    svc = sparkplug_service(service_factory, dsn, tmp_path, broker, 'host_id = "ingestor-test"',
                            ["Weight", "Unit", "Tare"])

    node = EdgeNode()
    heard: list[tuple[str, bytes]] = []
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"{NODE}-edge")
    client.will_set(*node.ndeath(bd_seq=0), qos=1)
    client.on_message = lambda c, u, m: heard.append((m.topic, bytes(m.payload)))
    client.connect("127.0.0.1", broker.port)
    client.subscribe([("spBv1.0/STATE/ingestor-test", 1), (f"spBv1.0/{GROUP}/NCMD/{NODE}", 0)])
    client.loop_start()

    def wait_heard(topic: str, count: int = 1) -> list[bytes]:
        deadline = time.monotonic() + 30
        while len(got := [b for t, b in heard if t == topic]) < count:
            assert time.monotonic() < deadline, f"heard {heard}"
            time.sleep(0.05)
        return got

    def send(*msgs: tuple[str, bytes]) -> None:
        for topic, body in msgs:
            client.publish(topic, body, qos=0).wait_for_publish(10)  # Sparkplug: births and data at QoS 0

    try:
        assert json.loads(wait_heard("spBv1.0/STATE/ingestor-test")[0])["online"] is True  # the host is there
        send(node.nbirth(), node.dbirth(), *[node.ddata(float(i), T0 + i) for i in range(1, 51)])
        node.next_seq()  # weighing 51 is lost between node and broker
        send(*[node.ddata(float(i), T0 + i) for i in range(52, 101)])
        wait_heard(f"spBv1.0/{GROUP}/NCMD/{NODE}")  # asked to be born again
        send(node.nbirth(), node.dbirth(), *[node.ddata(float(i), T0 + i) for i in range(101, 111)])
        svc.wait_for(lambda s: s["persisted"] == 109)
        send(node.ndeath(bd_seq=0))  # a clean death, then data without a birth: refused, and a rebirth asked for
        time.sleep(sparkplug.REBIRTH_EVERY_S)
        send(node.ddata(111.0, T0 + 111))
        # the dead letter, and every message acknowledged (in order: the last one once those before it are)
        f = svc.wait_for(lambda s: s["inputs"][0]["unmappable"] == 1 and
                         s["inputs"][0]["received"] == s["inputs"][0]["acknowledged"])["inputs"][0]
        assert (f["name"], f["seq_gaps"], f["rebirths"]) == ("sparkplug", 1, 2)
    finally:
        client.loop_stop()
        client.disconnect()
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT scale_id, seq, measured_at = to_timestamp(seq / 1000.0), data_1, data_2 "
                            "FROM weighing_logs ORDER BY seq").fetchall()
    assert [r[1] - T0 for r in rows] == [i for i in range(1, 111) if i != 51]
    assert all(r[0] == 17 and r[2] for r in rows) and rows[0][3:] == ({"val": "1"}, {"val": "kg"})  # as any number
    assert svc.terminate() == 0
    retained: list[bytes] = []
    reader = broker.client("state-reader")
    reader.on_message = lambda c, u, m: retained.append(bytes(m.payload))
    reader.subscribe("spBv1.0/STATE/ingestor-test", 1)
    deadline = time.monotonic() + 10
    while not retained and time.monotonic() < deadline:
        reader.loop(0.05)
    reader.disconnect()
    assert json.loads(retained[0])["online"] is False  # the host said offline at its stop


@pytest.mark.slow
def test_the_protocols_edge_node_example_stores_its_twenty_weighings(broker, service_factory, dsn, tmp_path):
    svc = sparkplug_service(service_factory, dsn, tmp_path, broker, "", ["Weight", "Unit"])
    time.sleep(0.5)  # subscribed: QoS 0 data reaches only a subscriber (PROTOCOL.md §12)
    node = doc_example(ROOT / "docs" / "PROTOCOL.md", "sparkplug-node").replace('"127.0.0.1", 1883',
                                                                            f'"127.0.0.1", {broker.port}')
    run = subprocess.run([sys.executable, "-c", node], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "published 20", run.stderr
    svc.wait_for(lambda s: s["persisted"] == 20)
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT scale_id, data_1, data_2 FROM weighing_logs ORDER BY seq").fetchall()
    assert rows[0] == (17, {"val": "1000.5"}, {"val": "kg"}) and len(rows) == 20
    assert svc.stats()["inputs"][0]["seq_gaps"] == 0
    assert svc.terminate() == 0


def test_the_operations_example_of_the_sparkplug_table_loads_as_written(tmp_path):
    text = doc_example(ROOT / "docs" / "operations.md", "sparkplug-config")
    for name in ("mqtt-password", "mqtt-ca.pem"):
        (tmp_path / name).write_text("x\n")
        text = text.replace(f"/etc/ingestor/{name}", str(tmp_path / name))
    (tmp_path / "ingestor.toml").write_text(text)
    cfg, _ = config.load({}, config_file=str(tmp_path / "ingestor.toml"), environ={})
    assert cfg.sparkplug is not None and cfg.sparkplug.host_id == "scale-ingestor"
    assert cfg.sparkplug.metrics == WeighingMetrics(data=("Weight", "Unit", "Tare"))
