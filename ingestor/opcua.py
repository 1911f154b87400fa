"""The OPC UA input: weighing terminals' variables into the ingestor's acked mode, each notification acknowledged
to the server only after commit.

One subscription (OPC UA Part 4 §5.13) monitors the variables an
``[[opcua.scales]]`` table names, each with a queue of ``queue_size`` data
changes, so the changes between two notifications are all delivered, in
order. Every change of a scale's weighing variable is one measurement: its
source timestamp is ``ts``, the other data fields are those variables'
values at that time (the same notification, else their last values).

A notification is acknowledged to the server with the client's next Publish
request, which asyncua sends only after the callback for the notification
has returned; :class:`CommittingSubscription` returns only once the
ingestor has answered that its events are committed. So the server keeps
every notification not committed in its retransmission queue: after a
session loss asyncua reconnects, transfers the subscription to the new
session and republishes the notifications after the last one committed
(``auto_reconnect``); after this process dies, its successor reads the
subscription's id and last sequence number from ``state_file`` and does the
same. Republished notifications count as ``redelivered``; their events,
stored before, as duplicates.

What OPC UA cannot give back is counted in ``seq_gaps`` and logged: a
server's queue that overflowed (the Overflow bit of a data change: more
changes between two notifications than ``queue_size``), and a subscription
the server no longer had (its lifetime ran out, the server restarted): the
changes since the last committed notification are lost, each variable's
current value arrives as the new subscription's first. A clean stop closes
the session and its subscription: what changes while the service is stopped
arrives as each variable's then current value only.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from asyncua import Client, ua
from asyncua.client.ua_session import UaSession
from asyncua.common.subscription import Subscription
from asyncua.ua.uaerrors import BadMessageNotAvailable

from .backoff import Backoff
from .client import Sender
from .config import OpcuaConfig
from .deadletter import DeadLetterWriter
from .errors import BootError, ConfigError
from .mqtt_map import Unmappable
from .protocol import Rejected
from .roles import OpcuaArgs
from .shm import attached
from .stats import INPUT_DTYPE, Counters

log = logging.getLogger(__name__)

RECONNECT = Backoff(first_s=0.5, max_s=30.0, jitter=True)
FINISH_S = 5.0  # at a stop, how long the notification in hand may wait for its commit
REPLY_POLL_S = 0.005  # how often a notification waiting for its commit looks for the ingestor's reply
RESEND_S = 30.0  # as ingestor/mqtt.py: a front that restarted lost the message; a slow database did not
LIFETIME_COUNT = 10_000  # publishing intervals the server keeps the subscription without a Publish request
SEQ_FIELD = 5  # the field index of a scale's counter variable, after data_1 … data_5
_OVERFLOW = 0x0480  # StatusCode info bits: InfoType DataValue and Overflow (Part 4 §7.39)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def handle(scale: int, field: int) -> int:
    """The client handle of field ``field`` (0 … 4 data, 5 the counter) of configured scale ``scale``: fixed by
    the configuration, so a successor process reads a transferred subscription's notifications the same way."""
    return scale * 8 + field + 1


