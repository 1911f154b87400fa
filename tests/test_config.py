"""ingestor/config.py: every option refuses every value outside its rule from every layer, naming key, value and source.

The matrix is built from Config itself: each bounded number just past each of
its bounds, each pattern and literal a value it cannot match, each from the
file, the environment and the command line.
"""

from __future__ import annotations

import msgspec
import pytest

from ingestor import config
from ingestor.errors import ConfigError


def bad_values(t: msgspec.inspect.Type) -> list[object]:
    """Values just outside ``t``'s rule (empty for a free string)."""
    if isinstance(t, msgspec.inspect.UnionType):
        return [v for member in t.types for v in bad_values(member) if not isinstance(member, msgspec.inspect.NoneType)]
    if isinstance(t, msgspec.inspect.IntType | msgspec.inspect.FloatType):
        step = 1 if isinstance(t, msgspec.inspect.IntType) else 0.5
        below = [t.ge - step] if t.ge is not None else [t.gt] if t.gt is not None else []
        above = [t.le + step] if t.le is not None else [t.lt] if t.lt is not None else []
        return [*below, *above]
    if isinstance(t, msgspec.inspect.StrType) and t.pattern:
        return ["no such value; at all"]
    if isinstance(t, msgspec.inspect.LiteralType):
        return ["no-such-literal"]
    if isinstance(t, msgspec.inspect.BoolType):
        return ["perhaps"]
    return []


CASES = [(key, value) for key, t in config._TYPES.items() for value in bad_values(t)]


def test_the_matrix_covers_every_option_with_a_rule():
    ruled = {key for key, _ in CASES}
    free = {"dsn", "data_dir", "dead_letter_dir", "spool_dir", "archive_to", "archive_endpoint", "curve_secret_key",
            "curve_clients_dir", "alibi_key", "seal_file"}  # any string: checked where used
    assert ruled | free | set(config.TABLES) == set(config.FIELDS) and not ruled & free


@pytest.mark.parametrize("layer", ["file", "environment", "command line"])
@pytest.mark.parametrize("key,value", CASES, ids=[f"{k}={v}" for k, v in CASES])
def test_a_value_outside_its_rule_is_refused_naming_key_value_and_source(tmp_path, layer, key, value):
    flags, environ, config_file = {}, {}, None
    if layer == "file":
        config_file = tmp_path / "ingestor.toml"
        config_file.write_text(f"{key} = {value!r}\n".replace("'", '"') if isinstance(value, str) else f"{key} = {value}\n")
        config_file = str(config_file)
        source = f"file {config_file}"
    elif layer == "environment":
        environ = {f"INGESTOR_{key.upper()}": str(value)}
        source = f"environment INGESTOR_{key.upper()}"
    else:
        flags = {key: value}
        source = "--" + key.replace("_", "-")
    with pytest.raises(ConfigError) as refused:
        config.load(flags, config_file=config_file, environ=environ)
    message = str(refused.value)
    assert message.startswith(f"{key} = ") and f"(from {source}): must be " in message, message
    assert str(value) in message and "\n" not in message


@pytest.mark.parametrize("key,value", [("batch_size", 7), ("log_level", "debug"), ("stall_seconds", 2.5),
                                        ("schema", "plant_a"), ("alibi", False)])
def test_the_command_line_beats_the_environment_beats_the_file_beats_the_default(tmp_path, key, value):
    default = getattr(config.Config(), key)
    f = tmp_path / "ingestor.toml"
    f.write_text(f"{key} = {str(value).lower() if isinstance(value, bool) else repr(value).replace(chr(39), chr(34))}\n")
    env = {f"INGESTOR_{key.upper()}": str(value).lower() if isinstance(value, bool) else str(value)}
    assert getattr(config.load({}, environ={})[0], key) == default != value
    assert getattr(config.load({}, config_file=str(f), environ={})[0], key) == value
    cfg, sources = config.load({}, config_file=str(f), environ=env)
    assert getattr(cfg, key) == value and sources[key] == f"environment INGESTOR_{key.upper()}"
    cfg, sources = config.load({key: default}, config_file=str(f), environ=env)
    assert getattr(cfg, key) == default and sources[key] == "--" + key.replace("_", "-")


# -- the [mqtt] and [sparkplug] tables ------------------------------------------------

