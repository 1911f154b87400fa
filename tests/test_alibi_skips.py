"""Record numbers never given twice after a restore (docs/alibi.md#after-a-restore): the reservation in
ingestor/commits.py, the floor in ingestor/chains.py, the skip as ingestor/verifier.py reads it.

The real service with its chains sealed, on a PostgreSQL cluster of the test's own put back to a cold copy
between two runs (as an operator restores a backup): every receipt printed before the restore names the same
weighing afterwards or none, ``alibi verify`` passes and shows the skip, and every way a forger could use a
skip to hide a deletion is found.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import msgspec
import numpy as np
import psycopg
import pytest

from ingestor import commits, seals, verifier
from ingestor.chains import Chains, Reservation
from ingestor.stats import FRONT_DTYPE

from .fix_pg import database_from
from .test_commits import cold_copy, put_back
from .test_verifier import events as plant_events
from .test_verifier import two_writers, write
from .test_verifier_tamper import Case, Plant

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


# -- the verifier against a skip used as a forger would use it ---------------------------------------

S, FLOOR = 3, 1000  # the scale tampered with; the plant's skip


@pytest.fixture(scope="module")
def plant(pg_server, migrated_template, tmp_path_factory) -> Iterator[Plant]:
    """Records 1-40 of scales 1-3, sealed; a skip to 1000 as the service makes it (moved, then sealed); records
    1001-1030 of scales 1-3 and a chain of scale 4 begun after the skip (1001-1010, from its genesis); sealed."""
    home = tmp_path_factory.mktemp("skips")
    public, secret = seals.generate_keys(home / "keys")
    front = np.zeros((), FRONT_DTYPE)
    front["records_reserved"], front["record_floor"] = 10**9, FLOOR
    with database_from(pg_server, migrated_template, "skips") as db:
        sealer = seals.Sealer(db.dsn, "public", "test", secret, home / "seals.jsonl")
        with two_writers(db.dsn, home) as (w0, w1):
            w1.chains = Chains(Reservation(front))  # a writer started after the skip: new chains begin at the floor
            write(w0, plant_events(0, 40, range(1, 4)))
            sealer.seal()
            with psycopg.connect(db.dsn, autocommit=True) as conn:
                assert commits.skip(conn, FLOOR, "test", 0) == 3
            sealer.seal()  # the service seals a skip before its writers go on
            write(w0, plant_events(40, 50, range(1, 4)))  # w0's guess (its own heads at 40) is refused: the claims' heads
            write(w1, plant_events(50, 70, range(1, 5)))
            sealer.seal()
        with psycopg.connect(db.dsn, autocommit=True) as c:
            assert c.execute("SELECT scale_id, record_no FROM ingestor_claims ORDER BY 1").fetchall() == [
                (1, FLOOR + 30), (2, FLOOR + 30), (3, FLOOR + 30), (4, FLOOR + 20)]
        report = verifier.verify(db.dsn, "public", public_keys=[seals.load_public(public)],
                                 seal_file=home / "seals.jsonl")
        assert report == verifier.Report(230, 4, 3, True, [], (
            verifier.Skip(FLOOR, report.skips[0].skipped_at, "test", 0, 4, 0),))
        yield Plant(db.name, public, home / "seals.jsonl")


@pytest.fixture
def case(plant, pg_server, tmp_path) -> Iterator[Case]:
    shutil.copy(plant.seal_file, tmp_path / "seals.jsonl")
    with database_from(pg_server, plant.template) as db, psycopg.connect(db.dsn, autocommit=True) as conn:
        yield Case(db.dsn, tmp_path / "seals.jsonl", conn)


def link_of(k: int) -> str:
    return f"(SELECT link FROM weighing_logs WHERE scale_id = {S} AND record_no = {k})"


# what a forger does, and what scale S's findings must include (kind, first record named)
FORGERIES = {
    "the skip's row deleted (a restore hidden)": (
        ["DELETE FROM ingestor_alibi_skips"], ("deleted", 41)),
    "the tail deleted, a skip recorded at the old head and the head set onto it": (
        [f"UPDATE ingestor_claims SET record_no = {FLOOR + 30}, link = {link_of(FLOOR + 20)} WHERE scale_id = {S}",
         f"DELETE FROM weighing_logs WHERE scale_id = {S} AND record_no > {FLOOR + 20}",
         f"INSERT INTO ingestor_alibi_skips (floor, instance, lost) VALUES ({FLOOR + 30}, 'test', 10)"],
        ("skipped", FLOOR + 21)),
    "records before the jump deleted": (
        [f"DELETE FROM weighing_logs WHERE scale_id = {S} AND record_no BETWEEN 38 AND 40"], ("deleted", 38)),
    "records after the jump deleted": (
        [f"DELETE FROM weighing_logs WHERE scale_id = {S} AND record_no BETWEEN {FLOOR + 1} AND {FLOOR + 3}"],
        ("deleted", 41)),
    "a mid-chain deletion under a skip recorded there": (
        [f"DELETE FROM weighing_logs WHERE scale_id = {S} AND record_no BETWEEN 10 AND 12",
         "INSERT INTO ingestor_alibi_skips (floor, instance, lost) VALUES (12, 'test', 3)"], ("deleted", 10)),
    "the record landing after the jump changed": (
        [f"UPDATE weighing_logs SET data_1 = '{{\"val\": \"0.0\"}}' WHERE scale_id = {S} AND record_no = {FLOOR + 1}"],
        ("deleted", 41)),  # "or record 1001 changed": without the original, the two cannot be told apart
    "the landing record renumbered past the floor": (
        [f"UPDATE weighing_logs SET record_no = {FLOOR + 40} WHERE scale_id = {S} AND record_no = {FLOOR + 1}"],
        ("moved", 41)),  # it links right after record 40: where the jump would have landed
    "a chain begun after the skip made to start at 1": (
        [f"UPDATE weighing_logs SET record_no = record_no - {FLOOR} WHERE scale_id = 4",
         f"UPDATE ingestor_claims SET record_no = record_no - {FLOOR} WHERE scale_id = 4"], None),
}


@pytest.mark.parametrize("what", list(FORGERIES))
def test_a_skip_hides_no_deletion_and_no_change(plant, case, what):
    dsn, seal_file, conn = case
    statements, expected = FORGERIES[what]
    for statement in statements:
        assert conn.execute(statement).rowcount > 0, statement
    report = verifier.verify(dsn, "public", public_keys=[seals.load_public(plant.public_key)], seal_file=seal_file)
    assert report.findings, what
    if expected is not None:
        assert any(f.scale_id == S and f.kind == expected[0] and f.records[0] == expected[1]
                   for f in report.findings), report.findings


def test_the_seal_a_skip_is_vouched_by_cannot_be_removed_unseen(plant, case):
    dsn, seal_file, conn = case
    (second,) = conn.execute("SELECT id FROM ingestor_seals ORDER BY id OFFSET 1 LIMIT 1").fetchone()
    conn.execute("DELETE FROM ingestor_seals WHERE id = %s", (second,))
    lines = seal_file.read_text().splitlines(keepends=True)
    seal_file.write_text(lines[0] + lines[2])  # from the file too: nothing left to say it was there
    report = verifier.verify(dsn, "public", public_keys=[seals.load_public(plant.public_key)], seal_file=seal_file)
    assert sorted((f.scale_id, f.kind, f.records[0]) for f in report.findings) == [
        (s, "skipped", 41) for s in (1, 2, 3)]  # scale 4 began after the skip: its first record links to its genesis
    # without the keys nothing is vouched for: the skip is shown, not checked
    assert verifier.verify(dsn, "public").skips[0].chains == 4


def test_a_seal_the_database_lost_after_the_skip_is_still_unrecorded(plant, case):
    dsn, seal_file, conn = case
    conn.execute("DELETE FROM ingestor_seals WHERE id = (SELECT max(id) FROM ingestor_seals)")
    report = verifier.verify(dsn, "public", public_keys=[seals.load_public(plant.public_key)], seal_file=seal_file)
    assert [f.kind for f in report.findings] == ["unrecorded"] and report.skips[0].seals_lost == 0
