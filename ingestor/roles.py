"""The roles of the supervised processes (front, writer, simulator, lifecycle, MQTT input): one typed Struct each.

uvicorn hands each worker one config object; here the supervisor builds one
of these per child from the service's Config and the shared blocks it
created, and :func:`ingestor.child.main` receives it in the new process
(pickled by the ``spawn`` start method) and calls the role's entry point,
named by its ``entry`` ("module:function", called as ``function(args,
stop)``; a name, not a reference, so this module imports none of the roles'
modules). The struct's type is the role: both sides read the same fields,
so a renamed or missing one fails at the first test, not in production.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import zmq

from .acks import AckTable
from .client import CurveKeys
from .config import Config, MqttConfig, OpcuaConfig, SparkplugConfig
from .errors import ConfigError
from .protocol import RECORD_DTYPE
from .ring import Ring, RingSpec
from .shm import attached
from .stats import Counters


class SharedBlocks(msgspec.Struct, frozen=True):
    """The supervisor's shared-memory blocks, for children to attach to by name."""

    ring: RingSpec
    semaphores: Any  #: the ring's per-lane semaphores (ring._Semaphores), inherited at spawn
    counters: str  #: name of the stats.Counters block
    acks: str  #: name of the acks.AckTable block

    @contextlib.contextmanager
    def attached(self) -> Iterator[tuple[Ring, Counters, AckTable]]:
        """The ring, the counters and the ack table, attached by name and closed when the ``with`` ends
        (:func:`ingestor.shm.attached`). SharedMemoryError when a block is gone (its supervisor with it)."""
        blocks = (Ring.attach(self.ring, RECORD_DTYPE, self.semaphores), Counters.attach(self.counters, self.ring.lanes),
                  AckTable.attach(self.acks, self.ring.lanes))
        with attached(*blocks):
            yield blocks


class DeadLetterArgs(msgspec.Struct, frozen=True):
    """Where a child writes its dead letters (docs/operations.md#dead-letters)."""

    directory: str
    max_bytes: int  #: the total of all dead-letter files, bytes

    @classmethod
    def from_config(cls, config: Config) -> DeadLetterArgs:
        return cls(str(config.resolved_dead_letter_dir()), config.dead_letter_max_bytes)


class CurveServerArgs(msgspec.Struct, frozen=True):
    """CURVE on the front's input sockets (docs/operations.md#security)."""

    secret_key_file: str
    clients_dir: str
    extra_clients: tuple[bytes, ...] = ()  #: z85 public keys allowed besides the directory's (the simulator's)


# The front's pace is the group-commit interval: a frame may wait that long in ZeroMQ's queue without
# lengthening its commit's latency bound (ingestor/front.py, "Pacing"). At most FRONT_PACE_MAX_MS: a long
# interval must not hold a stop request, or fill the high-water mark.
FRONT_PACE_MAX_MS = 50.0


