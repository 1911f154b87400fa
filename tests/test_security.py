"""Security: CURVE on the input endpoints (allowed keys stored, unknown keys refused and counted),
and the database reached with sslmode=verify-full."""

from __future__ import annotations

import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import psycopg
import pytest
import zmq

from ingestor import schema, security
from ingestor.embedded_pg import EmbeddedPostgres
from ingestor.errors import ConfigError

from .fix_pg import TEST_SETTINGS
from .fix_service import require_command
from .test_acked import AckedSender
from .test_cli import ingestor

START_MS = 1_700_000_000_000


def frame(scale_id: int, seqs: range) -> bytes:
    return msgspec.msgpack.encode([{"scale_id": scale_id, "seq": s, "ts": START_MS + s} for s in seqs])


def push(endpoint: str, frames: list[bytes], curve: tuple[bytes, bytes, bytes] | None, linger_ms: int) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    if curve is not None:
        security.apply_client(sock, *curve)
    sock.connect(endpoint)
    for f in frames:
        sock.send(f)
    sock.close(linger=linger_ms)
    ctx.term()


@pytest.fixture
def keys(tmp_path):
    """A service key pair, an allowed client in clients/, and a stranger's key pair outside it."""
    server_public, _ = security.generate_keys(tmp_path / "server", "server")
    security.generate_keys(tmp_path / "clients", "gateway-1")
    security.generate_keys(tmp_path / "strangers", "stranger")
    load = security.load_secret_key
    return {
        "server_secret": str(tmp_path / "server" / "server.key_secret"),
        "clients": str(tmp_path / "clients"),
        "known": (security.load_public_key(server_public), *load(tmp_path / "clients" / "gateway-1.key_secret")),
        "unknown": (security.load_public_key(server_public), *load(tmp_path / "strangers" / "stranger.key_secret")),
        "tmp": tmp_path,
    }


def test_keys_generate_writes_a_pair_with_a_private_secret_and_never_overwrites(tmp_path):
    r = ingestor("keys", "generate", "--dir", str(tmp_path), "--name", "gw-7")
    assert r.returncode == 0, r.stderr
    public, secret = tmp_path / "gw-7.key", tmp_path / "gw-7.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert security.load_public_key(public) == security.load_secret_key(secret)[0]
    before = secret.read_bytes()
    again = ingestor("keys", "generate", "--dir", str(tmp_path), "--name", "gw-7")
    assert again.returncode == 1 and "not overwriting" in again.stderr
    assert secret.read_bytes() == before


def test_a_public_key_file_given_as_the_secret_key_is_refused_by_name(tmp_path):
    public, _ = security.generate_keys(tmp_path, "server")
    with pytest.raises(ConfigError, match=r"server\.key' holds no secret key"):
        security.load_secret_key(public)


def test_run_with_an_unreadable_curve_key_fails_at_start_naming_it(tmp_path):
    r = ingestor("run", "--curve-secret-key", str(tmp_path / "missing.key_secret"),
                 "--curve-clients-dir", str(tmp_path), "--dsn", "host=/nonexistent")
    assert r.returncode == 2
    assert "missing.key_secret" in r.stderr


def test_known_curve_key_is_stored_and_unknown_key_is_refused_and_counted(service_factory, dsn, conn, keys):
    svc = service_factory("--dsn", dsn, "--writers", "2", "--curve-secret-key", keys["server_secret"],
                          "--curve-clients-dir", keys["clients"])
    svc.wait_ready()

    push(svc.bind, [frame(1, range(100)), frame(2, range(50))], keys["known"], linger_ms=5000)
    svc.wait_for(lambda s: s["persisted"] == 150)

    push(svc.bind, [frame(3, range(100))], keys["unknown"], linger_ms=1000)
    unknown_refused = svc.wait_for(lambda s: s["refused_clients"] >= 1)["refused_clients"]
    push(svc.bind, [frame(4, range(100))], None, linger_ms=1000)  # no CURVE at all: the handshake fails
    s = svc.wait_for(lambda s: s["refused_clients"] > unknown_refused)
    # A negative claim (nothing of the refused senders arrives) has no event to poll for:
    # give a wrongly accepted frame time to show up before looking.
    time.sleep(0.5)
    s = svc.stats()
    assert s["received_events"] == 150 and s["persisted"] == 150
    assert conn.execute("SELECT scale_id, count(*) FROM weighing_logs GROUP BY 1 ORDER BY 1").fetchall() == \
        [(1, 100), (2, 50)]
    assert "unknown CURVE key" in svc.output() and keys["unknown"][1].decode() in svc.output()
    assert f"Refused a sender on {svc.bind}: handshake failed (HANDSHAKE_FAILED_" in svc.output()
    assert any("CURVE handshake(s) refused" in e["event"] for e in s["recent_events"])  # shown by ingestor top

    # acked mode is behind CURVE too: the known key gets its reply
    sender = AckedSender(svc.ack_bind, curve=keys["known"])
    sender.send(b"t-1", frame(5, range(10)))
    (token, reply), = sender.replies(15, want=1)
    sender.close()
    assert token == b"t-1" and reply == {"accepted": 10, "duplicates": 0, "invalid": 0}

    metrics = __import__("urllib.request").request.urlopen(f"http://{svc.http}/metrics", timeout=5).read().decode()
    assert f"ingestor_refused_clients_total {float(s['refused_clients'])}" in metrics


