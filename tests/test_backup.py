"""Backup and restore of the edge database (docs/operations.md#backup-and-restore), proven on a real cluster.

A hot base backup (``pg_basebackup -X stream``) taken while events stream in, more events after it,
the service stopped, the backup put back: the next start reports exactly the commits the backup
lacks, the senders' re-sent events are stored once again (the dedup claims rolled back with the
rows), and every alibi chain still verifies.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time

import msgspec
import psycopg
import pytest

pytestmark = pytest.mark.slow
SCALES = 9


def events(start: int, n: int) -> list[bytes]:
    """Frames of at most 500 events (docs/PROTOCOL.md §2 allows 1,000)."""
    now_ms = int(time.time() * 1000) - 60_000
    return [msgspec.msgpack.encode([{"scale_id": i % SCALES + 1, "seq": i, "ts": now_ms + i, "data_1": i}
                                    for i in range(first, min(first + 500, start + n))])
            for first in range(start, start + n, 500)]


def base_backup(pg, to) -> None:
    """``pg_basebackup`` of the running cluster into ``to``, WAL streamed alongside (a consistent copy)."""
    password = pg.passfile.read_text().strip().rsplit(":", 1)[1]
    to.mkdir()
    pg._chown(to)
    pg._run("pg_basebackup", "-d", f"host=127.0.0.1 port={pg.port} user=postgres password={password}",
            "-D", str(to / "pg"), "-X", "stream", "-c", "fast")


def test_a_restored_base_backup_is_reported_exactly_re_sent_events_are_stored_again_and_chains_verify(
        service_factory, own_pg, tmp_path):
    svc = service_factory("--dsn", own_pg.dsn, "--writers", "2", "--batch-timeout-ms", "20")
    svc.wait_ready()
    svc.send(*events(0, 2000))
    svc.wait_for(lambda s: s["persisted"] == 2000)
    streaming = threading.Thread(target=lambda: [svc.send(*events(2000 + k * 100, 100)) or time.sleep(0.05)
                                                 for k in range(30)])
    streaming.start()  # the backup is taken while events stream in
    backup = own_pg.data_dir / "backup"  # where the postgres user may write; removed with the cluster
    base_backup(own_pg, backup)
    streaming.join()
    svc.send(*events(5000, 1000))
    svc.wait_for(lambda s: s["persisted"] == 6000 and s["pending"] == 0)
    assert svc.terminate() == 0

    own_pg.stop()
    shutil.rmtree(own_pg.pgdata)
    subprocess.run(["cp", "-a", str(backup / "pg"), str(own_pg.pgdata)], check=True)
    own_pg.start()
    with psycopg.connect(own_pg.dsn) as conn:
        held = conn.execute("SELECT count(*) FROM weighing_logs").fetchone()[0]
    assert 2000 <= held < 6000

    svc = service_factory("--dsn", own_pg.dsn, "--writers", "2", "--batch-timeout-ms", "20")
    s = svc.wait_ready()
    assert s["lost_after_commit"] == 6000 - held, (held, s["lost_after_commit"])
    print(f"\nrestore: the backup holds {held} of 6000 events; {s['lost_after_commit']} reported lost at start")
    svc.send(*events(0, 6000))  # the senders re-send everything
    s = svc.wait_for(lambda s: s["pending"] == 0 and s["persisted"] + s["duplicates"] == 6000)
    assert (s["persisted"], s["duplicates"]) == (6000 - held, held)
    with psycopg.connect(own_pg.dsn) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT (scale_id, seq)) FROM weighing_logs").fetchone() == (
            6000, 6000)
        states = conn.execute("SELECT count(*), min(seq) >= 5991 FROM scale_current_states").fetchone()
    assert states == (SCALES, True)
    assert svc.terminate() == 0
    verify = subprocess.run([sys.executable, "-m", "ingestor.cli", "alibi", "verify", "--dsn", own_pg.dsn],
                            capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr
