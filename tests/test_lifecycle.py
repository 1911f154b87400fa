"""ingestor/lifecycle.py: the service archives old days and drops only what is archived, on its own.

The real service with a real PostgreSQL; days in the past are made by
creating their partitions and rows (tests/archive_fixtures.py).
"""

from __future__ import annotations

import signal
import time
import urllib.request

import pytest

from ingestor import config as config_mod
from ingestor.errors import ConfigError

from .archive_fixtures import fill_day, partition_name, past_day
from .test_archive import live_partitions, recorded

pytestmark = pytest.mark.slow


def wait_until(predicate, svc, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout_s} s:\n{svc.output()[-3000:]}")
        time.sleep(0.2)


def test_service_archives_days_past_the_age_then_drops_only_verified_archives(service_factory, dsn, conn, tmp_path):
    old, middle, recent = past_day(6), past_day(4), past_day(2)
    for d in (old, middle, recent):
        fill_day(conn, d)
    # a day the archive's columns cannot hold: never archived, so never dropped
    conn.execute("UPDATE weighing_logs SET data_1 = '{\"val\": 1}' WHERE id = (SELECT min(id) FROM weighing_logs "
                 f"WHERE tableoid = '{partition_name(middle)}'::regclass)")
    out = tmp_path / "archive"
    svc = service_factory("--dsn", dsn, "--writers", "1", "--archive-to", str(out), "--archive-after-days", "3",
                          "--retention-days", "3")
    svc.wait_ready()
    wait_until(lambda: "Retention refused to drop" in svc.output(), svc)
    assert set(recorded(conn)) == {partition_name(old)}
    assert partition_name(old) not in live_partitions(conn)  # archived, verified, then dropped
    assert {partition_name(middle), partition_name(recent)} <= live_partitions(conn)
    log = svc.output()
    assert f"Archive of {partition_name(middle)} to {out} failed; the partition stays in PostgreSQL" in log
    assert f"Retention refused to drop {partition_name(middle)}: no verified archive" in log
    assert (out / f"{partition_name(old)}.parquet").exists() and not list(out.glob(".*.tmp"))
    s = svc.wait_for(lambda s: s["retention_refused"] == 1)  # counted just after the log line
    assert (s["archived_partitions"], s["archive_failures"]) == (1, 1)
    def metrics() -> str:  # refreshed by the supervisor's loop every second
        return urllib.request.urlopen(f"http://{svc.http}/metrics", timeout=5).read().decode()

    wait_until(lambda: "ingestor_retention_refused_partitions 1.0" in metrics(), svc, timeout_s=10)
    assert "ingestor_archive_failures_total 1.0" in metrics()
    assert svc.terminate() == 0
    assert "lifecycle" in svc.output() and "Traceback" not in svc.output()


def test_sigterm_mid_archive_stops_promptly_leaving_no_temporary_file_and_nothing_recorded(service_factory, dsn,
                                                                                          conn, tmp_path):
    from ingestor import failpoints

    fill_day(conn, past_day(5))
    out = tmp_path / "archive"
    svc = service_factory("--dsn", dsn, "--writers", "1", "--archive-to", str(out), "--archive-after-days", "1",
                          env={failpoints.ENV: "archive.write=1*sleep(30000)"})
    svc.wait_ready()
    wait_until(lambda: list(out.glob(".*.tmp")), svc)  # the file begun, its first row group held up
    started = time.monotonic()
    assert svc.terminate() == 0
    assert time.monotonic() - started < 10
    assert list(out.iterdir()) == [] and recorded(conn) == {}
    assert partition_name(past_day(5)) in live_partitions(conn)


def test_service_with_retention_and_no_archive_target_drops_expired_days_at_start(service_factory, dsn, conn):
    fill_day(conn, past_day(40))
    svc = service_factory("--dsn", dsn, "--writers", "1", "--retention-days", "30", "--partitions-ahead", "3")
    svc.wait_ready()
    wait_until(lambda: partition_name(past_day(40)) not in live_partitions(conn), svc)
    wait_until(lambda: f"Retention: dropped 1 day partition(s) before {past_day(30)}" in svc.output(), svc)
    assert svc.terminate(signal.SIGTERM) == 0


@pytest.mark.parametrize("options,message", [
    ({"archive_after_days": "2"}, "archive_after_days = 2 (from --archive-after-days) needs archive_to"),
    ({"archive_to": "/srv/a", "archive_after_days": "6", "retention_days": "5"},
     "archive_after_days = 6 (from --archive-after-days) must not exceed retention_days = 5"),
    ({"archive_to": "s3://k:s@bucket/x"}, "credentials and options do not go in the URI"),
])
def test_archive_options_that_cannot_work_together_are_refused_at_start(options, message):
    with pytest.raises(ConfigError) as e:
        config_mod.load(options, environ={})
    assert message in str(e.value)
