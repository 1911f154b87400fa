"""Sparkplug B edge nodes' weighings as measurements (Eclipse Sparkplug 3.0).

An edge node publishes on ``spBv1.0/GROUP/TYPE/NODE[/DEVICE]``: a birth
certificate (NBIRTH, then DBIRTH per device) names each metric, its type and
the alias later messages may use instead of the name; NDATA and DDATA carry
changed values only (report by exception); NDEATH and DDEATH say a node or
a device is gone. Every message of a node but NDEATH carries a sequence
number 0 … 255, one more than the node's previous message (§6.4.19).

:class:`SparkplugMessages` keeps, per edge node, the aliases and the last
value of every metric, and maps the messages of the devices a template
names (``plant/+/scale-{scale_id}`` over ``GROUP/NODE/DEVICE``, or
``GROUP/NODE`` for a node's own metrics) to measurements: each value of the
weighing metric (``WeighingMetrics.data[0]``) in an NDATA or DDATA message is
one, with its metric timestamp as ``ts``; the other data fields are those
metrics' values in the same message, else their last values.

When the sequence breaks (a message lost between node and ingestor), or a
message comes from a node whose birth was not seen (the input started after
it, or the node's death came first), the node is asked to be born again:
an NCMD with ``Node Control/Rebirth`` = true, at most once per
``REBIRTH_EVERY_S``; both are counted (``seq_gaps``, ``rebirths``). A
message whose weighing cannot be read (an alias no birth named, a value of
a type that is no text or number) is a dead letter naming the topic.

The guarantee is Sparkplug's: NDATA and DDATA are QoS 0 messages (§4.1),
so a message lost on the way is lost; the sequence number says so, and the
rebirth brings the current values, not the lost ones. With ``host_id`` the
input announces itself as the Primary Host Application of that id (a
retained ``spBv1.0/STATE/HOST`` message, and its will saying offline): edge
nodes configured for that host keep their data while it is offline and send
it as historical metrics once it is back, which the input stores like any
other (a repeat is a duplicate).

The payload is protobuf; the schema below declares the fields of the
specification's ``Payload`` and ``Payload.Metric`` (§6.4) the input reads,
by their numbers: protobuf skips the others (properties, metadata, data
sets, templates).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from .config import SparkplugConfig
from .mqtt_map import TopicTemplate, Unmappable

log = logging.getLogger(__name__)

NAMESPACE = "spBv1.0"
REBIRTH_METRIC = "Node Control/Rebirth"
REBIRTH_EVERY_S = 5.0  # a node asked to be born again is not asked again before this
SEQ_MODULO = 256

# Sparkplug B data types (§6.4.16) the input reads as a data field's value
INT8, INT16, INT32, INT64, UINT8, UINT16, UINT32, UINT64 = 1, 2, 3, 4, 5, 6, 7, 8
FLOAT, DOUBLE, BOOLEAN, STRING, DATETIME, TEXT, UUID = 9, 10, 11, 12, 13, 14, 15


def _schema() -> descriptor_pb2.FileDescriptorProto:
    """``Payload`` and ``Payload.Metric`` of §6.4, the fields the input reads, by the specification's numbers."""
    f = descriptor_pb2.FieldDescriptorProto
    schema = descriptor_pb2.FileDescriptorProto(name="ingestor_sparkplug_b.proto", package="ingestor.sparkplug_b",
                                                syntax="proto2")
    payload = schema.message_type.add(name="Payload")
    metric = payload.nested_type.add(name="Metric")
    metric.oneof_decl.add(name="value")
    for name, number, kind in (
            ("name", 1, f.TYPE_STRING), ("alias", 2, f.TYPE_UINT64), ("timestamp", 3, f.TYPE_UINT64),
            ("datatype", 4, f.TYPE_UINT32), ("is_historical", 5, f.TYPE_BOOL), ("is_transient", 6, f.TYPE_BOOL),
            ("is_null", 7, f.TYPE_BOOL), ("int_value", 10, f.TYPE_UINT32), ("long_value", 11, f.TYPE_UINT64),
            ("float_value", 12, f.TYPE_FLOAT), ("double_value", 13, f.TYPE_DOUBLE), ("boolean_value", 14, f.TYPE_BOOL),
            ("string_value", 15, f.TYPE_STRING), ("bytes_value", 16, f.TYPE_BYTES)):
        added = metric.field.add(name=name, number=number, type=kind, label=f.LABEL_OPTIONAL)
        if number >= 10:
            added.oneof_index = 0
    for name, number, kind in (("timestamp", 1, f.TYPE_UINT64), ("seq", 3, f.TYPE_UINT64), ("uuid", 4, f.TYPE_STRING),
                               ("body", 5, f.TYPE_BYTES)):
        payload.field.add(name=name, number=number, type=kind, label=f.LABEL_OPTIONAL)
    payload.field.add(name="metrics", number=2, type=f.TYPE_MESSAGE, label=f.LABEL_REPEATED,
                      type_name=".ingestor.sparkplug_b.Payload.Metric")
    return schema


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_schema())
Payload: Any = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("ingestor.sparkplug_b.Payload"))


