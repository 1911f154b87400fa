"""The MQTT input: a broker's QoS 1 messages into the ingestor's acked mode, each PUBACK sent only after commit.

It subscribes on a persistent session (MQTT 3.1.1 ``clean_session=0``, or
MQTT 5 ``clean_start=0`` with a session that never expires) with manual
acknowledgement. Each loop turn takes what the broker delivered, maps each
message to its measurements (:class:`JsonMessages` for an ``[mqtt]`` table,
:class:`ingestor.sparkplug.SparkplugMessages` for ``[sparkplug]``), and
sends them as one acked message to the front's ROUTER endpoint
(docs/PROTOCOL.md §5); the PUBACK of each MQTT message goes out once the
ingestor's reply says its events are committed, in the order the messages
came (MQTT 3.1.1 §4.6; a message without measurements, a birth say, waits
for those before it). So a crash anywhere (this process, the ingestor,
the broker's connection) leaves the broker holding the message, which it
delivers again; the dedup of (scale_id, seq) stores it once and counts the
re-delivery as a duplicate.

At a stop it reads no more, waits up to ``FINISH_S`` for the replies still
due and acknowledges those messages: a clean stop leaves the broker nothing
to deliver again.

A message that cannot be mapped is written to the dead letters with its
topic (kind ``unmappable``) and then acknowledged: kept, never silently
dropped. QoS 0 messages are at most once by MQTT's own rule: the broker
sends them once and forgets them.

After the connection is lost, the message ids awaiting a reply are
forgotten (they belong to the old connection; the broker delivers those
messages again on the next one) and the connection is made again with
``RECONNECT`` backoff.
"""

from __future__ import annotations

import collections
import gc
import logging
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .backoff import Backoff
from .client import Sender
from .config import MqttConfig
from .deadletter import DeadLetterWriter
from .errors import BootError, ConfigError
from .mqtt_map import TopicTemplate, Unmappable, measurement
from .protocol import Rejected
from .roles import MqttArgs
from .shm import attached
from .sparkplug import SparkplugMessages
from .stats import INPUT_DTYPE, Counters

log = logging.getLogger(__name__)

RECONNECT = Backoff(first_s=0.5, max_s=30.0, jitter=True)  # a plant's inputs restarted together spread out
LOOP_S = 0.02  # one turn's wait for the broker: what arrives within it goes to the ingestor as one message
MAX_READS_PER_TURN = 5000  # messages read in one turn at most: a backlog goes in acked messages of this many events
KEEPALIVE_S = 30
FINISH_S = 5.0  # at a stop, how long to wait for the ingestor's replies to what was sent (each then PUBACKed)
# an acked message unanswered this long is sent to the front again: it was lost with a front that restarted.
# Long, so that a slow database does not get the same events again while it is still writing them.
RESEND_S = 30.0
SESSION_NEVER_EXPIRES = 0xFFFFFFFF  # MQTT 5 Session Expiry Interval: the broker keeps our session and queue


class JsonMessages:
    """MQTT messages with a JSON measurement on a topic naming the scale (:mod:`ingestor.mqtt_map`)."""

    def __init__(self, source: MqttConfig) -> None:
        self.source = source
        self.templates = [TopicTemplate(t) for t in source.topics]

    @property
    def filters(self) -> list[str]:
        return [t.filter for t in self.templates]

    def prepare(self, client: paho.Client) -> None:
        pass

    def connected(self) -> None:
        pass

    def stopping(self) -> None:
        pass

    def events(self, topic: str, payload: bytes) -> list[dict[str, Any]]:
        """The measurement of one message; Unmappable naming its topic and what is wrong."""
        errors = []
        for template in self.templates:
            try:
                scale = template.scale_of(topic)
                break
            except Unmappable as e:
                errors.append(str(e))
        else:
            raise Unmappable("; ".join(errors))
        try:
            return [measurement(scale, payload, self.source.fields)]
        except Unmappable as e:
            raise Unmappable(f"topic {topic!r}: {e}") from None


class Messages(Protocol):
    """What an input's messages are: :class:`JsonMessages`, or :class:`ingestor.sparkplug.SparkplugMessages`."""

    @property
    def filters(self) -> list[str]: ...  # what to subscribe to

    def prepare(self, client: paho.Client) -> None: ...  # before each connect

    def connected(self) -> None: ...  # after each connect

    def stopping(self) -> None: ...  # at a clean stop, before disconnecting

    def events(self, topic: str, payload: bytes) -> list[dict[str, Any]]: ...  # Unmappable naming the topic


@dataclass(slots=True)
class Delivery:
    """One message the broker delivered: acknowledged (PUBACK for QoS 1) once ``done``, in the order received."""

    mid: int
    qos: int
    done: bool = False