TABLE_OK = {"mqtt": {"broker": "127.0.0.1:1883", "topics": ["plant/+/scale/{scale_id}/weight"]},
            "sparkplug": {"broker": "127.0.0.1:1883", "devices": ["plant/+/scale-{scale_id}"]},
            "opcua": {"endpoint": "opc.tcp://127.0.0.1:4840/", "scales": [{"scale_id": 1, "data": ["ns=2;s=W1"]}]}}
BROKER_TABLES = ("mqtt", "sparkplug")
TEMPLATES = {"mqtt": "topics", "sparkplug": "devices"}
SUB_TABLES = {"mqtt": "fields", "sparkplug": "metrics", "opcua": "scales"}
TABLE_CASES = [(table, key, value) for table in config.TABLES
               for key, t in config._TABLE_FIELD_TYPES[table].items() for value in bad_values(t)]


def toml(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return msgspec.json.encode(value).decode() if isinstance(value, str) else repr(value)


def table_file(tmp_path, name: str, table: dict, top: str = "") -> str:
    f = tmp_path / "ingestor.toml"
    f.write_text(top + f"[{name}]\n" + "".join(f"{k} = {toml(v)}\n" for k, v in table.items()))
    return str(f)


def test_the_table_matrix_covers_every_key_of_each_table():
    assert set(config.TABLES) == set(TABLE_OK) == set(config.TABLE_TYPES)
    for table in config.TABLES:
        ruled = {key for t, key, _ in TABLE_CASES if t == table}
        # any text: files are read at load, the security string is checked in its own test
        free = {"username", "password_file", "tls_ca", "tls_cert", "tls_key"} if table in BROKER_TABLES \
            else {"username", "password_file", "security"}
        # test_a_table_that_is_not_one_is_refused_naming_what_is_wrong
        by_hand = {TEMPLATES[table], SUB_TABLES[table]} if table in BROKER_TABLES else {SUB_TABLES[table]}
        assert ruled | free | by_hand == set(config._TABLE_FIELD_TYPES[table]) and not ruled & (free | by_hand)


@pytest.mark.parametrize("table,key,value", TABLE_CASES, ids=[f"{t}.{k}={v}" for t, k, v in TABLE_CASES])
def test_a_table_value_outside_its_rule_is_refused_naming_the_dotted_key_value_and_file(tmp_path, table, key, value):
    path = table_file(tmp_path, table, {**TABLE_OK[table], key: value})
    with pytest.raises(ConfigError) as refused:
        config.load({}, config_file=path, environ={})
    message = str(refused.value)
    assert message.startswith(f"{table}.{key} = {value!r} (from file {path}): must be "), message


def readable(tmp_path) -> str:
    (tmp_path / "secret").write_text("pw\n")
    return str(tmp_path / "secret")


def refused_tables(table: str) -> list[tuple[dict, str]]:
    ok, templates, sub = TABLE_OK[table], TEMPLATES[table], SUB_TABLES[table]
    return [
        ({templates: ok[templates]}, f"[{table}] (from file {{path}}): Object missing required field `broker`"),
        ({"broker": ok["broker"]}, f"[{table}] (from file {{path}}): Object missing required field `{templates}`"),
        ({**ok, "brokers": "x:1"}, f"[{table}] (from file {{path}}): Object contains unknown field `brokers`"),
        ({**ok, templates: []}, f"{table}.{templates} = [] (from file {{path}}): must be a list of 1 to 64 templates"),
        ({**ok, templates: "a/{scale_id}"}, f"{table}.{templates} = 'a/{{scale_id}}' (from file {{path}}): must be a list"),
        ({**ok, templates: [f"t{i}/{{scale_id}}" for i in range(65)]}, f"{table}.{templates} = ["),
        ({**ok, templates: [7]}, f"{table}.{templates}[0] = 7 (from file {{path}}): must be text"),
        ({**ok, templates: ["a/{scale_id}", "plant/#/x/{scale_id}"]},
         f"{table}.{templates}[1] = 'plant/#/x/{{scale_id}}' (from file {{path}}): MQTT topic template"),
        ({**ok, templates: ["plant/scale"]}, f"{table}.{templates}[0] = 'plant/scale' (from file {{path}}): MQTT topic"),
        ({**ok, sub: {"time": "t"}}, f"[{table}.{sub}] (from file {{path}}): Object contains unknown field `time`"),
        ({**ok, sub: {"data": ["a", "b", "c", "d", "e", "f"]}}, f"[{table}.{sub}] (from file {{path}}): "),
        ({**ok, sub: {"data": [1]}}, f"[{table}.{sub}.data[0]] (from file {{path}}): Expected `str`, got `int`"),
        ({**ok, "username": "u"}, f"{table}.username is set (from file {{path}}) but {table}.password_file is not"),
        ({**ok, "password_file": "SECRET"}, f"{table}.password_file is set (from file {{path}}) but {table}.username"),
        ({**ok, "tls_ca": "SECRET", "tls_cert": "SECRET"}, f"[{table}] (from file {{path}}): a client certificate"),
        ({**ok, "tls_cert": "SECRET", "tls_key": "SECRET"}, f"[{table}] (from file {{path}}): a client certificate"),
        *[({**ok, "username": "u", "password_file": "SECRET", "tls_ca": "SECRET", "tls_cert": "SECRET",
            "tls_key": "SECRET", key: "/no/such/file"},
           f"{table}.{key} = '/no/such/file' (from file {{path}}): cannot be read: No such file or directory")
          for key in ("password_file", "tls_ca", "tls_cert", "tls_key")],
    ]


OPCUA_OK = TABLE_OK["opcua"]
REFUSED_OPCUA = [
    ({"scales": OPCUA_OK["scales"]}, "[opcua] (from file {path}): Object missing required field `endpoint`"),
    ({**OPCUA_OK, "scales": []}, "[opcua.scales] (from file {path}): Expected `array` of length >= 1"),
    ({**OPCUA_OK, "scales": [{"scale_id": 0, "data": ["i=1"]}]}, "[opcua.scales[0].scale_id] (from file {path}): "),
    ({**OPCUA_OK, "scales": [{"scale_id": 1, "data": []}]}, "[opcua.scales[0].data] (from file {path}): Expected `array`"),
    ({**OPCUA_OK, "scales": [{"scale_id": 1, "data": ["i=1"] * 6}]}, "[opcua.scales[0].data] (from file {path}): "),
    ({**OPCUA_OK, "scales": [{"scale_id": 1, "data": ["i=1"], "weight": "i=2"}]},
     "[opcua.scales[0]] (from file {path}): Object contains unknown field `weight`"),
    *[({**OPCUA_OK, "scales": [{"scale_id": 1, "data": data, "seq": seq}]},
       f"opcua.scales[0].{key} = {bad!r} (from file {{path}}): not an OPC UA node id")
      for data, seq, key, bad in ((["garbage"], "", "data[0]", "garbage"), (["i=1", "ns=x;i=2"], "", "data[1]", "ns=x;i=2"),
                                  (["i=1"], "ns=2;x=1", "seq", "ns=2;x=1"))],
    ({**OPCUA_OK, "scales": [{"scale_id": 1, "data": ["i=1"]}, {"scale_id": 1, "data": ["i=2"]}]},
     "opcua.scales[1].scale_id = 1 (from file {path}): also opcua.scales[0]"),
    ({**OPCUA_OK, "scales": [{"scale_id": 1, "data": ["i=1"]}, {"scale_id": 2, "data": ["i=1"]}]},
     "opcua.scales[1].data[0] = 'i=1' (from file {path}): also opcua.scales[0]"),
    ({**OPCUA_OK, "security": "Basic256Sha256,Encrypt,c.pem,k.pem"}, "opcua.security = 'Basic256Sha256,Encrypt,"),
    ({**OPCUA_OK, "security": "Basic256Sha256"}, "opcua.security = 'Basic256Sha256' (from file {path}): must be"),
    ({**OPCUA_OK, "security": "Basic256Sha256,Sign,/no/cert.pem,/no/key.pem"},
     "opcua.security = '/no/cert.pem' (from file {path}): cannot be read"),
    ({**OPCUA_OK, "username": "u"}, "opcua.username is set (from file {path}) but opcua.password_file is not"),
    ({**OPCUA_OK, "username": "u", "password_file": "/no/such/file"},
     "opcua.password_file = '/no/such/file' (from file {path}): cannot be read"),
    ({**OPCUA_OK, "endpoint": "http://x:1/"}, "opcua.endpoint = 'http://x:1/' (from file {path}): must be an OPC UA "),
]

REFUSED_TABLES = [(table, *case) for table in BROKER_TABLES for case in refused_tables(table)] + [
    ("opcua", *case) for case in REFUSED_OPCUA] + [
    ("mqtt", {**TABLE_OK["mqtt"], "fields": {"ts": ""}}, "[mqtt.fields] (from file {path}): MQTT payload fields: an empty"),
    ("sparkplug", {**TABLE_OK["sparkplug"], "metrics": {"data": []}},
     "[sparkplug.metrics] (from file {path}): Sparkplug weighing metrics: 0 data metrics"),
    ("sparkplug", {**TABLE_OK["sparkplug"], "metrics": {"data": ["Weight"], "seq": "Weight"}},
     "[sparkplug.metrics] (from file {path}): Sparkplug weighing metrics: an empty name, or seq among the data"),
]


@pytest.mark.parametrize("table,content,expected", REFUSED_TABLES, ids=[e[:60] for _, _, e in REFUSED_TABLES])
def test_a_table_that_is_not_one_is_refused_naming_what_is_wrong(tmp_path, table, content, expected):
    secret = readable(tmp_path)
    path = table_file(tmp_path, table, {k: secret if v == "SECRET" else v for k, v in content.items()})
    with pytest.raises(ConfigError) as refused:
        config.load({}, config_file=path, environ={})
    assert str(refused.value).startswith(expected.replace("{path}", path)), str(refused.value)


@pytest.mark.parametrize("table", config.TABLES)
def test_a_table_that_is_no_table_or_without_acked_mode_is_refused(tmp_path, table):
    f = tmp_path / "ingestor.toml"
    f.write_text(f"{table} = 5\n")
    with pytest.raises(ConfigError, match=rf"^{table} = 5 \(from file .*\): must be a table \(\[{table}\]\)$"):
        config.load({}, config_file=str(f), environ={})
    path = table_file(tmp_path, table, TABLE_OK[table], top='ack_bind = "off"\n')
    with pytest.raises(ConfigError, match=rf"^\[{table}\] .* needs acked mode, but ack_bind = 'off'"):
        config.load({}, config_file=path, environ={})
    with pytest.raises(ConfigError, match=r"needs acked mode, but ack_bind = 'none'"):
        config.load({"ack_bind": "none"}, config_file=table_file(tmp_path, table, TABLE_OK[table]), environ={})


def test_the_tables_are_read_from_the_file_only_and_an_environment_variable_for_one_is_a_typo(tmp_path):
    assert config.load({}, environ={"INGESTOR_MQTT": "[mqtt]", "INGESTOR_SPARKPLUG": "x"})[0].mqtt is None
    assert config.unknown_environment({"INGESTOR_MQTT": "x", "INGESTOR_SPARKPLUG": "x", "INGESTOR_BATCH_SIZE": "1"}) \
        == ["INGESTOR_MQTT", "INGESTOR_SPARKPLUG"]


def test_the_effective_configuration_prints_both_tables_as_toml_that_loads_back_the_same(tmp_path):
    secret = readable(tmp_path)
    f = tmp_path / "ingestor.toml"
    f.write_text(f"""
[mqtt]
broker = "127.0.0.1:1883"
topics = ["plant/+/scale/{{scale_id}}/weight"]
qos = 0
protocol = "5"
username = "plant"
password_file = "{secret}"
fields = {{seq = "", ts = "time.ms", data = ["weight.value", "weight.unit"]}}

[sparkplug]
broker = "127.0.0.1:1884"
devices = ["plant/+/scale-{{scale_id}}"]
host_id = "ingestor-1"
metrics = {{data = ["Weighing/Gross", "Weighing/Unit"], seq = "Weighing/Counter"}}
""")
    cfg, sources = config.load({}, config_file=str(f), environ={"INGESTOR_INSTANCE": "box-7"})
    printed = config.to_toml(cfg, sources)
    again = tmp_path / "again.toml"
    again.write_text(printed)
    back = config.load({}, config_file=str(again), environ={})[0]
    assert back.mqtt == msgspec.structs.replace(cfg.mqtt, client_id="scale-ingestor-box-7")
    assert back.sparkplug == msgspec.structs.replace(cfg.sparkplug, client_id="scale-ingestor-box-7-sparkplug")
    assert f"[mqtt]  # file {f}" in printed and 'client_id = "scale-ingestor-box-7"  # default' in printed
    assert config.load({}, environ={})[0].mqtt is None
    assert "# [mqtt] (unset)" in config.to_toml(*config.load({}, environ={}))