def test_a_client_key_added_to_the_directory_is_allowed_without_a_restart(service_factory, dsn, conn, keys):
    svc = service_factory("--dsn", dsn, "--writers", "1", "--curve-secret-key", keys["server_secret"],
                          "--curve-clients-dir", keys["clients"])
    svc.wait_ready()
    push(svc.bind, [frame(7, range(20))], keys["unknown"], linger_ms=500)
    svc.wait_for(lambda s: s["refused_clients"] >= 1)

    (keys["tmp"] / "strangers" / "stranger.key").rename(keys["tmp"] / "clients" / "stranger.key")
    push(svc.bind, [frame(7, range(20))], keys["unknown"], linger_ms=5000)
    svc.wait_for(lambda s: s["persisted"] == 20)
    assert conn.execute("SELECT count(*) FROM weighing_logs WHERE scale_id = 7").fetchone()[0] == 20
    assert "Allowed client keys reloaded: 2 (was 1)" in svc.output()


def test_bundled_simulator_gets_its_own_key_when_curve_is_on(service_factory, dsn, conn, keys):
    svc = service_factory("--dsn", dsn, "--writers", "1", "--curve-secret-key", keys["server_secret"],
                          "--curve-clients-dir", keys["clients"], "--simulate-scales", "5", "--simulate-rate", "200")
    svc.wait_ready()
    s = svc.wait_for(lambda s: s["persisted"] >= 100)
    assert s["refused_clients"] == 0
    assert svc.terminate() == 0  # before the test's database goes: else the drain waits out its 10 s offline grace


# -- the database connection: sslmode=verify-full as docs/operations.md shows it ----------------

def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for DNS name ``localhost`` it signed: (ca.crt, server.crt, server.key)."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=ingestor test CA")
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (directory / "san.cnf").write_text("subjectAltName=DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "2", "-extfile", "san.cnf")
    return directory / "ca.crt", directory / "server.crt", directory / "server.key"


@pytest.fixture
def tls_pg(tmp_path) -> Iterator[tuple[EmbeddedPostgres, Path]]:
    """A migrated PostgreSQL of its own with ssl=on and a certificate for ``localhost``; yields (server, ca.crt)."""
    require_command("openssl")
    data_dir = Path(tempfile.mkdtemp(prefix="ingestor-tls-pg-"))
    data_dir.chmod(0o755)
    certs = data_dir / "certs"
    certs.mkdir()
    ca, cert, key = make_certificates(certs)
    key.chmod(0o600)
    server = EmbeddedPostgres(data_dir, settings={**TEST_SETTINGS, "ssl": "on", "ssl_cert_file": f"'{cert}'",
                                                  "ssl_key_file": f"'{key}'"})
    server._chown(certs)
    for path in (cert, key):  # PostgreSQL refuses a key it does not own (or root's at 0640)
        server._chown(path)
    server.start()
    schema.migrate(server.dsn)
    yield server, ca
    server.stop("immediate")
    shutil.rmtree(data_dir, ignore_errors=True)


def verify_full(server: EmbeddedPostgres, ca: Path, host: str) -> str:
    return f"host={host} port={server.port} dbname=postgres user=postgres passfile={server.passfile} " \
           f"sslmode=verify-full sslrootcert={ca}"


def test_sslmode_verify_full_connects_to_the_certified_name_and_refuses_another(tls_pg):
    server, ca = tls_pg
    with psycopg.connect(verify_full(server, ca, "localhost")) as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0] is True
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        psycopg.connect(verify_full(server, ca, "127.0.0.1"))


@pytest.mark.slow
def test_service_writes_over_a_verify_full_connection(tls_pg, service_factory):
    server, ca = tls_pg
    dsn = verify_full(server, ca, "localhost")
    svc = service_factory("--dsn", dsn, "--writers", "2")
    svc.wait_ready()
    svc.send(frame(21, range(500)))
    svc.wait_for(lambda s: s["persisted"] == 500)
    with psycopg.connect(server.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM weighing_logs WHERE scale_id = 21").fetchone()[0] == 500
        # every connection of the service's writers is encrypted
        assert conn.execute("SELECT bool_and(s.ssl), count(*) > 0 FROM pg_stat_ssl s "
                            "JOIN pg_stat_activity a USING (pid) WHERE a.backend_type = 'client backend' "
                            "AND a.pid <> pg_backend_pid()").fetchone() == (True, True)
