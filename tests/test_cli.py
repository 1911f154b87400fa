"""The command line of docs/operations.md#command-line as operators and scripts use it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import msgspec
import pytest

from ingestor import config, schema
from ingestor.errors import ConfigError
from tests.fix_service import free_port


def ingestor(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ingestor.cli", *args], capture_output=True, text=True, timeout=60, env=env)


def test_stats_without_a_service_exits_1_with_a_clear_message():
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    r = ingestor("stats", "--stats-endpoint", endpoint, "--timeout", "0.5")
    assert r.returncode == 1
    assert f"no ingestor answered on {endpoint}" in r.stderr


@pytest.mark.slow
def test_stats_prints_lines_for_people_and_json_without_histograms_unless_asked(service_factory, dsn):
    svc = service_factory("--dsn", dsn, "--writers", "1")
    svc.wait_ready()
    svc.send(b'{"scale_id": 1, "seq": 1, "ts": 1700000000000}')
    svc.wait_for(lambda s: s["persisted"] == 1)
    text = ingestor("stats", "--stats-endpoint", svc.stats_endpoint).stdout
    lines = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in text.splitlines()}
    assert lines["persisted"] == "1" and lines["status"] == "running" and lines["database_connected"] == "true"
    assert re.fullmatch(r"p50 \d+, p99 \d+", lines["latency_ms"]) and "{" not in text
    assert lines["writer 0"].startswith("pid ") and "alive, 1 persisted in 1 batches" in lines["writer 0"]
    plain = json.loads(ingestor("stats", "--json", "--stats-endpoint", svc.stats_endpoint).stdout)
    full = json.loads(ingestor("stats", "--json", "--histograms", "--stats-endpoint", svc.stats_endpoint).stdout)
    histograms = {"latency_histogram", "batch_size_histogram", "batch_ms_histogram"}
    assert not histograms & set(plain) and histograms <= set(full) and full["latency_histogram"]["count"] == [1]
    assert len(json.dumps(plain, indent=2).splitlines()) < 80
    # `ingestor stats --json | head -c 0` (finding 9 of issue 26: a BrokenPipeError traceback): quiet, 141
    proc = subprocess.Popen([sys.executable, "-m", "ingestor.cli", "stats", "--json", "--histograms",
                             "--stats-endpoint", svc.stats_endpoint], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (141, b"")
    assert svc.terminate() == 0


def test_migrate_is_idempotent(dsn, conn):
    first = ingestor("migrate", "--dsn", dsn)
    second = ingestor("migrate", "--dsn", dsn)
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert "0 migration(s) applied now" in second.stdout
    shipped = [m.version for m in schema.migrations()]  # every one, once
    assert conn.execute("SELECT array_agg(version ORDER BY version) FROM ingestor_schema_migrations").fetchone()[0] \
        == shipped and shipped == list(range(1, len(shipped) + 1))


def test_config_layers_file_then_environment_then_flags(tmp_path):
    f = tmp_path / "ingestor.toml"
    f.write_text('batch_size = 100\nbatch-timeout-ms = 50\nwriters = 3\n')
    cfg, sources = config.load({"writers": "4"}, config_file=str(f), environ={"INGESTOR_BATCH_TIMEOUT_MS": "75"})
    assert (cfg.batch_size, cfg.batch_timeout_ms, cfg.writers) == (100, 75, 4)
    assert sources["batch_size"].startswith("file") and sources["batch_timeout_ms"] == "environment INGESTOR_BATCH_TIMEOUT_MS"
    assert sources["writers"] == "--writers" and sources["ring_capacity"] == "default"


@pytest.mark.parametrize("flags,words", [
    ({"batch_size": 0}, ["batch_size = 0", "an integer from 1 to 1000000"]),
    ({"writers": "many"}, ["writers = 'many'", "an integer from 1 to 64 or auto"]),
    ({"batch_timeout_ms": "soon"}, ["batch_timeout_ms = 'soon'", "from 1 to 600000"]),
    ({"log_level": "loud"}, ["log_level = 'loud'", "debug, error, info or warning"]),
    ({"stall_seconds": -1}, ["stall_seconds = -1", "a number greater than 0"]),
    ({"bind": "localhost:5555"}, ["bind = 'localhost:5555'", "tcp://HOST:PORT"]),
    ({"http_bind": "9108"}, ["http_bind = '9108'", "HOST:PORT or off"]),
    ({"schema": "x; drop"}, ["schema = 'x; drop'", "PostgreSQL identifier"]),
    ({"curve_clients_dir": "/etc/ingestor/clients"}, ["curve_clients_dir is set", "curve_secret_key is not"]),
])
def test_invalid_option_names_the_key_and_the_rule(flags, words):
    with pytest.raises(ConfigError) as e:
        config.load(flags, environ={})
    assert all(w in str(e.value) for w in words), str(e.value)


def test_invalid_environment_value_names_the_variable():
    with pytest.raises(ConfigError, match=r"retention_days = '-3' \(from environment INGESTOR_RETENTION_DAYS\): "
                                          r"must be an integer of at least 0"):
        config.load({}, environ={"INGESTOR_RETENTION_DAYS": "-3"})


def test_config_show_prints_every_option_with_its_source(tmp_path):
    f = tmp_path / "ingestor.toml"
    f.write_text('batch_size = 100\n')
    r = ingestor("config", "show", "--config", str(f), "--writers", "3",
                 env={**os.environ, "INGESTOR_SPOOL_MAX_BYTES": "2097152"})
    assert r.returncode == 0, r.stderr
    lines = {line.split()[1 if line.startswith("#") else 0]: line for line in r.stdout.splitlines() if line}
    assert set(lines) == set(config.SCALARS) | {f"[{table}]" for table in config.TABLES}  # a table unset: a comment
    assert lines["batch_size"] == f"batch_size = 100  # file {f}"
    assert lines["writers"] == "writers = 3  # --writers"
    assert lines["dead_letter_dir"].startswith('dead_letter_dir = "') and "/dead-letters\"  # default" in lines["dead_letter_dir"]
    assert lines["spool_dir"].endswith("# default: data_dir/spool")
    assert lines["spool_max_bytes"] == "spool_max_bytes = 2097152  # environment INGESTOR_SPOOL_MAX_BYTES"
    assert lines["ring_capacity"] == "ring_capacity = 65536  # default"
    # what config show prints is itself a valid config file giving the same values
    f2 = tmp_path / "shown.toml"
    f2.write_text(r.stdout)
    again, _ = config.load({}, config_file=str(f2), environ={})
    assert (again.batch_size, again.writers, again.spool_max_bytes) == (100, 3, 2097152)


@pytest.mark.parametrize("flag,value,message", [
    ("--batch-size", "-5", "ingestor: batch_size = '-5' (from --batch-size): must be an integer from 1 to 1000000"),
    ("--batch-size", "abc", "ingestor: batch_size = 'abc' (from --batch-size): must be an integer from 1 to 1000000"),
    ("--http-bind", "127.0.0.1:99999", "ingestor: http_bind = '127.0.0.1:99999' (from --http-bind): "
                                       "port 99999 is over 65535"),
    ("--bind", "tcp://*:70000", "ingestor: bind = 'tcp://*:70000' (from --bind): port 70000 is over 65535"),
])
def test_run_with_a_bad_value_fails_at_start_in_one_line_naming_it(flag, value, message):
    r = ingestor("run", flag, value)
    assert r.returncode == 2
    assert r.stderr.strip() == message  # one line: no usage, no traceback


def test_dead_letters_list_counts_by_kind_and_replay_resends_the_valid_ones(service_factory, dsn, conn, tmp_path):
    import json

    from ingestor.deadletter import DeadLetterWriter, read
    from ingestor.protocol import Rejected

    directory = tmp_path / "letters"
    valid_now = json.dumps({"scale_id": 3, "seq": 7, "ts": 1_700_000_000_000, "data_1": "ok"}).encode()
    still_bad = json.dumps({"scale_id": 3, "seq": 8}).encode()
    DeadLetterWriter(directory, "front").write([
        Rejected("rejected_by_database", "PostgreSQL rejected the row: fixed since", 3, valid_now, None),
        Rejected("missing_field", "invalid event: Object missing required field `ts`", 3, still_bad, None),
    ])
    listed = ingestor("dead-letters", "list", "--dead-letter-dir", str(directory), "--json")
    assert listed.returncode == 0, listed.stderr
    summary = json.loads(listed.stdout)
    assert {k: v["count"] for k, v in summary.items()} == {"missing_field": 1, "rejected_by_database": 1}
    table = ingestor("dead-letters", "list", "--dead-letter-dir", str(directory)).stdout.splitlines()
    assert table[0] == f"dead letters in {directory}" and table[1].split()[:3] == ["count", "kind", "first"]
    assert [line.split()[:2] for line in table[2:]] == [["1", "missing_field"], ["1", "rejected_by_database"]]

    svc = service_factory("--dsn", dsn, "--writers", "1")
    svc.wait_ready()
    replayed = ingestor("dead-letters", "replay", "--dead-letter-dir", str(directory), "--ack-endpoint", svc.ack_bind)
    assert replayed.returncode == 0, replayed.stderr
    assert "re-submitted 1 dead letter(s)" in replayed.stdout and "kept 1 still invalid" in replayed.stdout
    # answered means committed: no waiting needed
    assert svc.stats()["persisted"] == 1
    assert conn.execute("SELECT scale_id, seq, data_1->>'val' FROM weighing_logs").fetchall() == [(3, 7, "ok")]
    assert [dl.kind for _, dl in read(directory)] == ["missing_field"]


def test_dead_letters_replay_without_a_service_keeps_every_letter_and_fails(tmp_path):
    import json

    from ingestor.deadletter import DeadLetterWriter, read
    from ingestor.protocol import Rejected
    from tests.fix_service import free_port

    directory = tmp_path / "letters"
    valid_now = json.dumps({"scale_id": 3, "seq": 7, "ts": 1_700_000_000_000}).encode()
    DeadLetterWriter(directory, "front").write([Rejected("rejected_by_database", "x", 3, valid_now, None)])
    r = ingestor("dead-letters", "replay", "--dead-letter-dir", str(directory),
                 "--ack-endpoint", f"tcp://127.0.0.1:{free_port()}", "--timeout", "1")
    assert r.returncode == 1 and "1 unanswered" in r.stdout
    assert [dl.kind for _, dl in read(directory)] == ["rejected_by_database"]


def test_dead_letter_files_rotate_and_the_oldest_go_first_counted(tmp_path):
    from ingestor.deadletter import DeadLetterWriter, read
    from ingestor.protocol import Rejected

    writer = DeadLetterWriter(tmp_path, "front", max_bytes=1 << 16, file_bytes=1 << 13)
    letter = Rejected("undecodable", "undecodable MessagePack frame", None, b"\xc1" * 200, None)
    for _ in range(100):
        writer.write([letter] * 5)
    files = list(tmp_path.glob("*.jsonl"))
    total = sum(p.stat().st_size for p in files)
    kept = sum(1 for _ in read(tmp_path))
    assert len(files) > 2 and total <= (1 << 16) + (1 << 13)
    assert writer.dropped > 0 and kept + writer.dropped == 500
    numbers = sorted(int(p.stem.rsplit("-", 1)[1]) for p in files)
    assert numbers == list(range(numbers[0], numbers[-1] + 1)) and numbers[0] > 1  # the oldest went first


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("path", sorted(EXAMPLES.rglob("*.toml")), ids=lambda p: p.name)
def test_shipped_example_configs_load(path):
    cfg, sources = config.load({}, config_file=str(path), environ={})
    assert cfg.writer_count() >= 1


def test_the_full_example_config_names_every_option_with_its_default():
    text, tables = (EXAMPLES / "ingestor.toml").read_text().split("\n# [mqtt]\n")
    mqtt, sparkplug = tables.split("\n# [sparkplug]\n")
    sparkplug, opcua = sparkplug.split("\n# [opcua]\n")
    commented = dict(re.findall(r"^# (\w+) = (\S+)", text, flags=re.M))
    assert set(commented) == set(config.SCALARS)
    defaults = config.Config(data_dir="/var/lib/ingestor")
    for name, shown in commented.items():
        if name in ("dsn", "instance", "curve_secret_key", "curve_clients_dir", "spool_dir", "dead_letter_dir",
                    "archive_to", "alibi_key", "seal_file"):
            continue  # examples of values, not defaults (these default to unset)
        assert tomllib.loads(f"v = {shown}")["v"] == getattr(defaults, name), name
    # the [mqtt] table, uncommented, names every key of it and of [mqtt.fields], the defaults as defaults
    def uncommented(text: str) -> str:  # the "# key = value" and "# [table]" lines, without their "# "
        return "\n".join(line[2:] for line in text.splitlines() if re.match(r"# (\[|\w+ = )", line))

    table = tomllib.loads("[mqtt]\n" + uncommented(mqtt))["mqtt"]
    assert set(table) == set(config.MqttConfig.__struct_fields__)
    assert msgspec.convert(table.pop("fields"), config.PayloadFields) == config.PayloadFields()
    defaults = {f.name: f.default for f in msgspec.structs.fields(config.MqttConfig)}
    assert (table["qos"], table["protocol"]) == (defaults["qos"], defaults["protocol"])
    table = tomllib.loads("[sparkplug]\n" + uncommented(sparkplug))["sparkplug"]
    assert set(table) == set(config.SparkplugConfig.__struct_fields__)
    assert msgspec.convert(table.pop("metrics"), config.WeighingMetrics) == config.WeighingMetrics()
    table = tomllib.loads("[opcua]\n" + uncommented(opcua))["opcua"]
    assert set(table) == set(config.OpcuaConfig.__struct_fields__)
    defaults = {f.name: f.default for f in msgspec.structs.fields(config.OpcuaConfig)}
    assert (table["publishing_interval_ms"], table["queue_size"]) == (defaults["publishing_interval_ms"],
                                                                     defaults["queue_size"])
    assert set(table["scales"][0]) == set(config.OpcuaScale.__struct_fields__)


def test_config_show_masks_the_dsn_password_and_names_ignored_environment_variables():
    r = ingestor("config", "show", "--dsn", "host=db user=ingestor password=s3cret dbname=scales",
                 env={**os.environ, "INGESTOR_BACH_SIZE": "100"})
    assert r.returncode == 0, r.stderr
    assert 'dsn = "host=db user=ingestor password=**** dbname=scales"  # --dsn' in r.stdout
    assert "s3cret" not in r.stdout
    assert "ignored: INGESTOR_BACH_SIZE names no option" in r.stderr


def test_run_with_a_dsn_that_is_not_one_exits_2_in_one_line(tmp_path):
    # issue 10 #9: a traceback and exit 1
    r = ingestor("run", "--dsn", "not a dsn at all", "--data-dir", str(tmp_path), "--http-bind", "off",
                 "--stats-endpoint", f"tcp://127.0.0.1:{free_port()}")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "'not a dsn at all' (from --dsn): not a libpq connection" in r.stderr


@pytest.mark.parametrize("what", ["unreachable", "unknown database", "not a dsn"])
def test_migrate_that_cannot_reach_its_database_exits_2_in_one_line(pg_server, what):
    dsn = {"unreachable": f"host=127.0.0.1 port={free_port()} dbname=x connect_timeout=3",
           "unknown database": pg_server.dsn.replace("dbname=postgres", "dbname=no_such_db"),
           "not a dsn": "not a dsn at all"}[what]
    r = ingestor("migrate", "--dsn", dsn)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.startswith("ingestor: ")
    assert {"unreachable": "Connection refused", "unknown database": 'database "no_such_db" does not exist',
            "not a dsn": "missing"}[what] in r.stderr


def test_run_without_the_password_it_needs_fails_at_once_like_a_wrong_one(service_factory, pg_server):
    # issue 10 #9: "fe_sendauth: no password supplied" was retried for ever (a missing password file)
    dsn = f"host=127.0.0.1 port={pg_server.port} user=postgres dbname=postgres passfile=/nonexistent"
    svc = service_factory("--dsn", dsn, "--writers", "1")
    assert svc.proc.wait(30) == 2
    assert "no password supplied" in svc.output() and "Waiting for PostgreSQL" not in svc.output()


@pytest.mark.slow
def test_database_commands_without_a_dsn_use_the_running_services_database(service_factory, request):
    # finding 9 of issue 26: the embedded server's port changes every start; `stats` found the service, the rest
    # needed --dsn
    data = tempfile.mkdtemp(prefix="ingestor-cli-embedded-")
    os.chmod(data, 0o755)  # PostgreSQL runs as 'postgres' when the tests run as root: it must reach its directory
    request.addfinalizer(lambda: shutil.rmtree(data, ignore_errors=True))
    svc = service_factory("--writers", "1", "--data-dir", data)  # no --dsn: the embedded PostgreSQL under it
    svc.wait_ready()
    svc.send(b'{"scale_id": 1, "seq": 1, "ts": 1700000000000, "data_1": "12.5"}')
    svc.wait_for(lambda s: s["persisted"] == 1)
    assert "password" not in svc.stats()["dsn"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTOR_")}
    env["INGESTOR_STATS_ENDPOINT"] = svc.stats_endpoint
    r = ingestor("alibi", "verify", env=env)
    assert (r.returncode, r.stdout.split(",")[0]) == (0, "verified: 1 records"), r.stderr
    r = ingestor("history", "--scale", "1", "--since", "2023-01-01", "--json", env=env)
    assert r.returncode == 0 and '"12.5"' in r.stdout, r.stderr
    assert ingestor("partitions", "list", env=env).returncode == 0
    assert svc.terminate() == 0
    r = ingestor("alibi", "verify", env=env)  # the service is gone: one line, exit 2
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and "no running ingestor answered" in r.stderr
