"""A PostgreSQL primary and a streaming standby from the machine's binaries (tests/test_failover.py, bench/replication.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Mapping

import psycopg

from ingestor import schema
from ingestor.embedded_pg import EmbeddedPostgres

from .fix_pg import TEST_SETTINGS

# The test clusters' speed-ups but synchronous_commit: an immediate stop is the primary's
# crash, and a commit must be in its WAL (and with synchronous replication, the standby's) when answered.
FAST = {k: v for k, v in TEST_SETTINGS.items() if k != "synchronous_commit"}


class Replicated:
    """A primary and a streaming standby made from it by ``pg_basebackup``, both from the machine's binaries."""

    def __init__(self, synchronous: bool, settings: Mapping[str, str] = FAST) -> None:
        self.dirs = [tempfile.mkdtemp(prefix="ingestor-failover-pg-") for _ in range(2)]
        for d in self.dirs:
            os.chmod(d, 0o755)  # reachable by the postgres user when the tests run as root
        self.primary = EmbeddedPostgres(self.dirs[0], settings=settings)
        self.standby = EmbeddedPostgres(self.dirs[1], settings=settings)
        try:
            self._start(synchronous)
        except BaseException:
            self.close()
            raise
        self.dsn = (f"host=127.0.0.1,127.0.0.1 port={self.primary.port},{self.standby.port} user=postgres "
                    f"dbname=postgres passfile={self.primary.passfile} target_session_attrs=read-write connect_timeout=2")

    def _start(self, synchronous: bool) -> None:
        self.primary.start()
        schema.migrate(self.primary.dsn)
        password = self.primary.passfile.read_text().strip().rsplit(":", 1)[1]
        self.standby.data_dir.mkdir(exist_ok=True)
        self.standby._chown(self.standby.data_dir)
        # -R writes standby.signal and primary_conninfo (with this password) into the copy
        self.primary._run("pg_basebackup", "-d", f"host=127.0.0.1 port={self.primary.port} user=postgres "
                          f"password={password}", "-D", str(self.standby.pgdata), "-X", "stream", "-R", "-c", "fast")
        shutil.copy(self.primary.passfile, self.standby.passfile)
        self.standby.start()
        if synchronous:  # only now: with no standby yet, every commit (the migration's) would wait
            with psycopg.connect(self.primary.dsn, autocommit=True) as c:
                c.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
                c.execute("SELECT pg_reload_conf()")
                deadline = time.monotonic() + 30
                while c.execute("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'").fetchone()[0] != 1:
                    assert time.monotonic() < deadline, "the standby did not become synchronous"
                    time.sleep(0.1)

    def standby_count(self) -> int:
        with psycopg.connect(self.standby.dsn, autocommit=True) as c:
            return c.execute("SELECT count(*) FROM weighing_logs").fetchone()[0]

    def wait_standby_has(self, n: int, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while (have := self.standby_count()) != n:
            assert time.monotonic() < deadline, f"the standby has {have} rows, not {n}"
            time.sleep(0.1)

    def hold_back_standby(self) -> None:
        """Stop the standby's WAL receiver: from now on it receives nothing (it stays a standby)."""
        with psycopg.connect(self.standby.dsn, autocommit=True) as c:
            c.execute("ALTER SYSTEM SET primary_conninfo = ''")
            c.execute("SELECT pg_reload_conf()")
            deadline = time.monotonic() + 30
            while c.execute("SELECT count(*) FROM pg_stat_wal_receiver").fetchone()[0]:
                assert time.monotonic() < deadline, "the standby's WAL receiver did not stop"
                time.sleep(0.1)

    def fail_over(self) -> float:
        """Crash the primary, promote the standby; return the monotonic time of the crash."""
        crashed = time.monotonic()
        self.primary.stop("immediate")
        self.promote()
        return crashed

    def promote(self) -> None:
        """Promote the standby (``pg_ctl promote``, waiting until it takes writes)."""
        self.standby._run("pg_ctl", "promote", "-D", str(self.standby.pgdata), "-w")

    def close(self) -> None:
        for server in (self.primary, self.standby):
            server.stop("immediate")
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)