class Scales:
    """What each monitored variable is, and the last value of each, per configured scale."""

    def __init__(self, scales: tuple[Any, ...]) -> None:
        self.scales = scales
        self.last: list[list[ua.DataValue | None]] = [[None] * (SEQ_FIELD + 1) for _ in scales]
        self.counted: list[tuple[int, int] | None] = [None] * len(scales)  # each scale's last weighing: counter, ts

    def requests(self, queue_size: int, sampling_ms: float) -> list[ua.MonitoredItemCreateRequest]:
        out = []
        for i, scale in enumerate(self.scales):
            for field, node in [*enumerate(scale.data), (SEQ_FIELD, scale.seq)]:
                if not node:
                    continue
                params = ua.MonitoringParameters(ClientHandle=handle(i, field), SamplingInterval=sampling_ms,
                                                 QueueSize=queue_size, DiscardOldest=True)
                out.append(ua.MonitoredItemCreateRequest(
                    ItemToMonitor=ua.ReadValueId(NodeId=ua.NodeId.from_string(node), AttributeId=ua.AttributeIds.Value),
                    MonitoringMode=ua.MonitoringMode.Reporting, RequestedParameters=params))
        return out

    def take(self, items: list[ua.MonitoredItemNotification]) -> tuple[list[dict[str, Any]], list[str], int]:
        """The measurements of one notification's data changes, the reasons of those that cannot be read, and how
        many variables' queues overflowed."""
        events: list[dict[str, Any]] = []
        refused: list[str] = []
        overflows = 0
        # in time order; at one time the other variables before the weighing, which then sees them
        for item in sorted(items, key=lambda n: (_millis(n.Value) or 0, (n.ClientHandle - 1) % 8 == 0)):
            scale, field = divmod(item.ClientHandle - 1, 8)
            if scale >= len(self.scales) or field > SEQ_FIELD:
                continue
            overflows += bool(item.Value.StatusCode and item.Value.StatusCode.value & _OVERFLOW == _OVERFLOW)
            self.last[scale][field] = item.Value
            if field == 0:
                try:
                    events.append(self._measurement(scale, item.Value))
                except Unmappable as e:
                    refused.append(f"scale {self.scales[scale].scale_id} ({self.scales[scale].data[0]}): {e}")
        return events, refused, overflows

    def _measurement(self, i: int, weighing: ua.DataValue) -> dict[str, Any]:
        scale = self.scales[i]
        if weighing.StatusCode is not None and not weighing.StatusCode.is_good():
            raise Unmappable(f"status {weighing.StatusCode.name}")
        ts = _millis(weighing)
        if ts is None:
            raise Unmappable("the data change has no source or server timestamp")
        event: dict[str, Any] = {"scale_id": scale.scale_id, "seq": self._seq(i, ts), "ts": ts}
        for k in range(len(scale.data)):
            value = self.last[i][k]
            event[f"data_{k + 1}"] = None if value is None else _plain(value)
        return event

    def _seq(self, i: int, ts: int) -> int:
        if not self.scales[i].seq:
            return ts
        counter = self.last[i][SEQ_FIELD]
        value = None if counter is None else _plain(counter)
        if not isinstance(value, int) or value < 0:
            raise Unmappable(f"counter {self.scales[i].seq} is {value!r}: not an integer ≥ 0")
        last = self.counted[i]
        if last is not None and last[0] == value and last[1] != ts:  # a new weighing would pass for the last: no guess
            raise Unmappable(f"counter {self.scales[i].seq} is still {value}, the previous weighing's")
        self.counted[i] = (value, ts)  # the same weighing again (a new subscription's first values): a duplicate
        return value


def _millis(value: ua.DataValue) -> int | None:
    """The data change's source timestamp (else the server's) in ms since the epoch; None without either."""
    moment = value.SourceTimestamp or value.ServerTimestamp
    return None if moment is None else _epoch_ms(moment)


def _epoch_ms(moment: dt.datetime) -> int:
    moment = moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)  # asyncua's are UTC without a zone
    return (moment - _EPOCH) // dt.timedelta(milliseconds=1)


def _plain(value: ua.DataValue) -> str | int | float | None:
    """A variable's value as a data field: text, a number or None; Unmappable for anything else."""
    v = value.Value.Value if value.Value is not None else None
    if v is None or isinstance(v, (str, int, float)) and not isinstance(v, bool):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dt.datetime):
        return _epoch_ms(v)
    raise Unmappable(f"value {v!r} ({type(v).__name__}) is not text or a number")


