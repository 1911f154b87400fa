"""An etcd server and PostgreSQL 15 nodes managed by Patroni, from Debian's packages, on free loopback ports.

How plants that need HA run PostgreSQL (docs/operations.md#running-with-patroni). Patroni and its
PostgreSQL run as ``postgres`` when the tests run as root. :meth:`PatroniCluster.kill_leader`
SIGKILLs a node's Patroni and its PostgreSQL at once, as a power cut would.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import yaml

from ingestor import schema
from ingestor.embedded_pg import find_bindir

from .fix_service import free_port, require_command

PASSWORD = "patroni-test"  # loopback only, for a cluster that lives as long as one test
TTL_S, LOOP_WAIT_S, RETRY_TIMEOUT_S = 10, 1, 4  # Patroni wants loop_wait + 2 × retry_timeout <= ttl


class Node:
    def __init__(self, name: str, root: Path) -> None:
        self.name, self.dir = name, root / name
        self.pg_port, self.api_port = free_port(), free_port()
        self.config = self.dir / "patroni.yml"
        self.log = self.dir / "patroni.log"
        self.proc: subprocess.Popen | None = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def state(self) -> dict:
        """Patroni's own view of the node (GET /patroni); {} when its REST API does not answer."""
        try:
            with urllib.request.urlopen(f"{self.api}/patroni", timeout=2) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            return json.load(e)
        except (OSError, ValueError):
            return {}


