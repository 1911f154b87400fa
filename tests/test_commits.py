"""A loss while the service was stopped, told at its next start (ingestor/commits.py).

The real service on a PostgreSQL cluster of the test's own, restored from a cold copy between two
runs: the commits the copy lacks are counted exactly (``lost_after_commit``, the ``LOST`` line,
``/health``), re-sent events are stored again (the dedup claims rolled back with the rows), and the
record's rules hold for every way a database can be behind it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request

import msgspec
import psycopg
import pytest

from ingestor import commits
from ingestor.commits import LaneCommit, Record

pytestmark = pytest.mark.slow


def events(start: int, n: int) -> bytes:
    now_ms = int(time.time() * 1000) - 60_000
    return msgspec.msgpack.encode([{"scale_id": i % 7 + 1, "seq": i, "ts": now_ms + i, "data_1": i}
                                   for i in range(start, start + n)])


def run_and_stop(service_factory, pg, start: int, n: int, kill: bool = False) -> None:
    svc = service_factory("--dsn", pg.dsn, "--writers", "2", "--batch-timeout-ms", "20")
    svc.wait_ready()
    svc.send(events(start, n))
    svc.wait_for(lambda s: s["persisted"] == n)
    if kill:
        time.sleep(commits.RECORD_EVERY_S + 1)  # a record written while running holds them
        svc.kill_tree()
    else:
        assert svc.terminate() == 0


def cold_copy(pg, to) -> None:
    pg.stop()
    subprocess.run(["cp", "-a", str(pg.pgdata), str(to)], check=True)
    pg.start()


def put_back(pg, copy) -> None:
    pg.stop()
    shutil.rmtree(pg.pgdata)
    subprocess.run(["cp", "-a", str(copy), str(pg.pgdata)], check=True)
    pg.start()


def health(svc) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://{svc.http}/health", timeout=5) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


@pytest.mark.parametrize("stop", ["clean", "killed"])
def test_a_restore_while_stopped_is_reported_at_start_and_the_re_sent_events_are_stored_again(
        service_factory, own_pg, tmp_path, stop):
    run_and_stop(service_factory, own_pg, 0, 200)
    cold_copy(own_pg, tmp_path / "backup")
    run_and_stop(service_factory, own_pg, 200, 300, kill=stop == "killed")
    put_back(own_pg, tmp_path / "backup")

    svc = service_factory("--dsn", own_pg.dsn, "--writers", "2", "--batch-timeout-ms", "20")
    s = svc.wait_ready()
    assert s["lost_after_commit"] == 300 and s["lost"] == 0
    lines = [line for line in svc.output().splitlines() if "LOST" in line]
    assert sum(int(re.search(r"LOST (?:at least )?(\d+) committed", line).group(1)) for line in lines) == 300, lines
    assert all(("at least" in line) == (stop == "killed") for line in lines), lines
    status, body = health(svc)
    assert status == 503 and "300 committed events are missing" in body["reason"]
    assert any("missing at start" in e["event"] for e in s["recent_events"])

    svc.send(events(200, 300))  # the senders re-send: nothing is refused as a duplicate the database lost
    s = svc.wait_for(lambda s: s["persisted"] == 300 and s["pending"] == 0)
    assert s["duplicates"] == 0
    with psycopg.connect(own_pg.dsn) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT (scale_id, seq)) FROM weighing_logs").fetchone() == (
            500, 500)
    assert svc.terminate() == 0
    svc = service_factory("--dsn", own_pg.dsn, "--writers", "1")  # told once: the next start finds nothing missing
    assert svc.wait_ready()["lost_after_commit"] == 0


def test_a_record_of_another_database_is_not_compared(service_factory, own_pg, dsn):
    run_and_stop(service_factory, own_pg, 0, 100)
    svc = service_factory("--dsn", dsn, "--writers", "2")  # the same data directory, a new database
    assert svc.wait_ready()["lost_after_commit"] == 0
    assert "records commits to another database" in svc.output() and "LOST" not in svc.output()


# -- the record's rules, every way a database can be behind it ---------------------------------------

MINE = LaneCommit("run-b", position=900, persisted=300, lifetime=800)
CASES = [
    ("same run, the database at the same position", LaneCommit("run-b", 900, 300, 800), 0),
    ("same run, the database ahead (a record older than a kill)", LaneCommit("run-b", 950, 320, 820), 0),
    ("same run, the database behind", LaneCommit("run-b", 600, 200, 700), 100),
    ("another run's checkpoint (restored to before this run)", LaneCommit("run-a", 400, 400, 500), 300),
    ("another run, further back (several runs lost)", LaneCommit("run-0", 50, 50, 50), 750),
    ("another run, yet the database ahead (a later run not recorded)", LaneCommit("run-c", 10, 10, 810), 0),
    ("no checkpoint for the lane at all", None, 800),
]


@pytest.mark.parametrize("held, missing", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_shortfall_of_each_lane_follows_the_record_s_rules(held, missing):
    record = Record("db-1", "edge", "public", True, "2026-12-06T00:00:00+00:00", {0: MINE})
    found = commits.shortfalls(record, {} if held is None else {0: held})
    assert sum(s.missing for s in found) == missing


def test_the_record_is_replaced_whole_or_not_at_all(tmp_path):
    file = commits.path(tmp_path, "edge", "public")
    first = Record("db-1", "edge", "public", True, "t1", {0: MINE})
    commits.save(file, first)
    assert commits.load(file) == first
    file.with_name(file.name + ".tmp").write_bytes(b"{torn")  # a crash mid-write leaves only the temporary file
    assert commits.load(file) == first
    file.write_bytes(b"{torn")
    with pytest.raises(ValueError, match="cannot read the record of the last commits"):
        commits.load(file)


def test_record_numbers_are_reserved_on_disk_ahead_of_the_writers(dsn, tmp_path):
    keeper = commits.Keeper(tmp_path, "edge", "public")
    assert keeper.reserved == 0 and not keeper.wants_reserve(1)  # nothing for the writers before the check
    keeper.check(dsn)
    assert keeper.reserved == commits.RESERVE and keeper.floor == 0
    keeper.keep("run-a", [], numbers_used=commits.RESERVE // 2)
    assert commits.load(keeper.file).records_reserved == commits.RESERVE  # half the reserve is left: not raised
    assert keeper.wants_reserve(commits.RESERVE // 2 + 1)
    keeper.keep("run-a", [], numbers_used=commits.RESERVE // 2 + 1)
    assert keeper.reserved == commits.load(keeper.file).records_reserved == commits.RESERVE * 3 // 2 + 1