class CommittingSubscription(Subscription):
    """A subscription whose notifications asyncua acknowledges only once their events are committed: the publish
    callback, which asyncua awaits before acknowledging, returns only then."""

    def __init__(self, session: Any, params: ua.CreateSubscriptionParameters, owner: OpcuaInput) -> None:
        super().__init__(session, params, handler=None)
        self.owner = owner

    async def publish_callback(self, publish_result: ua.PublishResult) -> None:
        self.last_publish_at = time.monotonic()
        message = publish_result.NotificationMessage
        if not message.NotificationData:
            return  # a keep-alive
        await self.owner.take(message, replayed=self._replaying)
        self.last_sequence_number = int(message.SequenceNumber)  # after the commit: a restore republishes from here
        self.owner.remember(self)

    async def _republish_gaps(self, available: list[int]) -> bool:
        """After a transfer: republish, in order, the notifications the server still holds past the last one
        committed (``available``: its retransmission queue's numbers). Replaces asyncua 2.1's, which counts up from
        the last number until the server says BadMessageNotAvailable, and so never ends with a server that answers
        an unknown number with an empty message (asyncua's own does). False when the connection failed meanwhile;
        a number missing between the last committed and the first available is counted as a gap."""
        last, subscription, session = self.last_sequence_number or 0, self.subscription_id, self.server
        assert subscription is not None and isinstance(session, UaSession)  # what restore() transfers
        wanted = sorted(n for n in available if n > last)
        if wanted and wanted[0] != last + 1 and last:
            self.owner.lost(f"notifications {last + 1} … {wanted[0] - 1} are no longer held by the server")
        self._replaying = True
        try:
            for number in wanted:
                try:
                    message = await session.republish(subscription, number)
                except BadMessageNotAvailable:
                    self.owner.lost(f"notification {number} is no longer held by the server")
                    continue
                except Exception:  # the connection: the next reconnect transfers again
                    log.warning("Republishing notification %s of subscription %s failed", number, self.subscription_id,
                                exc_info=True)
                    return False
                await self.publish_callback(ua.PublishResult(self.subscription_id, NotificationMessage=message))
        finally:
            self._replaying = False
        return True

    async def recreate(self) -> None:
        """The server no longer has the subscription: a new one, its items again; what changed since is lost.
        With the connection gone meanwhile, nothing: the next reconnect tries the transfer again."""
        if not self.owner.client.uaclient.has_transport:
            raise ConnectionError("the connection to the OPC UA server is gone; the next reconnect transfers again")
        self.owner.counts["seq_gaps"] += 1
        log.warning("OPC UA server %s no longer has subscription %s: data changes after notification %s are lost; "
                    "subscribing again", self.owner.source.endpoint, self.subscription_id, self.last_sequence_number)
        self._monitored_items.clear()
        self.subscription_id = None
        await self.init()
        await self.owner.monitor(self)


