"""Every refusal of the command line is one line and exit 2, secrets masked, nothing changed (issue 26, finding 7/9).

docs/operations.md#exit-codes: "2 … one line, no traceback". Each case runs
the real command in a fresh working directory with a real PostgreSQL
behind ``{dsn}``: bad dates, missing and unreadable paths, directories
where files belong, URIs with credentials, malformed DSNs, bad option
values. A reader that goes away (``ingestor … | head``) ends a command
quietly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

SECRET = "S3CRETpassw0rd"
BAD_DSN = f"host=127.0.0.1 port=abc password={SECRET}"
NO_DSN = "not a connection string"

# (arguments, what the one line must name); {dsn} a real database, {tmp} the empty working directory,
# {file} a regular file in it
CASES: dict[str, tuple[list[str], str]] = {
    # dates and times
    "partitions archive: a date that is none": (["partitions", "archive", "--before", "2026-13-01", "--to", "{tmp}/a",
                                                 "--dsn", "{dsn}"], "2026-13-01"),
    "history: a time that is none": (["history", "--scale", "1", "--since", "yesterday", "--dsn", "{dsn}"],
                                     "yesterday"),
    "history: a scale that is no number": (["history", "--scale", "x", "--since", "2026-01-01", "--dsn", "{dsn}"],
                                           "'x'"),
    "alibi verify: a --since that is none": (["alibi", "verify", "--since", "2026-02-30", "--dsn", "{dsn}"],
                                             "2026-02-30"),
    "alibi verify: a --scale that is no number": (["alibi", "verify", "--scale", "one", "--dsn", "{dsn}"], "'one'"),
    "alibi show: a record that is none": (["alibi", "show", "two", "--dsn", "{dsn}"], "'two'"),
    # missing paths, directories for files
    "alibi verify: a missing seal file": (["alibi", "verify", "--seal-file", "{tmp}/missing.jsonl", "--dsn", "{dsn}"],
                                          "missing.jsonl"),
    "alibi verify: a directory for the seal file": (["alibi", "verify", "--seal-file", "{tmp}", "--dsn", "{dsn}"],
                                                    "Is a directory"),
    "alibi verify: a missing public key": (["alibi", "verify", "--public-key", "{tmp}/k.pub", "--dsn", "{dsn}"],
                                           "k.pub"),
    "alibi verify: a directory for the public key": (["alibi", "verify", "--public-key", "{tmp}", "--dsn", "{dsn}"],
                                                     "Is a directory"),
    "alibi show: a missing public key": (["alibi", "show", "1/1", "--public-key", "{tmp}/k.pub", "--dsn", "{dsn}"],
                                         "k.pub"),
    "alibi show: a directory for the seal file": (["alibi", "show", "1/1", "--seal-file", "{tmp}", "--dsn", "{dsn}"],
                                                  "Is a directory"),
    "run: a missing config file": (["run", "--config", "{tmp}/missing.toml"], "missing.toml"),
    "run: a directory for the config file": (["run", "--config", "{tmp}"], "Is a directory"),
    "config show: a directory for the config file": (["config", "show", "--config", "{tmp}"], "Is a directory"),
    "run: a data directory under a file": (["run", "--data-dir", "{file}/data", "--http-bind", "off", "--ack-bind",
                                            "off", "--bind", "tcp://127.0.0.1:0"], "data"),
    "run: a directory for the sealing key": (["run", "--dsn", "{dsn}", "--alibi-key", "{tmp}", "--data-dir",
                                              "{tmp}/d", "--http-bind", "off", "--ack-bind", "off", "--bind",
                                              "tcp://127.0.0.1:0"], "sealing key"),
    "keys generate: a directory under a file": (["keys", "generate", "--dir", "{file}/keys"], "keys"),
    "keys alibi: a directory under a file": (["keys", "alibi", "--dir", "{file}/keys"], "keys"),
    "dead-letters list: a directory that is a file": (["dead-letters", "list", "--dead-letter-dir", "{file}"],
                                                      "file"),
    "dead-letters replay: a missing client key": (["dead-letters", "replay", "--dead-letter-dir", "{tmp}",
                                                   "--curve-server-key", "{tmp}/s.key", "--curve-client-key",
                                                   "{tmp}/c.key_secret"], "s.key"),
    "partitions archive: a target under a file": (["partitions", "archive", "--before", "2000-01-01", "--to",
                                                   "{file}/archive", "--dsn", "{dsn}"], "archive"),
    # URIs with credentials: refused, the secret never echoed
    "partitions archive: credentials in the target": (["partitions", "archive", "--before", "2026-01-01", "--to",
                                                       f"s3://AKIAEXAMPLE:{SECRET}@bucket/x", "--dsn", "{dsn}"],
                                                      "credentials"),
    "partitions verify: credentials in the endpoint": (["partitions", "verify", "--endpoint",
                                                        f"ftp://user:{SECRET}@store:9000", "--dsn", "{dsn}"],
                                                       "endpoint"),
    "run: credentials in --archive-to": (["run", "--dsn", "{dsn}", "--archive-to", f"s3://AKIA:{SECRET}@bucket/x",
                                          "--retention-days", "30"], "credentials"),
    "config show: credentials in --archive-to": (["config", "show", "--archive-to",
                                                  f"s3://AKIA:{SECRET}@bucket/x"], "credentials"),
    # DSNs that are none
    **{f"{' '.join(cmd[:2])}: a malformed DSN": ([*cmd, "--dsn", BAD_DSN], "port")
       for cmd in (["migrate"], ["rebuild-state"], ["partitions", "list"], ["partitions", "verify"],
                   ["history", "--scale", "1", "--since", "2026-01-01"], ["alibi", "verify"], ["alibi", "show", "1/1"])},
    "run: a malformed DSN": (["run", "--dsn", BAD_DSN, "--data-dir", "{tmp}/d"], "port"),
    "run: a DSN that is no DSN": (["run", "--dsn", NO_DSN, "--data-dir", "{tmp}/d"], "--dsn"),
    "migrate: a DSN that is no DSN": (["migrate", "--dsn", NO_DSN], "--dsn"),
    "central status: a malformed DSN": (["central", "status", "--edge-dsn", BAD_DSN, "--schema", "public"], "port"),
    "central setup: a malformed DSN": (["central", "setup", "--edge-dsn", BAD_DSN, "--central-dsn", BAD_DSN,
                                        "--schema", "public"], "port"),
    # option values
    "run: --alibi maybe": (["run", "--alibi", "maybe"], "true or false"),
    "run: --writers many": (["run", "--writers", "many"], "'many'"),
    "run: --batch-size 0": (["run", "--batch-size", "0"], "--batch-size"),
    "an unknown subcommand": (["archive"], "'archive'"),
    "alibi verify: no DSN and no service to ask": (["alibi", "verify", "--stats-endpoint", "tcp://127.0.0.1:9"],
                                                   "no running ingestor answered"),
    "an unknown option": (["alibi", "verify", "--publik", "x", "--dsn", "{dsn}"], "--publik"),
}


def run(args: list[str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTOR_")}
    return subprocess.run([sys.executable, "-m", "ingestor.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**env, "HOME": str(cwd), "PYTHONPATH": str(Path.cwd())})


def state(conn: psycopg.Connection) -> tuple:
    return conn.execute("SELECT (SELECT count(*) FROM weighing_logs), (SELECT count(*) FROM ingestor_seals), "
                        "(SELECT count(*) FROM ingestor_archives), (SELECT count(*) FROM pg_class)").fetchone()


@pytest.mark.parametrize("what", CASES)
def test_each_refusal_is_one_line_exit_2_no_secret_and_nothing_changed(what, dsn, conn, tmp_path):
    args, named = CASES[what]
    work = tmp_path / "work"
    work.mkdir()
    (work / "file").write_text("a file, not a directory\n")
    before_files, before_db = sorted(work.rglob("*")), state(conn)
    args = [a.replace("{dsn}", dsn).replace("{tmp}", str(work)).replace("{file}", str(work / "file")) for a in args]
    done = run(args, work)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and done.stdout == "", done.stderr
    assert "Traceback" not in done.stderr and SECRET not in done.stderr
    assert named in lines[0], lines[0]
    assert sorted(work.rglob("*")) == before_files and state(conn) == before_db  # nothing made, nothing changed


@pytest.mark.parametrize("args,code", [(["config", "show"], 141), (["partitions", "list", "--dsn", "{dsn}"], 141),
                                       (["alibi", "verify", "--dsn", "{dsn}"], 141), (["--help"], 0)])
def test_a_reader_that_goes_away_ends_the_command_quietly(args, code, dsn, tmp_path):
    args = [a.replace("{dsn}", dsn) for a in args]
    proc = subprocess.Popen([sys.executable, "-m", "ingestor.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=Path.cwd())
    proc.stdout.close()  # `ingestor … | head -c 0`: the reader is gone before the first line
    _, err = proc.communicate(timeout=60)
    assert err.decode() == "" and proc.returncode == code, (proc.returncode, err.decode())
