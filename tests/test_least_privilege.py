"""sql/roles.sql: the service runs as a least-privilege role, which can write measurements and nothing else."""

from __future__ import annotations

import uuid
from pathlib import Path

import msgspec
import psycopg
import pytest
from psycopg import errors

from ingestor import archive, partitions

from .archive_fixtures import fill_day, partition_name, past_day

ROLES_SQL = (Path(__file__).resolve().parent.parent / "sql" / "roles.sql").read_text()

pytestmark = pytest.mark.slow


@pytest.mark.promise
def test_service_as_least_privilege_role_stores_events_and_can_do_nothing_else(service_factory, dsn, conn, pg_server,
                                                                                tmp_path):
    conn.execute("SET search_path TO public")
    conn.execute(ROLES_SQL)
    login = f"ingestor_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE ROLE {login} LOGIN PASSWORD 'secret-{login}' IN ROLE ingestor_writer")
    dbname = conn.info.dbname
    role_dsn = f"host=127.0.0.1 port={pg_server.port} dbname={dbname} user={login} password=secret-{login}"
    try:
        svc = service_factory("--dsn", role_dsn, "--writers", "2")
        svc.wait_ready()
        svc.send(msgspec.msgpack.encode([{"scale_id": s, "seq": 1, "ts": 1_700_000_000_000} for s in range(1, 21)]))
        svc.wait_for(lambda s: s["persisted"] == 20)
        assert svc.terminate() == 0
        assert conn.execute("SELECT count(*) FROM weighing_logs").fetchone()[0] == 20
        with psycopg.connect(role_dsn, autocommit=True) as as_role:
            assert as_role.execute("SELECT ingestor_ensure_partitions(10)").fetchone()[0] >= 1  # as the owner
            for statement in ("DELETE FROM weighing_logs", "TRUNCATE scale_current_states", "DROP TABLE ingestor_claims",
                              "CREATE TABLE intruder (x int)", "UPDATE weighing_logs SET seq = 0"):
                with pytest.raises(errors.InsufficientPrivilege):
                    as_role.execute(statement)
        # the lifecycle as this role: archive a past day, then drop it (ingestor/lifecycle.py)
        fill_day(conn, past_day(3))
        target = archive.Target(str(tmp_path / "archive"))
        done, errors_ = partitions.archive_before(role_dsn, "public", target, past_day(1))
        assert errors_ == [] and [a.rows for a in done] == [280]
        assert partitions.retire(role_dsn, "public", past_day(1), target).dropped == [(partition_name(past_day(3)), 280)]
    finally:
        conn.execute(f"DROP ROLE IF EXISTS {login}")