def rebirth_request(now_ms: int) -> bytes:
    """The payload of an NCMD asking a node to publish its births again (§6.4.22 ``Node Control/Rebirth``)."""
    return Payload(timestamp=now_ms, metrics=[Payload.Metric(name=REBIRTH_METRIC, timestamp=now_ms, datatype=BOOLEAN,
                                                             boolean_value=True)]).SerializeToString()


def value_of(metric: Any, datatype: int) -> str | int | float | None:
    """A metric's value as a data field: text, a number, or None (``is_null``). Unmappable for a type that is
    neither (bytes, data sets, arrays, ...). ``datatype``: the metric's type, from its birth when the message
    leaves it out (§6.4.17)."""
    if metric.is_null:
        return None
    kind = metric.WhichOneof("value")
    if kind == "int_value":
        raw = int(metric.int_value)
        return raw - (1 << 32) if datatype in (INT8, INT16, INT32) and raw >= 1 << 31 else raw
    if kind == "long_value":
        raw = int(metric.long_value)
        return raw - (1 << 64) if datatype == INT64 and raw >= 1 << 63 else raw
    if kind == "float_value":  # a 32-bit float: its shortest decimal (12.3, not 12.300000190734863)
        return float(str(np.float32(metric.float_value))) if math.isfinite(metric.float_value) else metric.float_value
    if kind == "double_value":
        return float(metric.double_value)
    if kind == "boolean_value":
        return "true" if metric.boolean_value else "false"
    if kind == "string_value":
        return str(metric.string_value)
    raise Unmappable(f"metric {metric.name or metric.alias!r} holds {kind or 'no value'} (type {datatype}), "
                     "not text or a number")


@dataclass
class Node:
    """What the input knows of one edge node since its birth."""

    seq: int | None = None  #: its last message's sequence number; None before its birth and after its death
    bd_seq: int | None = None  #: the birth/death sequence its NBIRTH gave (§6.4.20), matched by its NDEATH
    names: dict[int, str] = field(default_factory=dict)  #: alias -> metric name, from the births
    types: dict[str, int] = field(default_factory=dict)  #: metric name -> data type, from the births
    last: dict[str, dict[str, Any]] = field(default_factory=dict)  #: device ("" the node) -> name -> last metric
    rebirth_at: float = -math.inf  #: when a rebirth was last asked for (monotonic s)


