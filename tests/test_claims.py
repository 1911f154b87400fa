"""Dedup claims as seq runs against a real PostgreSQL: every key claimed once, whatever the order or the writer."""

from __future__ import annotations

import importlib.resources
import random
import threading

import numpy as np
import psycopg
import pytest

from ingestor import copy_payload
from ingestor.claims import Claims


def connect(dsn: str) -> psycopg.Connection:
    conn = psycopg.connect(dsn)
    copy_payload.register_dumpers(conn)
    return conn


def claim(conn: psycopg.Connection, claims: Claims, keys: list[tuple[int, int]]) -> list[bool]:
    with conn.transaction(), conn.cursor() as cur:
        fresh = claims.claim(cur, np.array([k[0] for k in keys], np.int32), np.array([k[1] for k in keys], np.int64))
    claims.committed()
    return fresh.tolist()


def stored(conn: psycopg.Connection) -> tuple[list, list]:
    heads = conn.execute("SELECT scale_id, first_seq, last_seq FROM ingestor_claims ORDER BY 1").fetchall()
    runs = conn.execute("SELECT scale_id, first_seq, last_seq FROM ingestor_claim_runs ORDER BY 1, 2").fetchall()
    return heads, runs


def claimed_keys(conn: psycopg.Connection) -> set[tuple[int, int]]:
    """Every key the tables claim; asserts the runs are disjoint and each head is its scale's highest run."""
    heads, runs = stored(conn)
    keys: set[tuple[int, int]] = set()
    top = {s: last for s, _, last in heads if last is not None}
    for scale, first, last in [h for h in heads if h[1] is not None] + runs:
        span = {(scale, q) for q in range(first, last + 1)}
        assert not keys & span, f"runs overlap at scale {scale} around {first}..{last}"
        keys |= span
    for scale, _, last in runs:
        assert last < top[scale], f"scale {scale}: a stored run above the head"
    return keys


@pytest.fixture
def db(dsn):
    with connect(dsn) as conn:
        yield conn


def test_in_order_batches_keep_one_row_per_scale_and_claim_every_key_once(db):
    claims = Claims()
    assert claim(db, claims, [(s, q) for q in range(100) for s in (1, 2, 3)]) == [True] * 300
    assert claim(db, claims, [(s, q) for q in range(100, 150) for s in (1, 2)]) == [True] * 100
    assert stored(db) == ([(1, 0, 149), (2, 0, 149), (3, 0, 99)], [])


def test_resent_keys_are_duplicates_in_one_batch_across_batches_and_for_another_writer(db, dsn):
    assert claim(db, Claims(), [(1, 5), (1, 6), (1, 5), (2, 5)]) == [True, True, False, True]
    assert claim(db, Claims(), [(1, 6), (1, 7), (2, 4), (2, 5)]) == [False, True, True, False]
    with connect(dsn) as other:
        assert claim(other, Claims(), [(1, 4), (1, 5), (1, 7), (1, 8)]) == [True, False, False, True]
    assert stored(db) == ([(1, 4, 8), (2, 4, 5)], [])


def test_gaps_leave_runs_behind_and_late_events_fill_them_once(db):
    claims = Claims()
    assert all(claim(db, claims, [(1, q) for q in range(10)]))
    assert all(claim(db, claims, [(1, q) for q in range(20, 30)]))  # gap 10..19
    assert all(claim(db, claims, [(1, q) for q in (40, 41, 35)]))  # gaps inside one batch
    assert stored(db) == ([(1, 40, 41)], [(1, 0, 9), (1, 20, 29), (1, 35, 35)])
    late = [(1, q) for q in (9, 10, 11, 19, 20, 34, 35, 36, 39, 42)]
    assert claim(db, claims, late) == [False, True, True, True, False, True, False, True, True, True]
    assert claimed_keys(db) == {(1, q) for q in [*range(12), 19, *range(20, 30), *range(34, 37), *range(39, 43)]}
    assert claim(db, claims, late) == [False] * len(late)


def test_random_orders_and_resends_claim_exactly_the_model_s_keys(db):
    rng = random.Random(12)
    claims, model = Claims(), set()
    for _ in range(60):
        scale_base = rng.choice([0, 2])
        keys = [(scale_base + rng.randrange(4), rng.choice([rng.randrange(300), rng.randrange(20)]))
                for _ in range(rng.randrange(1, 120))]
        expected = []
        for key in keys:
            expected.append(key not in model)
            model.add(key)
        assert claim(db, claims, keys) == expected
    assert claimed_keys(db) == model


def test_concurrent_writers_on_the_same_scales_claim_every_key_exactly_once(dsn):
    """Two instances writing the same scales: one lock order, so no deadlock, and each key new once."""
    fresh_counts = [0, 0]
    errors: list[BaseException] = []

    def work(n: int) -> None:
        rng = random.Random(n)
        try:
            with connect(dsn) as conn:
                claims = Claims()
                for _ in range(80):
                    keys = [(rng.randrange(1, 30), rng.randrange(400)) for _ in range(rng.randrange(1, 200))]
                    fresh_counts[n] += sum(claim(conn, claims, keys))
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with connect(dsn) as conn:
        assert sum(fresh_counts) == len(claimed_keys(conn))


def test_migration_006_turns_every_ingestor_seen_key_into_runs(pg_server):
    """The conversion of an existing dedup table loses no key and adds none."""
    name = "t_migration_006"
    with psycopg.connect(pg_server.dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with psycopg.connect(pg_server.dsn.replace("dbname=postgres", f"dbname={name}"), autocommit=True) as conn:
            sql_dir = importlib.resources.files("ingestor.sql")
            for version in ("001_initial", "002_partitions_security_definer", "003_retention",
                            "004_retention_trims_dedup_keys", "005_checkpoint_counts_failed"):
                conn.execute(sql_dir.joinpath(f"{version}.sql").read_text())
            rng = random.Random(6)
            keys = {(s, q) for s in range(1, 8) for q in rng.sample(range(500), rng.randrange(1, 300))}
            keys |= {(9, 2**63 - 1), (9, 0)}
            with conn.cursor().copy("COPY ingestor_seen FROM STDIN") as copy:
                for key in keys:
                    copy.write_row(key)
            conn.execute(sql_dir.joinpath("006_dedup_claims_as_seq_runs.sql").read_text())
            assert claimed_keys(conn) == keys
            assert conn.execute("SELECT to_regclass('ingestor_seen')").fetchone()[0] is None
    finally:
        with psycopg.connect(pg_server.dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_a_scale_row_deleted_by_hand_is_made_again_and_said(db, caplog):
    """The writer remembers which scales have their row; one deleted behind its back is recreated, with a warning."""
    claims = Claims()
    assert claim(db, claims, [(1, 0), (2, 0)]) == [True, True]
    db.execute("DELETE FROM ingestor_claims WHERE scale_id = 2")
    db.commit()
    with caplog.at_level("WARNING", logger="ingestor.claims"):
        assert claim(db, claims, [(1, 0), (1, 1), (2, 1)]) == [False, True, True]
    assert "1 scale row(s) missing (first scale 2)" in caplog.text
    assert stored(db) == ([(1, 0, 1), (2, 1, 1)], [])
