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


# -- the [mqtt] table ---------------------------------------------------------------

MQTT_OK = {"broker": "127.0.0.1:1883", "topics": ["plant/+/scale/{scale_id}/weight"]}
MQTT_CASES = [(key, value) for key, t in config._MQTT_TYPES.items() for value in bad_values(t)]


def toml(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return msgspec.json.encode(value).decode() if isinstance(value, str) else repr(value)


def mqtt_file(tmp_path, table: dict, top: str = "") -> str:
    f = tmp_path / "ingestor.toml"
    f.write_text(top + "[mqtt]\n" + "".join(f"{k} = {toml(v)}\n" for k, v in table.items()))
    return str(f)


def test_the_mqtt_matrix_covers_every_key_of_the_table():
    ruled = {key for key, _ in MQTT_CASES}
    free = {"username", "password_file", "tls_ca", "tls_cert", "tls_key"}  # any text: files are read at load
    by_hand = {"topics", "fields"}  # test_an_mqtt_table_that_is_not_one_is_refused_naming_what_is_wrong
    assert ruled | free | by_hand == set(config._MQTT_TYPES) and not ruled & (free | by_hand)


@pytest.mark.parametrize("key,value", MQTT_CASES, ids=[f"{k}={v}" for k, v in MQTT_CASES])
def test_an_mqtt_value_outside_its_rule_is_refused_naming_the_dotted_key_value_and_file(tmp_path, key, value):
    path = mqtt_file(tmp_path, {**MQTT_OK, key: value})
    with pytest.raises(ConfigError) as refused:
        config.load({}, config_file=path, environ={})
    message = str(refused.value)
    assert message.startswith(f"mqtt.{key} = {value!r} (from file {path}): must be "), message


def readable(tmp_path) -> str:
    (tmp_path / "secret").write_text("pw\n")
    return str(tmp_path / "secret")


REFUSED_TABLES = [
    ({"topics": MQTT_OK["topics"]}, "[mqtt] (from file {path}): Object missing required field `broker`"),
    ({"broker": MQTT_OK["broker"]}, "[mqtt] (from file {path}): Object missing required field `topics`"),
    ({**MQTT_OK, "brokers": "x:1"}, "[mqtt] (from file {path}): Object contains unknown field `brokers`"),
    ({**MQTT_OK, "topics": []}, "mqtt.topics = [] (from file {path}): must be a list of 1 to 64 topic templates"),
    ({**MQTT_OK, "topics": "a/{scale_id}"}, "mqtt.topics = 'a/{scale_id}' (from file {path}): must be a list"),
    ({**MQTT_OK, "topics": [f"t{i}/{{scale_id}}" for i in range(65)]}, "mqtt.topics = ["),
    ({**MQTT_OK, "topics": [7]}, "mqtt.topics[0] = 7 (from file {path}): must be text"),
    ({**MQTT_OK, "topics": ["a/{scale_id}", "plant/#/x/{scale_id}"]},
     "mqtt.topics[1] = 'plant/#/x/{scale_id}' (from file {path}): MQTT topic template"),
    ({**MQTT_OK, "topics": ["plant/scale"]}, "mqtt.topics[0] = 'plant/scale' (from file {path}): MQTT topic template"),
    ({**MQTT_OK, "fields": {"time": "t"}}, "[mqtt.fields] (from file {path}): Object contains unknown field `time`"),
    ({**MQTT_OK, "fields": {"ts": ""}}, "[mqtt.fields] (from file {path}): MQTT payload fields: an empty field"),
    ({**MQTT_OK, "fields": {"data": ["a", "b", "c", "d", "e", "f"]}}, "[mqtt.fields] (from file {path}): MQTT payload"),
    ({**MQTT_OK, "fields": {"data": [1]}}, "[mqtt.fields.data[0]] (from file {path}): Expected `str`, got `int`"),
    ({**MQTT_OK, "username": "u"}, "mqtt.username is set (from file {path}) but mqtt.password_file is not"),
    ({**MQTT_OK, "password_file": "SECRET"}, "mqtt.password_file is set (from file {path}) but mqtt.username is not"),
    ({**MQTT_OK, "tls_ca": "SECRET", "tls_cert": "SECRET"}, "[mqtt] (from file {path}): a client certificate needs"),
    ({**MQTT_OK, "tls_cert": "SECRET", "tls_key": "SECRET"}, "[mqtt] (from file {path}): a client certificate needs"),
    *[({**MQTT_OK, "username": "u", "password_file": "SECRET", "tls_ca": "SECRET", "tls_cert": "SECRET",
        "tls_key": "SECRET", key: "/no/such/file"},
       f"mqtt.{key} = '/no/such/file' (from file {{path}}): cannot be read: No such file or directory")
      for key in ("password_file", "tls_ca", "tls_cert", "tls_key")],
]


@pytest.mark.parametrize("table,expected", REFUSED_TABLES, ids=[e[:50] for _, e in REFUSED_TABLES])
def test_an_mqtt_table_that_is_not_one_is_refused_naming_what_is_wrong(tmp_path, table, expected):
    secret = readable(tmp_path)
    path = mqtt_file(tmp_path, {k: secret if v == "SECRET" else v for k, v in table.items()})
    with pytest.raises(ConfigError) as refused:
        config.load({}, config_file=path, environ={})
    assert str(refused.value).startswith(expected.replace("{path}", path)), str(refused.value)


def test_mqtt_that_is_not_a_table_or_without_acked_mode_is_refused(tmp_path):
    f = tmp_path / "ingestor.toml"
    f.write_text("mqtt = 5\n")
    with pytest.raises(ConfigError, match=r"^mqtt = 5 \(from file .*\): must be a table \(\[mqtt\]\)$"):
        config.load({}, config_file=str(f), environ={})
    path = mqtt_file(tmp_path, MQTT_OK, top='ack_bind = "off"\n')
    with pytest.raises(ConfigError, match=r"needs acked mode, but ack_bind = 'off'"):
        config.load({}, config_file=path, environ={})
    with pytest.raises(ConfigError, match=r"needs acked mode, but ack_bind = 'none'"):
        config.load({"ack_bind": "none"}, config_file=mqtt_file(tmp_path, MQTT_OK), environ={})


def test_the_mqtt_table_is_read_from_the_file_only_and_an_environment_variable_for_it_is_a_typo(tmp_path):
    assert config.load({}, environ={"INGESTOR_MQTT": "[mqtt]"})[0].mqtt is None
    assert config.unknown_environment({"INGESTOR_MQTT": "x", "INGESTOR_BATCH_SIZE": "1"}) == ["INGESTOR_MQTT"]


def test_the_effective_configuration_prints_the_mqtt_table_as_toml_that_loads_back_the_same(tmp_path):
    secret = readable(tmp_path)
    path = mqtt_file(tmp_path, {**MQTT_OK, "qos": 0, "protocol": "5", "username": "plant", "password_file": secret,
                                "fields": {"seq": "", "ts": "time.ms", "data": ["weight.value", "weight.unit"]}})
    cfg, sources = config.load({}, config_file=path, environ={"INGESTOR_INSTANCE": "box-7"})
    printed = config.to_toml(cfg, sources)
    again = tmp_path / "again.toml"
    again.write_text(printed)
    assert config.load({}, config_file=str(again), environ={})[0].mqtt == msgspec.structs.replace(
        cfg.mqtt, client_id="scale-ingestor-box-7")
    assert f"[mqtt]  # file {path}" in printed and 'client_id = "scale-ingestor-box-7"  # default' in printed
    assert config.load({}, environ={})[0].mqtt is None
    assert "# [mqtt] (unset)" in config.to_toml(*config.load({}, environ={}))