class MqttInput:
    """One connection to the broker and one acked sender to the ingestor (see the module doc).

    ``counts``: an INPUT_DTYPE record (shape ``()``) this input alone writes: its figures in the stats.
    PUBACKs go out in the order the messages came (MQTT 3.1.1 §4.6): a message
    is acknowledged once it and every message before it are committed or kept.
    """

    def __init__(self, args: MqttArgs, messages: Messages, sender: Sender, dead_letters: DeadLetterWriter,
                 counts: np.ndarray) -> None:
        self.args = args
        self.source = args.source
        self.messages = messages
        self.sender = sender
        self.dead_letters = dead_letters
        self.counts = counts
        self._batch: list[dict[str, Any]] = []  # measurements of this turn
        self._batch_deliveries: list[Delivery] = []  # their messages
        self._deliveries: collections.deque[Delivery] = collections.deque()  # not yet acknowledged, as received
        self._awaiting: dict[bytes, list[Delivery]] = {}  # token of an acked message -> its MQTT messages
        self.connected = False
        self._connecting = False  # a CONNECT sent, its CONNACK not yet read
        self._stopping = False
        self.client = self._client()

    @property
    def connected(self) -> bool:
        return bool(self.counts["connected"])

    @connected.setter
    def connected(self, value: bool) -> None:
        self.counts["connected"] = int(value)

    def _client(self) -> paho.Client:
        a = self.source
        v5 = a.protocol == "5"
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=self.args.client_id,
                             clean_session=None if v5 else False, protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
                             manual_ack=True)
        if a.username is not None:
            client.username_pw_set(a.username, _password(a.password_file))
        if a.tls_ca is not None:
            client.tls_set(ca_certs=a.tls_ca, certfile=a.tls_cert, keyfile=a.tls_key, cert_reqs=ssl.CERT_REQUIRED)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def connect(self) -> None:
        """Connect (OSError, or paho's errors, when the broker cannot be reached)."""
        host, _, port = self.source.broker.rpartition(":")
        self.messages.prepare(self.client)
        if self.source.protocol == "5":
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = SESSION_NEVER_EXPIRES
            self.client.connect(host, int(port), KEEPALIVE_S, clean_start=False, properties=properties)
        else:
            self.client.connect(host, int(port), KEEPALIVE_S)

    def _on_connect(self, client: paho.Client, userdata: object, flags: Any, reason: Any, properties: Any) -> None:
        self._connecting = False
        if reason.is_failure:
            log.error("MQTT broker %s refused the connection: %s", self.source.broker, reason)
            return
        self.connected = True
        filters = self.messages.filters
        log.info("MQTT connected to %s (session %s, %s); subscribing to %s", self.source.broker, self.args.client_id,
                 "resumed" if flags.session_present else "new", ", ".join(filters))
        client.subscribe([(f, self.qos) for f in filters])
        self.messages.connected()

    @property
    def qos(self) -> int:
        """The subscriptions' QoS: 1, or 0 for an [mqtt] table that says so (Sparkplug B: 1)."""
        return self.source.qos if isinstance(self.source, MqttConfig) else 1

    def _on_disconnect(self, client: paho.Client, userdata: object, flags: Any, reason: Any, properties: Any) -> None:
        self.connected = self._connecting = False
        if self._stopping:
            return
        forgotten = len(self._deliveries)
        self._deliveries.clear()  # their ids were the old connection's; the broker delivers them again
        self._awaiting.clear()
        self._batch.clear()
        self._batch_deliveries.clear()
        log.warning("MQTT connection to %s lost (%s); %d messages awaiting commit will be delivered again",
                    self.source.broker, reason, forgotten)

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        self.counts["received"] += 1
        self.counts["redelivered"] += bool(message.dup)
        delivery = Delivery(message.mid, message.qos)
        self._deliveries.append(delivery)
        try:
            events = self.messages.events(message.topic, bytes(message.payload))
        except Unmappable as e:
            self.counts["unmappable"] += 1
            self.dead_letters.write([Rejected("unmappable", f"MQTT {e}", None, bytes(message.payload), None)])
            self._done([delivery])  # kept as a dead letter: the broker may forget it
            return
        if not events:  # a birth, a death, another device's data: nothing to commit
            self._done([delivery])
            return
        self._batch += events
        self._batch_deliveries.append(delivery)

    def turn(self) -> None:
        """One loop turn: read from the broker, send this turn's measurements, PUBACK what is committed."""
        self.client.loop(LOOP_S)
        # paho reads one packet per loop() (its loop_read ignores max_packets): take what else has arrived, so a
        # turn's messages go to the ingestor as one acked message, not one each
        for _ in range(MAX_READS_PER_TURN):
            before = int(self.counts["received"])
            self.client.loop_read()
            if int(self.counts["received"]) == before:
                break
        if self._batch:
            token = self.sender.send(self._batch)  # one acked message (frames of at most 1,000 events)
            assert token is not None  # an acked sender gives every message a token
            self._awaiting[token] = self._batch_deliveries
            self._batch, self._batch_deliveries = [], []
        for token in self.sender.poll():
            self._done(self._awaiting.pop(token, []))  # none: sent on a connection that is gone

    def _done(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            delivery.done = True
        while self._deliveries and self._deliveries[0].done:
            delivery = self._deliveries.popleft()
            if delivery.qos:
                self.client.ack(delivery.mid, delivery.qos)
            self.counts["acknowledged"] += 1

    def run(self, stop: Callable[[], bool]) -> None:
        """Turn until ``stop()``; connect again, with backoff while it keeps failing, whenever not connected (the
        broker away, or refusing the connection: a wrong password may be mended at the broker meanwhile)."""
        failures = 0
        while not stop():
            if not self.connected and not self._connecting:
                if failures:
                    _pause(RECONNECT.delay(failures), stop)
                if not self._reconnect():
                    failures += 1
                    continue
            self.turn()
            if self.connected:
                failures = 0
            elif not self._connecting:  # lost, or refused
                failures += 1
        self._finish()
        self._stopping = True
        self.messages.stopping()
        self.client.loop_write()
        self.client.disconnect()
        c = self.counts
        log.info("MQTT input stopped: %d received, %d acknowledged, %d delivered again, %d unmappable",
                 c["received"], c["acknowledged"], c["redelivered"], c["unmappable"])

    def _finish(self) -> None:
        """At a stop: read no more, but wait up to ``FINISH_S`` for the replies still due and PUBACK those
        messages, so that a clean stop leaves the broker nothing to deliver again."""
        deadline = time.monotonic() + FINISH_S
        while self._awaiting and self.connected and (left := deadline - time.monotonic()) > 0:
            for token in self.sender.poll(min(left, 0.05)):
                self._done(self._awaiting.pop(token, []))
            self.client.loop_write()
        if self._awaiting:
            log.warning("MQTT input stopping with %d messages not yet answered by the ingestor: the broker "
                        "delivers them again on the next start (stored once)",
                        len(self._deliveries))

    def _reconnect(self) -> bool:
        try:
            self.connect()
        except (OSError, ValueError) as e:
            log.warning("MQTT broker %s unreachable: %s", self.source.broker, e)
            return False
        self._connecting = True  # the next turns read the CONNACK (on_connect) or the refusal (on_disconnect)
        return True


def _pause(seconds: float, stop: Callable[[], bool]) -> None:
    deadline = time.monotonic() + seconds
    while not stop() and time.monotonic() < deadline:
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


def _password(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        lines = Path(path).read_text().splitlines()
        return lines[0] if lines else ""
    except OSError as e:
        raise ConfigError(f"cannot read the MQTT password file {path}: {e.strerror}") from None


def run_mqtt(args: MqttArgs, stop: Callable[[], bool]) -> None:
    """Child entry (see :mod:`ingestor.child`): run the MQTT input until ``stop()``, counting in record
    ``args.slot`` of the counters block ``args.counters`` (a record of its own without one).

    Raises BootError for a template, a password file or a TLS file that cannot be used (a restart would not help).
    """
    if not args.counters:
        _serve(args, np.zeros((), INPUT_DTYPE), stop)
        return
    counters = Counters.attach(args.counters, args.lanes)
    with attached(counters):
        counts = counters.inputs[args.slot, ...]  # a 0-d view of the record
        counts["pid"] = os.getpid()
        try:
            _serve(args, counts, stop)
        finally:
            counts["connected"] = 0
        del counts
        gc.collect()  # the paho client and the input refer to each other: their view goes before the block closes


def _serve(args: MqttArgs, counts: np.ndarray, stop: Callable[[], bool]) -> None:
    dead_letters = DeadLetterWriter(args.dead_letters.directory, "mqtt", args.dead_letters.max_bytes)
    sender = Sender(args.ack_endpoint, acked=True, keep_replies=False, curve=args.curve, resend_after_s=RESEND_S)
    try:
        try:
            messages: Messages = (JsonMessages(args.source) if isinstance(args.source, MqttConfig)
                                  else SparkplugMessages(args.source, counts))
            mqtt_input = MqttInput(args, messages, sender, dead_letters, counts)
        except (ConfigError, OSError, ssl.SSLError) as e:
            raise BootError(f"{args.name} input: {e}") from None
        mqtt_input.run(stop)
    finally:
        sender.close(linger_s=0)