class SparkplugMessages:
    """The Sparkplug B messages of an MQTT input (see the module doc).

    ``counts``: the input's INPUT_DTYPE record (``seq_gaps`` and ``rebirths`` are counted in it); ``publish``:
    the MQTT client's ``publish(topic, payload, qos, retain)``, for the NCMD rebirth requests.
    """

    def __init__(self, source: SparkplugConfig, counts: np.ndarray) -> None:
        self.source = source
        self.metrics = source.metrics
        self.templates = [TopicTemplate(t) for t in source.devices]
        self.counts = counts
        self.nodes: dict[tuple[str, str], Node] = {}
        self.publish: Callable[..., Any] | None = None
        self._online_ms = 0

    @property
    def filters(self) -> list[str]:
        """One subscription per group the templates name (``+``: every group)."""
        groups = {t.filter.split("/")[0] for t in self.templates}
        return [f"{NAMESPACE}/+/#"] if "+" in groups or "#" in groups else [f"{NAMESPACE}/{g}/#" for g in sorted(groups)]

    def prepare(self, client: Any) -> None:
        """Before each connect: the will that says this host is offline (with ``host_id``)."""
        self.publish = client.publish
        if self.source.host_id:
            self._online_ms = int(time.time() * 1000)
            client.will_set(self._state_topic, self._state(False), qos=1, retain=True)

    def connected(self) -> None:
        """After each connect: this host is online (with ``host_id``; §7.5, a retained STATE message)."""
        if self.source.host_id and self.publish is not None:
            self.publish(self._state_topic, self._state(True), qos=1, retain=True)

    def stopping(self) -> None:
        """At a clean stop, before disconnecting: this host is offline."""
        if self.source.host_id and self.publish is not None:
            self.publish(self._state_topic, self._state(False), qos=1, retain=True)

    @property
    def _state_topic(self) -> str:
        return f"{NAMESPACE}/STATE/{self.source.host_id}"

    def _state(self, online: bool) -> bytes:
        return json.dumps({"online": online, "timestamp": self._online_ms}).encode()

    def events(self, topic: str, body: bytes) -> list[dict[str, Any]]:
        """The measurements of one message (none for births, deaths, other devices' data, other metrics).

        Unmappable naming the topic when a scale's message cannot be read.
        """
        levels = topic.split("/")
        if len(levels) not in (4, 5) or levels[0] != NAMESPACE or levels[1] == "STATE":
            return []  # a host's STATE, or no Sparkplug B topic: nothing of an edge node
        group, kind, node_id = levels[1], levels[2], levels[3]
        device = levels[4] if len(levels) == 5 else ""
        if kind in ("NCMD", "DCMD"):
            return []
        try:
            payload = Payload.FromString(body)
        except DecodeError as e:
            raise Unmappable(f"topic {topic!r}: payload is not a Sparkplug B payload: {e}") from None
        node = self._node(group, node_id, kind, payload)
        if node is None:
            return []
        scale = self._scale_of(group, node_id, device)
        try:
            metrics = self._named(node, payload, group, node_id, wanted=scale is not None)
            if kind in ("NBIRTH", "DBIRTH"):
                self._born(node, device, metrics)
                return []
            if kind not in ("NDATA", "DDATA") or scale is None:
                return []
            return self._measurements(node, device, scale, payload, metrics)
        except Unmappable as e:
            raise Unmappable(f"topic {topic!r}: {e}") from None

    def _node(self, group: str, node_id: str, kind: str, payload: Any) -> Node | None:
        """The node's state after the sequence check of this message; None for a death."""
        key = (group, node_id)
        if kind == "NBIRTH":
            node = self.nodes[key] = Node(seq=int(payload.seq))
            node.bd_seq = next((int(m.long_value) for m in payload.metrics if m.name == "bdSeq"), None)
            return node
        node = self.nodes.setdefault(key, Node())
        if kind == "NDEATH":
            bd_seq = next((int(m.long_value) for m in payload.metrics if m.name == "bdSeq"), None)
            if bd_seq is None or node.bd_seq is None or bd_seq == node.bd_seq:  # else an older session's will
                self.nodes[key] = Node(rebirth_at=node.rebirth_at)  # its next session names its metrics anew
            return None
        if node.seq is None:
            log.warning("Sparkplug node %s/%s sent %s before its birth: asking for a rebirth", group, node_id, kind)
            self._rebirth(group, node_id, node)
            return node
        expected = (node.seq + 1) % SEQ_MODULO
        if int(payload.seq) != expected:
            self.counts["seq_gaps"] += 1
            log.warning("Sparkplug node %s/%s: seq %d after %d (%d expected): messages lost; asking for a rebirth",
                        group, node_id, payload.seq, node.seq, expected)
            self._rebirth(group, node_id, node)
        node.seq = int(payload.seq)
        return node

    def _rebirth(self, group: str, node_id: str, node: Node) -> None:
        now = time.monotonic()
        if now - node.rebirth_at < REBIRTH_EVERY_S or self.publish is None:
            return
        node.rebirth_at = now
        self.counts["rebirths"] += 1
        self.publish(f"{NAMESPACE}/{group}/NCMD/{node_id}", rebirth_request(int(time.time() * 1000)), qos=0)

    def _scale_of(self, group: str, node_id: str, device: str) -> int | None:
        path = f"{group}/{node_id}/{device}" if device else f"{group}/{node_id}"
        for template in self.templates:
            try:
                return template.scale_of(path)
            except Unmappable:
                continue
        return None

    def _named(self, node: Node, payload: Any, group: str, node_id: str, wanted: bool) -> list[tuple[str, Any]]:
        """The message's metrics with their names (a birth names its aliases). Unmappable for an alias no birth
        named when ``wanted`` (a scale's message); another device's such metrics are left out."""
        named = []
        for metric in payload.metrics:
            if metric.name:
                if metric.HasField("alias"):
                    node.names[int(metric.alias)] = metric.name
                if metric.HasField("datatype"):
                    node.types[metric.name] = int(metric.datatype)
                named.append((metric.name, metric))
            elif (name := node.names.get(int(metric.alias))) is not None:
                named.append((name, metric))
            elif wanted:
                self._rebirth(group, node_id, node)
                raise Unmappable(f"metric alias {metric.alias} was named by no birth of node {group}/{node_id} "
                                 "(a rebirth is asked for)")
        return named

    def _born(self, node: Node, device: str, metrics: list[tuple[str, Any]]) -> None:
        node.last[device] = dict(metrics)

    def _measurements(self, node: Node, device: str, scale: int, payload: Any,
                      metrics: list[tuple[str, Any]]) -> list[dict[str, Any]]:
        last = node.last.setdefault(device, {})
        weighing, *others = self.metrics.data
        events = []
        for name, metric in metrics:
            if name != weighing:
                continue
            ts = int(metric.timestamp or payload.timestamp)
            if not ts:
                raise Unmappable(f"metric {weighing!r} has no timestamp, nor has its payload")
            event: dict[str, Any] = {"scale_id": scale, "seq": self._seq(metrics, ts), "ts": ts,
                                     "data_1": value_of(metric, node.types.get(name, int(metric.datatype)))}
            for k, other in enumerate(others, 2):
                found = next((m for n, m in metrics if n == other and int(m.timestamp or payload.timestamp) == ts),
                             last.get(other))
                event[f"data_{k}"] = None if found is None else value_of(found, node.types.get(other, found.datatype))
            events.append(event)
        last.update(metrics)
        return events

    def _seq(self, metrics: list[tuple[str, Any]], ts: int) -> int:
        if not self.metrics.seq:
            return ts
        counter = next((m for n, m in metrics if n == self.metrics.seq), None)
        if counter is None:
            raise Unmappable(f"the weighing comes without its {self.metrics.seq!r} metric")
        seq = value_of(counter, UINT64)
        if not isinstance(seq, int) or seq < 0:
            raise Unmappable(f"metric {self.metrics.seq!r} is {seq!r}: not an integer ≥ 0")
        return seq