class PatroniCluster:
    """etcd and ``nodes`` Patroni nodes; ``synchronous`` sets Patroni's ``synchronous_mode``; ``parameters``
    PostgreSQL settings over the fixture's own (which turn fsync off: a SIGKILL is not an OS crash)."""

    def __init__(self, synchronous: bool, nodes: int = 2, parameters: dict[str, str] | None = None) -> None:
        self.synchronous = synchronous
        self.parameters = parameters or {}  # PostgreSQL settings over the fixture's (bench: durable ones)
        self.root = Path(tempfile.mkdtemp(prefix="ingestor-patroni-"))
        self.root.chmod(0o755)
        self.etcd_port, self.etcd_peer_port = free_port(), free_port()
        self.etcd: subprocess.Popen | None = None
        self.nodes = [Node(f"node{i}", self.root) for i in range(nodes)]
        self._user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        ports = ",".join(str(n.pg_port) for n in self.nodes)
        self.dsn = (f"host={','.join(['127.0.0.1'] * nodes)} port={ports} user=postgres password={PASSWORD} "
                    "dbname=postgres target_session_attrs=read-write connect_timeout=2")

    # -- start and stop -----------------------------------------------------------------

    def _start(self) -> None:
        etcd = require_command("etcd")
        require_command("patroni")
        (self.root / "etcd").mkdir()
        with open(self.root / "etcd.log", "wb") as log:
            self.etcd = subprocess.Popen(
                [etcd, "--name", "e0", "--data-dir", str(self.root / "etcd"),
                 "--listen-client-urls", f"http://127.0.0.1:{self.etcd_port}",
                 "--advertise-client-urls", f"http://127.0.0.1:{self.etcd_port}",
                 "--listen-peer-urls", f"http://127.0.0.1:{self.etcd_peer_port}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.etcd_peer_port}",
                 "--initial-cluster", f"e0=http://127.0.0.1:{self.etcd_peer_port}"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        for node in self.nodes:
            self._configure(node)
        self.start_node(self.nodes[0])
        leader = self.wait_leader(timeout_s=90)
        schema.migrate(self.node_dsn(leader))
        for node in self.nodes[1:]:
            self.start_node(node)
        self.wait_replicas_streaming()

    def _configure(self, node: Node) -> None:
        node.dir.mkdir()
        config = {
            "scope": "edge", "name": node.name,
            "restapi": {"listen": f"127.0.0.1:{node.api_port}", "connect_address": f"127.0.0.1:{node.api_port}"},
            "etcd3": {"hosts": f"127.0.0.1:{self.etcd_port}"},
            "bootstrap": {
                "dcs": {
                    "ttl": TTL_S, "loop_wait": LOOP_WAIT_S, "retry_timeout": RETRY_TIMEOUT_S,
                    "maximum_lag_on_failover": 1 << 40,  # async: a standby behind may still be promoted
                    "synchronous_mode": self.synchronous,
                    "postgresql": {"use_pg_rewind": False, "use_slots": True, "parameters": {
                        "wal_level": "replica", "hot_standby": "on", "max_wal_senders": 10,
                        "max_replication_slots": 10, "wal_keep_size": "256MB",
                        # a SIGKILL is a process crash, not an OS crash: the kernel keeps written WAL
                        "fsync": "off", "full_page_writes": "off", **self.parameters}},
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C"}],
                "pg_hba": ["local all all trust", "host replication replicator 127.0.0.1/32 scram-sha-256",
                           "host all all 127.0.0.1/32 scram-sha-256"],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{node.pg_port}", "connect_address": f"127.0.0.1:{node.pg_port}",
                "data_dir": str(node.dir / "pg"), "bin_dir": str(find_bindir()), "pgpass": str(node.dir / "pgpass"),
                "authentication": {"superuser": {"username": "postgres", "password": PASSWORD},
                                   "replication": {"username": "replicator", "password": PASSWORD}},
                "parameters": {"unix_socket_directories": str(node.dir)},
            },
        }
        node.config.write_text(yaml.safe_dump(config))
        self._chown(node.dir)

    def _chown(self, path: Path) -> None:
        if self._user is not None:
            for p in [path, *path.rglob("*")]:
                os.chown(p, self._user.pw_uid, self._user.pw_gid)

    def start_node(self, node: Node) -> None:
        kwargs: dict = {}
        if self._user is not None:
            kwargs = {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}
        with open(node.log, "ab") as log:
            node.proc = subprocess.Popen(["patroni", str(node.config)], stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, cwd=str(node.dir), **kwargs)

    def close(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.terminate()
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(node.proc.pid, signal.SIGKILL)
            self._kill_postgres(node)
        if self.etcd is not None:
            self.etcd.terminate()
            self.etcd.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)

    # -- what the tests do --------------------------------------------------------------

    def node_dsn(self, node: Node) -> str:
        return f"host=127.0.0.1 port={node.pg_port} user=postgres password={PASSWORD} dbname=postgres"

    def leader(self) -> Node | None:
        for node in self.nodes:
            state = node.state()
            if state.get("role") in ("master", "primary") and state.get("state") == "running":
                return node
        return None

    def wait_leader(self, timeout_s: float = 60, other_than: Node | None = None) -> Node:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            node = self.leader()
            if node is not None and node is not other_than:
                return node
            time.sleep(0.2)
        raise AssertionError(f"no leader in {timeout_s} s:\n{self.logs()}")

    def wait_replicas_streaming(self, timeout_s: float = 90) -> None:
        """Every node but the leader streams from it (and, in synchronous mode, one is the synchronous standby)."""
        deadline = time.monotonic() + timeout_s
        leader = self.wait_leader()
        want = len(self.nodes) - 1
        while time.monotonic() < deadline:
            with psycopg.connect(self.node_dsn(leader), autocommit=True) as c:
                rows = c.execute("SELECT sync_state FROM pg_stat_replication WHERE state = 'streaming'").fetchall()
            if len(rows) == want and (not self.synchronous or any(r[0] == "sync" for r in rows)):
                return
            time.sleep(0.3)
        raise AssertionError(f"the replicas do not stream from {leader.name}:\n{self.logs()}")

    def kill_leader(self) -> tuple[Node, float]:
        """SIGKILL the leader's Patroni and its PostgreSQL together; (that node, time.monotonic() of the kill)."""
        node = self.wait_leader()
        os.killpg(node.proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        self._kill_postgres(node)
        node.proc.wait(10)
        return node, killed

    def _kill_postgres(self, node: Node) -> None:
        pid_file = node.dir / "pg" / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass

    def hold_back_replicas(self) -> None:
        """Pause WAL replay and streaming on every replica: from now on they receive nothing new."""
        leader = self.wait_leader()
        for node in self.nodes:
            if node is not leader:
                with psycopg.connect(self.node_dsn(node), autocommit=True) as c:
                    c.execute("SELECT pg_wal_replay_pause()")

    def switchover(self, candidate: Node) -> None:
        """A planned switchover to ``candidate`` through ``patronictl``."""
        leader = self.wait_leader()
        done = subprocess.run(
            ["patronictl", "-c", str(leader.config), "switchover", "--leader", leader.name, "--candidate",
             candidate.name, "--force"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr

    def logs(self) -> str:
        return "\n".join(f"== {n.name}\n" + (n.log.read_text()[-2000:] if n.log.exists() else "") for n in self.nodes)
