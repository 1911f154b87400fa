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
    assert ruled | free == set(config.FIELDS) and not ruled & free


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