class OpcuaInput:
    """One client of the OPC UA server and one acked sender to the ingestor (see the module doc).

    ``counts``: an INPUT_DTYPE record this input alone writes: its figures in the stats.
    """

    def __init__(self, args: OpcuaArgs, sender: Sender, dead_letters: DeadLetterWriter, counts: np.ndarray) -> None:
        self.args = args
        self.source: OpcuaConfig = args.source
        self.sender = sender
        self.dead_letters = dead_letters
        self.counts = counts
        self.scales = Scales(args.source.scales)
        self.state_file = Path(args.state_file)
        self.client = Client(self.source.endpoint)
        self.client.name = self.client.description = args.session
        self.client.connection_lost_callback = self._lost
        self._busy = False  # a notification is waiting for its commit
        self._answered: set[bytes | None] = set()  # tokens answered, not yet taken by their waiting notification

    async def _lost(self, error: Exception) -> None:
        self.counts["connected"] = 0
        log.warning("OPC UA connection to %s lost (%s); asyncua reconnects and restores the subscription",
                    self.source.endpoint, error)

    async def take(self, message: ua.NotificationMessage, replayed: bool) -> None:
        """Map one notification and wait until the ingestor has committed its events (or kept them as dead
        letters)."""
        self.counts["connected"] = 1
        self.counts["received"] += 1
        self.counts["redelivered"] += replayed
        items = [item for data in message.NotificationData if isinstance(data, ua.DataChangeNotification)
                 for item in data.MonitoredItems]
        events, refused, overflows = self.scales.take(items)
        if overflows:
            self.counts["seq_gaps"] += overflows
            log.warning("OPC UA server %s: %d variables' queues overflowed before notification %d: data changes "
                        "lost (raise queue_size)", self.source.endpoint, overflows, message.SequenceNumber)
        if refused:
            self.counts["unmappable"] += len(refused)
            self.dead_letters.write([Rejected("unmappable", f"OPC UA {reason}", None, reason.encode(), None)
                                     for reason in refused])
        self._busy = True
        try:
            if events:
                await self._committed(self.sender.send(events))
        finally:
            self._busy = False
        self.counts["acknowledged"] += 1

    async def _committed(self, token: bytes | None) -> None:
        while token not in self._answered:  # a republished notification may wait beside a new one: one pool of replies
            self._answered.update(self.sender.poll())
            if token not in self._answered:
                await asyncio.sleep(REPLY_POLL_S)
        self._answered.discard(token)

    def lost(self, what: str) -> None:
        """Data changes the server can no longer give: counted in ``seq_gaps`` and logged."""
        self.counts["seq_gaps"] += 1
        log.warning("OPC UA server %s: %s: data changes lost", self.source.endpoint, what)

    def remember(self, subscription: Subscription) -> None:
        """Write the subscription's id and last committed notification for a successor (replace, no fsync: a
        process that dies leaves it in the page cache; a power cut leaves the server without its session too)."""
        state = {"endpoint": self.source.endpoint, "subscription": subscription.subscription_id,
                 "sequence": subscription.last_sequence_number}
        temporary = self.state_file.with_suffix(".tmp")
        try:
            temporary.write_text(json.dumps(state))
            os.replace(temporary, self.state_file)
        except OSError as e:  # only the restore after a crash needs it: a new subscription then
            log.error("Cannot write the OPC UA subscription state %s: %s", self.state_file, e)

    async def monitor(self, subscription: Subscription) -> None:
        """Monitor every configured variable; one the server refuses (no such node, say) is logged at ERROR and the
        others are monitored: that scale's measurements are missing until the configuration is mended."""
        requests = self.scales.requests(self.source.queue_size, float(self.source.publishing_interval_ms))
        for request, result in zip(requests, await subscription.create_monitored_items(requests)):
            if isinstance(result, ua.StatusCode):
                log.error("OPC UA server %s refused to monitor %s: %s", self.source.endpoint,
                          request.ItemToMonitor.NodeId.to_string(), result.name)

    async def subscribe(self) -> CommittingSubscription:
        """The predecessor's subscription, transferred with what it had not committed republished; else a new one."""
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=float(self.source.publishing_interval_ms), RequestedLifetimeCount=LIFETIME_COUNT,
            RequestedMaxKeepAliveCount=self.client.get_keepalive_count(self.source.publishing_interval_ms),
            MaxNotificationsPerPublish=0, PublishingEnabled=True, Priority=0)
        subscription = CommittingSubscription(self.client.uaclient.session, params, self)
        saved = self._saved()
        if saved is not None:
            subscription.subscription_id, subscription.last_sequence_number = saved
            log.info("OPC UA: taking over subscription %s from the previous run, after notification %s", *saved)
            await subscription.restore()  # transfer and republish; else recreate()
            self.client.uaclient.session.ensure_publish_loop()
        else:
            await subscription.init()
            await self.monitor(subscription)
        self.client._subscriptions.append(subscription)  # asyncua's reconnect restores what this list holds
        return subscription

    def _saved(self) -> tuple[int, int] | None:
        try:
            state = json.loads(self.state_file.read_text())
            if state["endpoint"] == self.source.endpoint and state["subscription"]:
                return int(state["subscription"]), int(state["sequence"] or 0)
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return None

    async def run(self, stop: Callable[[], bool]) -> None:
        """Connect (with backoff while the server cannot be reached), subscribe, and serve until ``stop()``."""
        failures = 0
        while not stop():
            try:
                await self.client.connect(auto_reconnect=True, reconnect_max_delay=RECONNECT.max_s)
                break
            except (TimeoutError, OSError, ua.UaError) as e:
                failures += 1
                log.warning("OPC UA server %s unreachable: %s", self.source.endpoint, e)
                await _pause(RECONNECT.delay(failures), stop)
        else:
            return
        self.counts["connected"] = 1
        log.info("OPC UA connected to %s; monitoring %d scales", self.source.endpoint, len(self.source.scales))
        await self.subscribe()
        while not stop():
            await asyncio.sleep(0.1)
            if self.client.uaclient.has_transport:
                self.counts["connected"] = 1
        deadline = time.monotonic() + FINISH_S
        while self._busy and time.monotonic() < deadline:  # the notification in hand: committed before we go
            await asyncio.sleep(0.01)
        with contextlib.suppress(Exception):
            await self.client.disconnect()
        self.state_file.unlink(missing_ok=True)  # the session closed with its subscription: nothing to take over
        c = self.counts
        log.info("OPC UA input stopped: %d notifications, %d acknowledged, %d republished, %d unmappable, %d gaps",
                 c["received"], c["acknowledged"], c["redelivered"], c["unmappable"], c["seq_gaps"])