class FrontArgs(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the front process needs (:func:`ingestor.front.run_front`)."""

    name: ClassVar[str] = "front"
    entry: ClassVar[str] = "ingestor.front:run_front"

    shared: SharedBlocks
    bind: str  #: the PULL endpoint
    ack_bind: str | None  #: the ROUTER endpoint of acked mode, None when off
    max_frame_bytes: int
    spool_dir: str
    spool_max_bytes: int
    dead_letters: DeadLetterArgs
    curve: CurveServerArgs | None = None
    #: ms; while frames come more than twice as often, the front looks at its sockets at most this often
    #: (``batch_timeout_ms``, at most :data:`FRONT_PACE_MAX_MS`: ingestor/front.py "Pacing"); 0: on every frame
    pace_ms: float = 0.0

    @classmethod
    def from_config(cls, config: Config, shared: SharedBlocks, curve: CurveServerArgs | None) -> FrontArgs:
        return cls(
            shared=shared, bind=config.bind, ack_bind=config.ack_endpoint(), max_frame_bytes=config.max_frame_bytes,
            spool_dir=str(config.resolved_spool_dir()), spool_max_bytes=config.spool_max_bytes,
            dead_letters=DeadLetterArgs.from_config(config), curve=curve,
            pace_ms=min(float(config.batch_timeout_ms), FRONT_PACE_MAX_MS),
        )



class WriterArgs(msgspec.Struct, frozen=True, kw_only=True):
    """Everything writer ``index`` needs (:func:`ingestor.writer.run_writer`)."""

    entry: ClassVar[str] = "ingestor.writer:run_writer"

    shared: SharedBlocks
    index: int  #: the ring lane this writer owns, 0 .. lanes-1
    instance: str  #: --instance: with ``index``, the key of this lane's checkpoint row
    dsn: str
    schema: str
    batch_size: int  #: events per transaction at most
    batch_timeout_ms: int
    dead_letters: DeadLetterArgs
    alibi: bool = True  #: link each stored event into its scale's alibi chain (ingestor/chains.py)

    @property
    def name(self) -> str:
        return f"writer-{self.index}"

    @classmethod
    def from_config(cls, config: Config, shared: SharedBlocks, index: int, dsn: str) -> WriterArgs:
        return cls(
            shared=shared, index=index, instance=config.instance, dsn=dsn, schema=config.schema, batch_size=config.batch_size,
            batch_timeout_ms=config.batch_timeout_ms, dead_letters=DeadLetterArgs.from_config(config), alibi=config.alibi,
        )



class SimulatorArgs(msgspec.Struct, frozen=True, kw_only=True):
    """The bundled simulator of ``--simulate-scales`` (:func:`ingestor.simulator.run_simulator`)."""

    name: ClassVar[str] = "simulator"
    entry: ClassVar[str] = "ingestor.simulator:run_simulator"

    endpoint: str  #: where it connects: the front's PULL endpoint, on loopback
    scales: int
    rate: float  #: events/s, all scales together
    curve: CurveKeys | None = None

    @classmethod
    def from_config(cls, config: Config, curve: CurveKeys | None) -> SimulatorArgs:
        return cls(endpoint=loopback(config.bind), scales=config.simulate_scales, rate=config.simulate_rate, curve=curve)



class LifecycleArgs(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the lifecycle child needs (:func:`ingestor.lifecycle.run_lifecycle`)."""

    name: ClassVar[str] = "lifecycle"
    entry: ClassVar[str] = "ingestor.lifecycle:run_lifecycle"

    dsn: str
    schema: str
    archive_to: str | None  #: a directory or s3://BUCKET/PREFIX; None: retention drops without archives
    archive_endpoint: str
    archive_after_days: int  #: 0: archive only by hand ('ingestor partitions archive')
    retention_days: int  #: 0: drop nothing
    counters: str = ""  #: name of the stats.Counters block to count in; empty: count nowhere
    lanes: int = 0  #: the counters block's writer count (its shape)
    every_s: float = 3600.0

    @classmethod
    def from_config(cls, config: Config, dsn: str, counters: str = "", lanes: int = 0) -> LifecycleArgs:
        return cls(dsn=dsn, schema=config.schema, archive_to=config.archive_to, archive_endpoint=config.archive_endpoint,
                   archive_after_days=config.archive_after_days, retention_days=config.retention_days,
                   counters=counters, lanes=lanes)

    @staticmethod
    def wanted(config: Config) -> bool:
        return bool(config.archive_after_days or config.retention_days)



class MqttArgs(msgspec.Struct, frozen=True, kw_only=True):
    """Everything an MQTT input needs (:func:`ingestor.mqtt.run_mqtt`): its table and where to send.

    Its name is its table's: ``mqtt`` (JSON measurements) or ``sparkplug`` (Sparkplug B).
    """

    entry: ClassVar[str] = "ingestor.mqtt:run_mqtt"

    source: MqttConfig | SparkplugConfig  #: the [mqtt] or [sparkplug] table (docs/operations.md#mqtt-input)
    client_id: str  #: the persistent session's name at the broker (MqttConfig.session)
    ack_endpoint: str  #: the front's ROUTER endpoint (acked mode), on loopback
    dead_letters: DeadLetterArgs
    counters: str = ""  #: name of the stats.Counters block; empty: count in a record of its own (tests)
    lanes: int = 0  #: the counters block's writer count (its shape)
    slot: int = 0  #: this input's record among the counters' inputs
    curve: CurveKeys | None = None  #: when CURVE is on: this input's keys, allowed by the front for this run

    @property
    def name(self) -> str:
        return "mqtt" if isinstance(self.source, MqttConfig) else "sparkplug"

    @classmethod
    def from_config(cls, config: Config, source: MqttConfig | SparkplugConfig, shared: SharedBlocks, slot: int,
                    curve: CurveKeys | None) -> MqttArgs:
        endpoint = config.ack_endpoint()
        assert endpoint is not None  # config.load refuses an input table without acked mode
        return cls(source=source, client_id=source.session(config.instance), ack_endpoint=loopback(endpoint),
                   dead_letters=DeadLetterArgs.from_config(config), counters=shared.counters, lanes=shared.ring.lanes,
                   slot=slot, curve=curve)


class OpcuaArgs(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the OPC UA input needs (:func:`ingestor.opcua.run_opcua`): the ``[opcua]`` table and where to
    send."""

    name: ClassVar[str] = "opcua"
    entry: ClassVar[str] = "ingestor.opcua:run_opcua"

    source: OpcuaConfig  #: the [opcua] table (docs/operations.md#opc-ua-input)
    session: str  #: the session's name at the server
    ack_endpoint: str  #: the front's ROUTER endpoint (acked mode), on loopback
    dead_letters: DeadLetterArgs
    state_file: str  #: the subscription's id and last committed notification, for a successor process
    counters: str = ""  #: name of the stats.Counters block; empty: count in a record of its own (tests)
    lanes: int = 0
    slot: int = 0
    curve: CurveKeys | None = None

    @classmethod
    def from_config(cls, config: Config, shared: SharedBlocks, slot: int, curve: CurveKeys | None) -> OpcuaArgs:
        endpoint = config.ack_endpoint()
        assert config.opcua is not None and endpoint is not None  # config.load refuses an input without acked mode
        return cls(source=config.opcua, session=config.opcua.session(config.instance), ack_endpoint=loopback(endpoint),
                   dead_letters=DeadLetterArgs.from_config(config),
                   state_file=str(Path(config.data_dir) / "opcua-subscription.json"), counters=shared.counters,
                   lanes=shared.ring.lanes, slot=slot, curve=curve)


def loopback(endpoint: str) -> str:
    """A bound endpoint as a process on this machine connects to it: a wildcard host becomes 127.0.0.1."""
    return endpoint.replace("0.0.0.0", "127.0.0.1").replace("*", "127.0.0.1")


INPUTS = (MqttArgs, OpcuaArgs)  # the roles that take measurements from a source besides ZeroMQ: stopped first


ChildArgs = FrontArgs | WriterArgs | SimulatorArgs | LifecycleArgs | MqttArgs | OpcuaArgs


def plan(config: Config, dsn: str, shared: SharedBlocks, server_public: bytes | None) -> list[ChildArgs]:
    """The children of a service: one writer per ring lane, the front, the simulator when asked for, an input
    per ``[mqtt]``, ``[sparkplug]`` or ``[opcua]`` table, and the lifecycle child with --archive-after-days or
    --retention-days.

    ``server_public``: the service's CURVE public key when CURVE is on; the
    bundled simulator and the MQTT inputs then get a key pair each for this
    run, which the front allows besides the clients directory's.
    """
    front_curve = simulator_curve = None
    inputs = [table for table in (config.mqtt, config.sparkplug, config.opcua) if table is not None]
    input_curves: list[CurveKeys | None] = [None] * len(inputs)
    if config.curve_secret_key:
        if server_public is None or config.curve_clients_dir is None:  # Config and Resources.load_keys give both
            raise ConfigError("CURVE needs the service's public key and the directory of allowed client keys")
        if config.simulate_scales:
            simulator_curve = _run_keys(server_public)
        input_curves = [_run_keys(server_public) for _ in inputs]
        extra = tuple(keys.public for keys in (simulator_curve, *input_curves) if keys is not None)
        front_curve = CurveServerArgs(config.curve_secret_key, config.curve_clients_dir, extra)
    planned: list[ChildArgs] = [WriterArgs.from_config(config, shared, i, dsn) for i in range(shared.ring.lanes)]
    planned.append(FrontArgs.from_config(config, shared, front_curve))
    if config.simulate_scales:
        planned.append(SimulatorArgs.from_config(config, simulator_curve))
    for slot, (table, curve) in enumerate(zip(inputs, input_curves)):
        planned.append(OpcuaArgs.from_config(config, shared, slot, curve) if isinstance(table, OpcuaConfig)
                       else MqttArgs.from_config(config, table, shared, slot, curve))
    if LifecycleArgs.wanted(config):
        planned.append(LifecycleArgs.from_config(config, dsn, shared.counters, shared.ring.lanes))
    return planned


def _run_keys(server_public: bytes) -> CurveKeys:
    """A key pair of a bundled sender for this run only, which the front allows besides the clients directory's."""
    public, secret = zmq.curve_keypair()
    return CurveKeys(server_public, public, secret)
