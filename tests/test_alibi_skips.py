"""Record numbers never given twice after a restore (docs/alibi.md#after-a-restore): the reservation in
ingestor/commits.py, the floor in ingestor/chains.py, the skip as ingestor/verifier.py reads it.

The real service with its chains sealed, on a PostgreSQL cluster of the test's own put back to a cold copy
between two runs (as an operator restores a backup): every receipt printed before the restore names the same
weighing afterwards or none, ``alibi verify`` passes and shows the skip, and every way a forger could use a
skip to hide a deletion is found.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

import msgspec
import psycopg
import pytest

from ingestor import commits, seals, verifier

from .test_commits import cold_copy, put_back

pytestmark = pytest.mark.slow
SCALES = 10


def events(start: int, n: int) -> bytes:
    now_ms = int(time.time() * 1000) - 60_000
    return msgspec.msgpack.encode([{"scale_id": i % SCALES + 1, "seq": i, "ts": now_ms + i, "data_1": i}
                                   for i in range(start, start + n)])


def receipts(dsn: str) -> dict[tuple[int, int], int]:
    """What delivery notes could have printed: (scale, record number) → the weighing's seq."""
    with psycopg.connect(dsn) as conn:
        return {(s, no): seq for s, no, seq in conn.execute(
            "SELECT scale_id, record_no, seq FROM weighing_logs WHERE record_no IS NOT NULL")}


def alibi_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ingestor.cli", "alibi", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("stop", ["clean", "killed"])
def test_after_a_restore_no_receipt_names_another_weighing_and_the_skip_verifies_as_a_restore(
        service_factory, own_pg, tmp_path, stop):
    public, secret = seals.generate_keys(tmp_path / "keys")
    seal_file = tmp_path / "seals.jsonl"
    sealing = ("--alibi-key", str(secret), "--seal-file", str(seal_file))

    def run(start: int, n: int, kill: bool = False) -> None:
        svc = service_factory("--dsn", own_pg.dsn, "--writers", "2", "--batch-timeout-ms", "20", *sealing)
        svc.wait_ready()
        svc.send(events(start, n))
        svc.wait_for(lambda s: s["persisted"] == n and s["pending"] == 0)
        if kill:
            time.sleep(commits.RECORD_EVERY_S + 1)  # a record written while running holds the commits
            svc.kill_tree()
        else:
            assert svc.terminate() == 0

    run(0, 1000)
    cold_copy(own_pg, tmp_path / "backup")
    run(1000, 500, kill=stop == "killed")
    printed = receipts(own_pg.dsn)  # 1,500 weighings, 150 a scale, each with its receipt number
    assert len(printed) == 1500 and max(no for _, no in printed) == 150
    put_back(own_pg, tmp_path / "backup")

    svc = service_factory("--dsn", own_pg.dsn, "--writers", "2", "--batch-timeout-ms", "20", *sealing)
    s = svc.wait_ready()
    assert s["lost_after_commit"] == 500
    with psycopg.connect(own_pg.dsn) as conn:
        ((floor, lost),) = conn.execute("SELECT floor, lost FROM ingestor_alibi_skips").fetchall()
        heads = conn.execute("SELECT min(record_no), max(record_no) FROM ingestor_claims").fetchone()
    assert lost == 500 and floor >= 150 and heads == (floor, floor), (floor, heads)
    assert re.search(rf"Alibi chains skip to record {floor + 1} \({SCALES} chain\(s\) moved\)", svc.output())
    svc.send(events(1000, 500), events(1500, 300))  # the senders re-send what was lost, and the plant goes on
    s = svc.wait_for(lambda s: s["persisted"] == 800 and s["pending"] == 0)
    assert svc.terminate() == 0 and s["seal_failures"] == 0

    now = receipts(own_pg.dsn)
    assert len(now) == 1800
    renamed = {k: (seq, now[k]) for k, seq in printed.items() if k in now and now[k] != seq}
    assert renamed == {}  # a receipt names the weighing it named, or none
    assert sum(k not in now for k in printed) == 500
    assert min(no for (_, no), seq in now.items() if seq >= 1000) == floor + 1

    keys = ["--public-key", str(public), "--seal-file", str(seal_file), "--dsn", own_pg.dsn]
    verify = alibi_cli("verify", *keys)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert re.search(rf"SKIP: record numbers up to {floor} skipped .* after 500 committed events were found "
                     rf"missing: {SCALES} chain\(s\) read continue past it", verify.stdout), verify.stdout
    report = verifier.verify(own_pg.dsn, "public", public_keys=[seals.load_public(public)], seal_file=seal_file)
    (skip,) = report.skips
    assert (report.records, report.findings, skip.chains) == (1800, [], SCALES)
    # the second run's seals (at its start and, stopped cleanly, at its stop) went with the database's commits
    assert skip.seals_lost == (2 if stop == "clean" else 1)
    lost_receipt = next(k for k in printed if k not in now)
    shown = alibi_cli("show", f"{lost_receipt[0]}/{lost_receipt[1]}", "--dsn", own_pg.dsn)
    assert shown.returncode == 1 and f"skipped records up to {floor}" in shown.stderr, shown.stderr