async def _pause(seconds: float, stop: Callable[[], bool]) -> None:
    deadline = time.monotonic() + seconds
    while not stop() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)


def run_opcua(args: OpcuaArgs, stop: Callable[[], bool]) -> None:
    """Child entry (see :mod:`ingestor.child`): run the OPC UA input until ``stop()``, counting in record
    ``args.slot`` of the counters block ``args.counters`` (a record of its own without one).

    Raises BootError for a password file it cannot read or variables the server refuses (a restart would not help).
    """
    if not args.counters:
        asyncio.run(_serve(args, np.zeros((), INPUT_DTYPE), stop))
        return
    counters = Counters.attach(args.counters, args.lanes)
    with attached(counters):
        counts = counters.inputs[args.slot, ...]
        counts["pid"] = os.getpid()
        try:
            asyncio.run(_serve(args, counts, stop))
        finally:
            counts["connected"] = 0
        del counts
        gc.collect()  # asyncua's objects hold the input, and the input this view: gone before the block closes


async def _serve(args: OpcuaArgs, counts: np.ndarray, stop: Callable[[], bool]) -> None:
    dead_letters = DeadLetterWriter(args.dead_letters.directory, "opcua", args.dead_letters.max_bytes)
    sender = Sender(args.ack_endpoint, acked=True, keep_replies=False, curve=args.curve, resend_after_s=RESEND_S)
    try:
        opcua_input = OpcuaInput(args, sender, dead_letters, counts)
        source = args.source
        if source.username is not None:
            opcua_input.client.set_user(source.username)
            opcua_input.client.set_password(_password(source.password_file))
        if source.security is not None:
            try:
                await opcua_input.client.set_security_string(source.security)
            except (OSError, ValueError, ua.UaError) as e:
                raise BootError(f"OPC UA security {source.security!r}: {e}") from None
        await opcua_input.run(stop)
    finally:
        sender.close(linger_s=0)


def _password(path: str | None) -> str:
    try:
        lines = Path(path or "").read_text().splitlines()
    except OSError as e:
        raise ConfigError(f"cannot read the OPC UA password file {path}: {e.strerror}") from None
    return lines[0] if lines else ""
