"""A real, throwaway PostgreSQL cluster for the test session, and a fresh database per test."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from typing import Iterator

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


@pytest.fixture
def dsn(pg_server: EmbeddedPostgres) -> Iterator[str]:
    """A new, migrated database on the session server; dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = pg_server.dsn.replace("dbname=postgres", f"dbname={name}")
    schema.migrate(url)
    yield url
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(dsn, autocommit=True) as c:
        yield c
