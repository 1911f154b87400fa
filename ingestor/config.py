"""The service's configuration: one msgspec Struct, filled in layers.

Layers, later ones winning (docs/operations.md#command-line): the defaults below, the TOML file given
by ``--config``, ``INGESTOR_<NAME>`` environment variables, command-line
flags. :func:`load` records where each value came from, and checks every
value once, raising ConfigError with the key and the allowed range.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, cast

import msgspec
import msgspec.inspect

from .errors import ConfigError
from .mqtt_map import PayloadFields, TopicTemplate, WeighingMetrics

ENV_PREFIX = "INGESTOR_"

# Value rules, written out in full in error messages (see _rule).
_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"
_ENDPOINT = r"^(tcp://.+:(\d{1,5}|\*)|ipc://.+|inproc://.+)$"
_ENDPOINT_OR_OFF = r"^(tcp://.+:(\d{1,5}|\*)|ipc://.+|inproc://.+|off|none|)$"
_HOST_PORT_OR_OFF = r"^(.+:\d{1,5}|off|none|)$"
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
_HOST_PORT = r"^[^\s/]+:\d{1,5}$"
_CLIENT_ID = r"^[A-Za-z0-9._-]{1,128}$"
_OPC_TCP = r"^opc\.tcp://[^\s/]+:\d{1,5}(/\S*)?$"
_PATTERN_RULES = {
    _IDENTIFIER: "a PostgreSQL identifier (letters, digits, _; up to 63 characters)",
    _ENDPOINT: "a ZeroMQ endpoint: tcp://HOST:PORT, ipc://PATH or inproc://NAME",
    _ENDPOINT_OR_OFF: "a ZeroMQ endpoint (tcp://HOST:PORT, ipc://PATH) or off",
    _HOST_PORT_OR_OFF: "HOST:PORT or off",
    _NAME: "a name of letters, digits, '.', '_' and '-', starting with a letter or digit, up to 63 characters",
    _HOST_PORT: "HOST:PORT",
    _CLIENT_ID: "an MQTT client id of letters, digits, '.', '_' and '-', up to 128 characters",
    _OPC_TCP: "an OPC UA endpoint: opc.tcp://HOST:PORT[/PATH]",
}


def default_data_dir() -> str:
    """systemd's ``$STATE_DIRECTORY`` (``StateDirectory=ingestor`` in the unit: ``/var/lib/ingestor``) when set,
    else ``/var/lib/ingestor`` for root, else ``./ingestor-data``."""
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return state
    return "/var/lib/ingestor" if os.geteuid() == 0 else "ingestor-data"


def default_instance() -> str:
    """The host name (``socket.gethostname()``): one ingestor per box needs no --instance."""
    return socket.gethostname()


class BrokerConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """How an input reaches its MQTT broker: the keys ``[mqtt]`` and ``[sparkplug]`` share.

    A table, so in the file only (no environment variable or flag). The
    files named here are read when the service starts (ConfigError naming
    the key when one cannot be), and again by the input at each restart.
    """

    broker: Annotated[str, msgspec.Meta(pattern=_HOST_PORT)]  #: the broker's HOST:PORT (1883; 8883 with TLS)
    #: the persistent session's name at the broker: stable across restarts, one per input; default
    #: ``scale-ingestor-<instance>`` (``…-sparkplug`` for [sparkplug])
    client_id: Annotated[str, msgspec.Meta(pattern=_CLIENT_ID)] | None = None
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    username: str | None = None
    password_file: str | None = None  #: a file holding the password (its first line), readable by the service only
    tls_ca: str | None = None  #: a CA file (PEM): TLS to the broker, whose certificate it must have signed
    tls_cert: str | None = None  #: this client's certificate (PEM), for a broker that asks for one
    tls_key: str | None = None  #: its private key (PEM)

    _SESSION_SUFFIX: ClassVar[str] = ""

    def session(self, instance: str) -> str:
        """The client id: ``client_id``, or ``scale-ingestor-<instance>`` (with the table's suffix)."""
        return self.client_id or f"scale-ingestor-{instance}{self._SESSION_SUFFIX}"


class MqttConfig(BrokerConfig, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """The ``[mqtt]`` table: JSON measurements on topics naming the scale (docs/operations.md#mqtt-input)."""

    #: topic templates of ingestor/mqtt_map.py, such as ``plant/+/scale/{scale_id}/weight``
    topics: Annotated[tuple[str, ...], msgspec.Meta(min_length=1, max_length=64)]  # MAX_TEMPLATES
    fields: PayloadFields = PayloadFields()  #: the ``[mqtt.fields]`` table: where the JSON payload holds each field
    qos: Literal[0, 1] = 1  #: 1: at least once from the broker, stored once; 0: at most once


class SparkplugConfig(BrokerConfig, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """The ``[sparkplug]`` table: Sparkplug B edge nodes' weighing metrics (docs/operations.md#sparkplug-b-input)."""

    #: templates of ``GROUP/NODE/DEVICE`` (or ``GROUP/NODE`` for a node's own metrics) naming the scale, such as
    #: ``plant/+/scale-{scale_id}``
    devices: Annotated[tuple[str, ...], msgspec.Meta(min_length=1, max_length=64)]  # MAX_TEMPLATES
    metrics: WeighingMetrics = WeighingMetrics()  #: the ``[sparkplug.metrics]`` table
    #: as the Sparkplug Primary Host Application of this id, publish its STATE (edge nodes that know it keep their
    #: data while it is offline, and send it as historical when it is back); None: no STATE
    host_id: Annotated[str, msgspec.Meta(pattern=_CLIENT_ID)] | None = None

    _SESSION_SUFFIX: ClassVar[str] = "-sparkplug"


class OpcuaScale(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """One scale of an OPC UA server: the variables holding its measurement (an ``[[opcua.scales]]`` table)."""

    scale_id: Annotated[int, msgspec.Meta(ge=1, le=2_147_483_647)]
    #: node ids (``ns=2;s=Scale17.Weight``) for data_1 … data_5; each change of the first is one measurement
    data: Annotated[tuple[str, ...], msgspec.Meta(min_length=1, max_length=5)]
    seq: str = ""  #: a variable counting the weighings; "": the weighing's source timestamp in ms stands in


class OpcuaConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """The ``[opcua]`` table: weighing terminals' variables by OPC UA (docs/operations.md#opc-ua-input)."""

    endpoint: Annotated[str, msgspec.Meta(pattern=_OPC_TCP)]  #: ``opc.tcp://HOST:PORT[/PATH]``
    scales: Annotated[tuple[OpcuaScale, ...], msgspec.Meta(min_length=1, max_length=10_000)]
    #: asyncua's security string, ``Basic256Sha256,SignAndEncrypt,CERT.pem,KEY.pem[,SERVER_CERT.der]``; None: none
    security: str | None = None
    username: str | None = None
    password_file: str | None = None  #: a file holding the password (its first line), readable by the service only
    publishing_interval_ms: Annotated[int, msgspec.Meta(ge=10, le=60_000)] = 100
    #: data changes a server may queue per variable between two notifications (it may grant fewer)
    queue_size: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 100

    def session(self, instance: str) -> str:
        """The session's name at the server."""
        return f"scale-ingestor-{instance}"


class Config(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Every option of ``ingestor run`` (docs/operations.md#options-of-ingestor-run lists them)."""

    dsn: str | None = None
    instance: Annotated[str, msgspec.Meta(pattern=_NAME)] = msgspec.field(default_factory=default_instance)
    schema: Annotated[str, msgspec.Meta(pattern=_IDENTIFIER)] = "public"
    bind: Annotated[str, msgspec.Meta(pattern=_ENDPOINT)] = "tcp://0.0.0.0:5555"
    ack_bind: Annotated[str, msgspec.Meta(pattern=_ENDPOINT_OR_OFF)] = "tcp://0.0.0.0:5556"
    writers: Annotated[int, msgspec.Meta(ge=1, le=64)] | Literal["auto"] = "auto"
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 5000
    batch_timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=600_000)] = 40
    ring_capacity: Annotated[int, msgspec.Meta(ge=64, le=1 << 26)] = 65536
    max_frame_bytes: Annotated[int, msgspec.Meta(ge=256, le=1 << 30)] = 1 << 20
    data_dir: str = msgspec.field(default_factory=default_data_dir)
    dead_letter_dir: str | None = None
    dead_letter_max_bytes: Annotated[int, msgspec.Meta(ge=1 << 16)] = 256 << 20
    spool_dir: str | None = None
    spool_max_bytes: Annotated[int, msgspec.Meta(ge=1 << 20)] = 1 << 30
    stats_endpoint: Annotated[str, msgspec.Meta(pattern=_ENDPOINT)] = "tcp://127.0.0.1:5557"
    partitions_ahead: Annotated[int, msgspec.Meta(ge=1, le=366)] = 7
    retention_days: Annotated[int, msgspec.Meta(ge=0)] = 0
    archive_to: str | None = None  #: a directory or s3://BUCKET/PREFIX (ingestor/archive.py)
    archive_endpoint: str = ""  #: an S3-compatible store's URL; empty: AWS
    archive_after_days: Annotated[int, msgspec.Meta(ge=0)] = 0
    http_bind: Annotated[str, msgspec.Meta(pattern=_HOST_PORT_OR_OFF)] = "127.0.0.1:9108"
    stall_seconds: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    simulate_scales: Annotated[int, msgspec.Meta(ge=0, le=2_147_483_647)] = 0
    simulate_rate: Annotated[float, msgspec.Meta(gt=0, le=10_000_000)] = 300.0
    run_seconds: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    drain_seconds: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 60.0
    curve_secret_key: str | None = None
    curve_clients_dir: str | None = None
    alibi: bool = True  #: the alibi chain: each stored event linked into its scale's chain (docs/alibi.md)
    alibi_key: str | None = None  #: the Ed25519 secret key that signs seals ('ingestor keys alibi'); None: no seals
    seal_interval_s: Annotated[float, msgspec.Meta(ge=1, le=86_400)] = 300.0
    seal_file: str | None = None  #: the append-only file of seals; default data_dir/alibi-seals.jsonl
    mqtt: MqttConfig | None = None  #: the ``[mqtt]`` table (file only): the MQTT input; None: no MQTT input
    sparkplug: SparkplugConfig | None = None  #: the ``[sparkplug]`` table (file only): the Sparkplug B input
    opcua: OpcuaConfig | None = None  #: the ``[opcua]`` table (file only): the OPC UA input

    def writer_count(self) -> int:
        """``writers``, with ``auto`` resolved for this machine (bench/README.md)."""
        if self.writers != "auto":
            return self.writers
        return auto_writers(os.cpu_count() or 1)

    def ack_endpoint(self) -> str | None:
        """``ack_bind``, or None when acked mode is switched off (``off``, ``none`` or empty)."""
        return None if self.ack_bind.strip().lower() in ("", "off", "none") else self.ack_bind

    def http_endpoint(self) -> str | None:
        """``http_bind``, or None when the HTTP monitoring is switched off (``off``, ``none`` or empty)."""
        return None if self.http_bind.strip().lower() in ("", "off", "none") else self.http_bind

    def resolved_dead_letter_dir(self) -> Path:
        return Path(self.dead_letter_dir or Path(self.data_dir) / "dead-letters")

    def resolved_spool_dir(self) -> Path:
        return Path(self.spool_dir or Path(self.data_dir) / "spool")

    def resolved_seal_file(self) -> Path:
        return Path(self.seal_file or Path(self.data_dir) / "alibi-seals.jsonl")


def check_directories(config: Config, sources: Mapping[str, str]) -> None:
    """ConfigError naming the option when a directory the service writes cannot be one or cannot be written: it, or
    a folder above it, is a file; or the nearest existing folder is not writable. Nothing is made here."""


    wanted = [("data_dir", Path(config.data_dir)), ("dead_letter_dir", config.resolved_dead_letter_dir()),
              ("spool_dir", config.resolved_spool_dir()), ("seal_file", config.resolved_seal_file().parent)]
    for key, directory in wanted:
        source = sources[key] if sources.get(key, "default") != "default" or key == "data_dir" \
            else f"{sources['data_dir']}, as DATA_DIR"
        for path in (directory, *directory.parents):
            if not path.exists():
                continue
            if not path.is_dir():
                raise ConfigError(f"{key} = {str(directory)!r} (from {source}): {path} is a file, not a directory")
            if not os.access(path, os.W_OK | os.X_OK):
                raise ConfigError(f"{key} = {str(directory)!r} (from {source}): {path} is not writable by this user")
            break


def auto_writers(cpus: int) -> int:
    """Writer count for ``--writers auto``: one per core, at least 2, at most 8.

    From the measured curve (bench/README.md, bench/compare.py on 2
    cores with sender and PostgreSQL on the same box): 1 writer 59,833
    events/s, 2 writers 84,244, 3 86,473, 4 77,654. A second writer lets
    PostgreSQL commit one batch while the other is being built (+41 %); past
    one per core the writers only take CPU from PostgreSQL and the front.
    The cap of 8 bounds connections and the ring's lane count.
    """
    return max(2, min(8, cpus))


FIELDS = tuple(f.name for f in msgspec.structs.fields(Config))
TABLES = ("mqtt", "sparkplug", "opcua")  # options that are TOML tables: in the file only
SCALARS = tuple(name for name in FIELDS if name not in TABLES)  # also environment variables and flags


def _env_layer(environ: Mapping[str, str]) -> dict[str, Any]:
    out = {}
    for name in SCALARS:
        value = environ.get(ENV_PREFIX + name.upper())
        if value is not None:
            out[name] = value
    return out


# INGESTOR_* variables that are not options but are read elsewhere (and so are no typo).
NOT_OPTIONS = frozenset({"INGESTOR_FAILPOINTS", "INGESTOR_FAILPOINTS_STATE"})


def unknown_environment(environ: Mapping[str, str] = os.environ) -> list[str]:
    """``INGESTOR_*`` variables that name no option: most likely typos, which would otherwise go unnoticed."""
    known = {ENV_PREFIX + name.upper() for name in SCALARS} | NOT_OPTIONS
    return sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in known and not k.startswith("INGESTOR_TEST_"))


def _file_layer(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path!r} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path!r} is not valid TOML: {e}") from None
    data = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ConfigError(f"config file {path!r}: unknown option(s) {', '.join(unknown)}")
    return data


def load(
    flags: Mapping[str, Any],
    *,
    config_file: str | None = None,
    environ: Mapping[str, str] = os.environ,
) -> tuple[Config, dict[str, str]]:
    """Merge the layers into a checked Config; return it with the source of every key.

    ``flags`` holds only the options given on the command line. Raises
    ConfigError with one message naming the key, the bad value, where it came
    from and the allowed values (for instance ``batch_size = 0 (from
    environment INGESTOR_BATCH_SIZE): must be an integer from 1 to 1000000``).
    """
    layers = [("file " + config_file if config_file else "file", _file_layer(config_file)),
              ("environment", _env_layer(environ)),
              ("command line", {k: v for k, v in flags.items() if v is not None})]
    merged: dict[str, Any] = {}
    sources = {name: "default" for name in FIELDS}
    for source, values in layers:
        for key, value in values.items():
            merged[key] = value
            sources[key] = (f"environment {ENV_PREFIX}{key.upper()}" if source == "environment"
                            else f"--{key.replace('_', '-')}" if source == "command line" else source)
    if isinstance(merged.get("writers"), str) and merged["writers"].isdigit():
        merged["writers"] = int(merged["writers"])
    tables = {table: merged.pop(table) for table in TABLES if table in merged}
    try:
        config = msgspec.convert(merged, Config, strict=False)
    except msgspec.ValidationError as e:
        bad = str(e).rsplit("$.", 1)[-1].rstrip("`") if "$." in str(e) else None
        if bad is None or bad not in _TYPES:
            raise ConfigError(f"invalid configuration: {e}") from None
        raise ConfigError(f"{bad} = {merged.get(bad)!r} (from {sources[bad]}): must be {_rule(_TYPES[bad])}") from None
    for table, raw in tables.items():
        setattr(config, table, _table(table, raw, sources[table]))
    if (config.curve_secret_key is None) != (config.curve_clients_dir is None):
        given, missing = (("curve_secret_key", "curve_clients_dir") if config.curve_clients_dir is None
                          else ("curve_clients_dir", "curve_secret_key"))
        raise ConfigError(f"{given} is set (from {sources[given]}) but {missing} is not: "
                          "CURVE needs the service's secret key and the directory of allowed client keys")
    if config.alibi_key and not config.alibi:
        raise ConfigError(f"alibi_key is set (from {sources['alibi_key']}) but alibi = false (from {sources['alibi']}): "
                          "there are no chains to seal")
    if config.dsn:
        check_dsn(config.dsn, sources["dsn"])
    _check_lifecycle(config, sources)
    for table in TABLES:
        if getattr(config, table) is not None:
            _check_input(config, table, sources[table])
    for key in ("bind", "ack_bind", "stats_endpoint", "http_bind"):
        _check_port(key, getattr(config, key), sources[key])
    return config, sources


def _check_lifecycle(config: Config, sources: Mapping[str, str]) -> None:
    """ConfigError for archive options that cannot work together (docs/operations.md#the-archive-of-old-days)."""
    if config.archive_after_days and not config.archive_to:
        raise ConfigError(f"archive_after_days = {config.archive_after_days} (from {sources['archive_after_days']}) "
                          "needs archive_to: where the archives go (a directory or s3://BUCKET/PREFIX)")
    if config.archive_to and config.retention_days and config.archive_after_days > config.retention_days:
        raise ConfigError(f"archive_after_days = {config.archive_after_days} (from {sources['archive_after_days']}) "
                          f"must not exceed retention_days = {config.retention_days} (from {sources['retention_days']}): "
                          "retention drops only archived days, so it would refuse every day")
    if config.archive_to:
        from .archive import Target

        try:
            Target(config.archive_to, config.archive_endpoint)
        except ConfigError as e:
            raise ConfigError(f"{e} (from {sources['archive_to']})") from None


def _table(name: str, raw: object, source: str) -> BrokerConfig | OpcuaConfig:
    """Table ``name`` of the file as its Struct; ConfigError naming the dotted key, its value, the file and the
    rule it breaks."""
    kind = TABLE_TYPES[name]
    try:
        return msgspec.convert(raw, kind, strict=False)
    except ConfigError as e:  # a sub-table's own check (PayloadFields, WeighingMetrics)
        raise ConfigError(f"[{name}.{_SUB_TABLES[name]}] (from {source}): {e}") from None
    except msgspec.ValidationError as e:
        what, at, path = str(e).rpartition(" - at `$")
        key = path.rstrip("`").lstrip(".") if at else ""
        what = what if at else str(e)  # an error of the table itself has no path
        if not isinstance(raw, dict):
            raise ConfigError(f"{name} = {raw!r} (from {source}): must be a table ([{name}])") from None
        field, _, index = key.partition("[")
        types = _TABLE_FIELD_TYPES[name]
        if not key or field == _SUB_TABLES[name] or field not in types:  # a key missing or unknown, or a sub-table's
            raise ConfigError(f"[{name}{'.' + key if key else ''}] (from {source}): {what}") from None
        value = raw[field]  # it is there: msgspec refused its value
        if index:  # an element of a list of templates: text
            raise ConfigError(f"{name}.{key} = {value[int(index.rstrip(']'))]!r} (from {source}): must be text") from None
        rule = (f"a list of 1 to {MAX_TEMPLATES} templates" if field in ("topics", "devices") else _rule(types[field]))
        raise ConfigError(f"{name}.{key} = {value!r} (from {source}): must be {rule}") from None


MAX_TEMPLATES = 64


def _check_input(config: Config, name: str, source: str) -> None:
    """ConfigError naming the key of table ``name`` when a template is not one, acked mode is off (an input
    acknowledges a message to the broker only after the ingestor's reply), or a file it names cannot be read."""
    table = getattr(config, name)
    if isinstance(table, OpcuaConfig):
        _check_opcua(table, source)
    else:
        templates = "topics" if isinstance(table, MqttConfig) else "devices"
        for i, template in enumerate(getattr(table, templates)):
            try:
                TopicTemplate(template)
            except ConfigError as e:
                raise ConfigError(f"{name}.{templates}[{i}] = {template!r} (from {source}): {e}") from None
    if config.ack_endpoint() is None:
        raise ConfigError(f"[{name}] (from {source}) needs acked mode, but ack_bind = {config.ack_bind!r}: the input "
                          "acknowledges each message to the broker only after the ingestor's reply")
    if (table.password_file is None) != (table.username is None):
        given, missing = ("password_file", "username") if table.username is None else ("username", "password_file")
        raise ConfigError(f"{name}.{given} is set (from {source}) but {name}.{missing} is not: the broker takes the "
                          "two together")
    files = [("password_file", table.password_file)]
    if isinstance(table, BrokerConfig):
        if (table.tls_cert is None) != (table.tls_key is None) or (table.tls_cert is not None and table.tls_ca is None):
            raise ConfigError(f"[{name}] (from {source}): a client certificate needs tls_cert, tls_key and tls_ca "
                              "together")
        files += [(key, getattr(table, key)) for key in ("tls_ca", "tls_cert", "tls_key")]
    elif table.security is not None:
        files += [("security", path) for path in table.security.split(",")[2:]]
    for key, path in files:
        if path is None:
            continue
        try:
            with open(path, "rb") as f:
                f.read(1)
        except OSError as e:
            raise ConfigError(f"{name}.{key} = {path!r} (from {source}): cannot be read: {e.strerror}") from None


def _check_opcua(table: OpcuaConfig, source: str) -> None:
    """ConfigError naming the key when a node id is not one (asyncua parses it), a scale id or a weighing variable
    comes twice, or the security string is not POLICY,MODE,CERT,KEY[,SERVER_CERT]."""
    from asyncua import ua

    seen: dict[object, str] = {}
    for i, scale in enumerate(table.scales):
        for key, node in [*((f"data[{k}]", n) for k, n in enumerate(scale.data)), ("seq", scale.seq)]:
            if not node:
                continue
            try:
                ua.NodeId.from_string(node)
            except (ValueError, ua.UaStringParsingError):
                raise ConfigError(f"opcua.scales[{i}].{key} = {node!r} (from {source}): not an OPC UA node id "
                                  "(ns=N;i=NUMBER, ns=N;s=TEXT, ...)") from None
        for what, value in (("scale_id", scale.scale_id), ("data[0]", scale.data[0])):
            if (what, value) in seen:
                raise ConfigError(f"opcua.scales[{i}].{what} = {value!r} (from {source}): also {seen[(what, value)]}; "
                                  "each scale and each weighing variable once")
            seen[(what, value)] = f"opcua.scales[{i}]"
    if table.security is not None:
        parts = table.security.split(",")
        if len(parts) not in (4, 5) or parts[1] not in ("Sign", "SignAndEncrypt"):
            raise ConfigError(f"opcua.security = {table.security!r} (from {source}): must be "
                              "POLICY,Sign|SignAndEncrypt,CERT,KEY[,SERVER_CERT] (such as "
                              "Basic256Sha256,SignAndEncrypt,cert.pem,key.pem)")


def _check_port(key: str, value: str, source: str) -> None:
    """ConfigError when the TCP port of endpoint ``value`` is over 65535 (the patterns allow five digits)."""
    port = value.rsplit(":", 1)[-1]
    if port.isdigit() and int(port) > 65535:
        raise ConfigError(f"{key} = {value!r} (from {source}): port {port} is over 65535")


def check_dsn(dsn: str, source: str) -> None:
    """ConfigError when ``dsn`` is not a libpq connection string or URI (libpq's own parser decides)."""
    import psycopg.conninfo

    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as e:
        raise ConfigError(f"dsn = {mask_password(dsn)!r} (from {source}): not a libpq connection string or URI "
                          f"({' '.join(str(e).split())})") from None
    # libpq checks these only when it connects, and a service would retry a bad one for ever
    for port in str(params.get("port") or "").split(","):
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ConfigError(f"dsn = {mask_password(dsn)!r} (from {source}): port {port!r} is not a port number")
    for key in ("connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count"):
        value = str(params.get(key) or "")
        if value and not value.lstrip("-").isdigit():
            raise ConfigError(f"dsn = {mask_password(dsn)!r} (from {source}): {key} {value!r} is not a number")


_TYPES = {f.name: f.type for f in cast(msgspec.inspect.StructType, msgspec.inspect.type_info(Config)).fields}
TABLE_TYPES: dict[str, type[BrokerConfig | OpcuaConfig]] = {"mqtt": MqttConfig, "sparkplug": SparkplugConfig,
                                                            "opcua": OpcuaConfig}
_SUB_TABLES = {"mqtt": "fields", "sparkplug": "metrics", "opcua": "scales"}
_TABLE_FIELD_TYPES = {name: {f.name: f.type for f in cast(msgspec.inspect.StructType, msgspec.inspect.type_info(t)).fields}
                      for name, t in TABLE_TYPES.items()}


def _rule(t: msgspec.inspect.Type) -> str:
    """The allowed values of a field type, in words (from its msgspec constraints)."""
    mi = msgspec.inspect
    if isinstance(t, mi.UnionType):
        return " or ".join(_rule(u) for u in t.types if not isinstance(u, mi.NoneType))
    if isinstance(t, mi.LiteralType):
        return ", ".join(map(str, t.values[:-1])) + " or " + str(t.values[-1]) if len(t.values) > 1 else str(t.values[0])
    if isinstance(t, (mi.IntType, mi.FloatType)):
        kind = "an integer" if isinstance(t, mi.IntType) else "a number"
        low = f"{t.ge}" if t.ge is not None else f"{t.gt} (exclusive)" if t.gt is not None else None
        high = f"{t.le}" if t.le is not None else f"{t.lt} (exclusive)" if t.lt is not None else None
        if low and high:
            return f"{kind} from {low} to {high}"
        if low:
            return f"{kind} of at least {low}" if t.ge is not None else f"{kind} greater than {t.gt}"
        return f"{kind} of at most {high}" if high else kind
    if isinstance(t, mi.StrType):
        return _PATTERN_RULES.get(t.pattern, "text") if t.pattern else "text"
    if isinstance(t, mi.BoolType):
        return "true or false"
    return type(t).__name__


def to_toml(config: Config, sources: Mapping[str, str]) -> str:
    """The effective configuration as TOML, each line commented with its source.

    A password in ``dsn`` is shown as ``****`` (the output gets pasted into tickets).
    """
    lines = []
    resolved = {"dead_letter_dir": config.resolved_dead_letter_dir(), "spool_dir": config.resolved_spool_dir(),
                "seal_file": config.resolved_seal_file()}
    for name in SCALARS:
        value = getattr(config, name)
        if name in resolved and value is None:
            lines.append(f"{name} = {_toml_value(str(resolved[name]))}  # {sources[name]}: data_dir/{resolved[name].name}")
            continue
        if value is None:
            meaning = " (an embedded PostgreSQL under data_dir/pg)" if name == "dsn" else ""
            lines.append(f"# {name} = (unset){meaning}  # {sources[name]}")
            continue
        if name == "writers" and value == "auto":
            lines.append(f"writers = \"auto\"  # {sources[name]}: {config.writer_count()} on this machine")
            continue
        if name == "dsn":
            value = mask_password(value)
        lines.append(f"{name} = {_toml_value(value)}  # {sources[name]}")
    for name in TABLES:
        table = getattr(config, name)
        if table is None:
            lines.append(f"# [{name}] (unset): no {name} input  # default")
        else:
            client_id = {"client_id": table.session(config.instance)} if isinstance(table, BrokerConfig) else {}
            lines += _toml_table(name, table, sources[name], client_id)
    return "\n".join(lines)


def _toml_table(name: str, table: msgspec.Struct, source: str, resolved: Mapping[str, str]) -> list[str]:
    """A table and its sub-tables as TOML lines (unset keys as comments, ``resolved`` ones with their value)."""
    lines, below = ["", f"[{name}]  # {source}"], []
    for key in table.__struct_fields__:
        value = getattr(table, key)
        if isinstance(value, msgspec.Struct):
            below += _toml_table(f"{name}.{key}", value, source, {})
        elif value is None and key in resolved:
            lines.append(f"{key} = {_toml_value(resolved[key])}  # default")
        elif value is None:
            lines.append(f"# {key} = (unset)")
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    return lines + below


_PASSWORD_KV = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.I)
_PASSWORD_URI = re.compile(r"^(postgres(?:ql)?://[^:/@]*:)([^@]*)(@)", re.I)


def without_password(dsn: str) -> str:
    """``dsn`` (a key=value string or URI libpq accepts) with any password left out: what the service may tell
    others of its database (``ingestor stats``); a client brings its own password, or a password file."""
    import psycopg.conninfo

    params = psycopg.conninfo.conninfo_to_dict(dsn)
    params.pop("password", None)
    return psycopg.conninfo.make_conninfo("", **params)


def mask_password(dsn: str) -> str:
    """``dsn`` with the password of a key=value string or a URI replaced by ``****``."""
    return _PASSWORD_URI.sub(r"\1****\3", _PASSWORD_KV.sub(r"\1****", dsn))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return msgspec.json.encode(str(value)).decode()
