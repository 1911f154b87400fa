"""A real, throwaway PostgreSQL cluster for the test session, and a fresh database per test."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import psycopg
import pytest

from ingestor import schema
from ingestor.embedded_pg import EmbeddedPostgres

# A throwaway cluster needs no durability; these make it several times faster.
TEST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres]:
    """One PostgreSQL server from the machine's binaries, started once per session."""
    data_dir = tempfile.mkdtemp(prefix="ingestor-test-pg-")
    server = EmbeddedPostgres(data_dir, settings=TEST_SETTINGS)
    server.start()
    yield server
    server.stop("immediate")
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def migrated_template(pg_server: EmbeddedPostgres) -> str:
    """A database migrated once per session, copied for each test (a copy is ~2x faster than migrating)."""
    name = "ingestor_migrated_template"
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    schema.migrate(pg_server.dsn.replace("dbname=postgres", f"dbname={name}"))
    return name


class Database(NamedTuple):
    name: str
    dsn: str


@contextmanager
def database_from(server: EmbeddedPostgres, template: str, prefix: str = "t") -> Iterator[Database]:
    """A new database on ``server`` copied from ``template``; dropped on leaving (its sessions ended)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield Database(name, server.dsn.replace("dbname=postgres", f"dbname={name}"))
    finally:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def dsn(pg_server: EmbeddedPostgres, migrated_template: str) -> Iterator[str]:
    """A new, migrated database on the session server; dropped after the test."""
    with database_from(pg_server, migrated_template) as db:
        schema.migrate(db.dsn)  # nothing to apply: today's partitions, should the session cross midnight
        yield db.dsn


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(dsn, autocommit=True) as c:
        yield c


@pytest.fixture
def own_pg() -> Iterator[EmbeddedPostgres]:
    """A migrated PostgreSQL cluster of this test's own, which the test may stop and start."""
    data_dir = tempfile.mkdtemp(prefix="ingestor-fault-pg-")
    os.chmod(data_dir, 0o755)  # reachable by the postgres user when the tests run as root
    # synchronous_commit stays on: an immediate stop is a crash, and a commit
    # reported before its WAL was written would be lost with it (fsync off is
    # fine, the operating system keeps the written WAL).
    settings = {k: v for k, v in TEST_SETTINGS.items() if k != "synchronous_commit"}
    server = EmbeddedPostgres(data_dir, settings=settings)
    server.start()
    schema.migrate(server.dsn)
    yield server
    server.stop("immediate")
    shutil.rmtree(data_dir, ignore_errors=True)
