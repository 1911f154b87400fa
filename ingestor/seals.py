"""Signed seals over the alibi chains' heads (issue 15): Ed25519 keys, the seal, its append-only file.

A seal says "at this moment, scale S's chain ended at record N with link L"
for every scale, signed with the service's Ed25519 secret key (the
``cryptography`` library, RFC 8032). The public key is what an inspector
gets; the secret key stays in a file of mode 0600 on the edge box, never in
the database. A seal bounds what a forger who rewrites a chain consistently
(every link recomputed) can hide: everything up to the last seal is pinned
(:func:`ingestor.alibi.verify_heads`).

The signed bytes are the seal's canonical JSON without its signature
(:meth:`Seal.message`: keys in a fixed order, heads sorted by scale), so a
seal can be checked from its JSON line alone, in any language.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import msgspec

from .errors import ConfigError

log = logging.getLogger(__name__)

SECRET_SUFFIX, PUBLIC_SUFFIX = ".ed25519", ".ed25519.pub"
TAIL_BLOCK = 64 * 1024  # read from the end of the seal file in blocks this large (a seal of 300 scales is ~25 KB)


class Head(msgspec.Struct, array_like=True, frozen=True, order=True):
    """One scale's chain head: [scale_id, record number, link as 64 hex digits]."""

    scale_id: int
    record_no: int
    link: str


class Seal(msgspec.Struct, frozen=True, kw_only=True):
    """A signed statement of every scale's chain head at ``sealed_at`` (RFC 3339, UTC)."""

    version: int = 1
    instance: str
    sealed_at: str
    heads: tuple[Head, ...]
    key_id: str  #: the first 16 hex digits of the public key, to pick the right one
    signature: str = ""  #: Ed25519 over :meth:`message`, 128 hex digits

    def message(self) -> bytes:
        """The signed bytes: this seal as JSON without the signature, heads sorted by scale_id."""
        unsigned = msgspec.structs.replace(self, signature="", heads=tuple(sorted(self.heads)))
        return msgspec.json.encode(unsigned)


def generate_keys(directory: str | os.PathLike, name: str = "alibi") -> tuple[Path, Path]:
    """Write ``NAME.ed25519`` (secret, mode 0600, PEM PKCS#8) and ``NAME.ed25519.pub`` (PEM) into ``directory``.

    Returns (public file, secret file). Raises FileExistsError when either
    exists (a sealing key is never overwritten: inspectors hold the public
    half), ConfigError for a name that is not a plain file name.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from .security import new_key_paths

    public, secret = new_key_paths(directory, name, PUBLIC_SUFFIX, SECRET_SUFFIX)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    # the secret file never exists with wider permissions, even briefly
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    public.chmod(0o644)
    return public, secret


def load_secret(path: str | os.PathLike):
    """The Ed25519 secret key in ``path``. ConfigError naming the file when it is missing, unreadable, readable
    by others than its owner, or not an Ed25519 key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        if os.stat(path).st_mode & 0o077:
            raise ConfigError(f"sealing key {path}: readable by others (chmod 600 it)")
    except OSError as e:
        raise ConfigError(f"sealing key {path}: {e.strerror or e}") from None
    return _load_pem(path, "sealing key", "private", lambda data: serialization.load_pem_private_key(data, None),
                     Ed25519PrivateKey)


def load_public(path: str | os.PathLike):
    """The Ed25519 public key in ``path`` (PEM). ConfigError naming the file otherwise."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return _load_pem(path, "public key", "public", serialization.load_pem_public_key, Ed25519PublicKey)


def _load_pem(path: str | os.PathLike, what: str, kind: str, loader, key_type):
    try:
        key = loader(Path(path).read_bytes())
    except OSError as e:
        raise ConfigError(f"{what} {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise ConfigError(f"{what} {path}: not a PEM {kind} key ({e})") from None
    if not isinstance(key, key_type):
        raise ConfigError(f"{what} {path}: not an Ed25519 key")
    return key


def key_id(public_key) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()[:16]


def sign(secret_key, instance: str, sealed_at: str, heads: list[Head]) -> Seal:
    """A seal of ``heads`` signed with ``secret_key``."""
    seal = Seal(instance=instance, sealed_at=sealed_at, heads=tuple(sorted(heads)),
                key_id=key_id(secret_key.public_key()))
    return msgspec.structs.replace(seal, signature=secret_key.sign(seal.message()).hex())


def is_genuine(seal: Seal, public_key) -> bool:
    """Whether ``seal`` was signed by the secret half of ``public_key`` and not changed since."""
    from cryptography.exceptions import InvalidSignature

    try:
        public_key.verify(bytes.fromhex(seal.signature), seal.message())
    except (InvalidSignature, ValueError):
        return False
    return True


def append(path: str | os.PathLike, seal: Seal) -> None:
    """Append ``seal`` as one JSON line to ``path`` and fsync it (created 0640 if missing).

    One ``write`` of an ``O_APPEND`` descriptor: lines never interleave and
    nothing written before is touched. Raises OSError from the disk.
    """
    line = msgspec.json.encode(seal) + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def cut_torn_tail(path: str | os.PathLike) -> int:
    """Cut a torn last line (a crash mid-append: bytes after the last newline) off ``path``; returns the bytes cut.

    Without this the next append would glue a whole seal onto the torn one.
    The torn seal is in the database (it is stored there first) and is
    appended whole again by :meth:`Sealer.seal`. Raises OSError from the disk.
    """
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return 0
    try:
        size = end = os.fstat(fd).st_size
        while end > 0:
            start = max(0, end - TAIL_BLOCK)
            block = os.pread(fd, end - start, start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        if end < size:
            os.ftruncate(fd, end)
            os.fsync(fd)
        return size - end
    finally:
        os.close(fd)


def last(path: str | os.PathLike) -> Seal | None:
    """The last whole seal of ``path`` (read from the end, so a year of seals costs nothing); None when there is
    none. Raises OSError from the disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        end = os.fstat(fd).st_size
        tail = b""
        while end > 0:
            start = max(0, end - TAIL_BLOCK)
            tail = os.pread(fd, end - start, start) + tail
            end = start
            lines = tail.rstrip(b"\n").split(b"\n")
            if len(lines) > 1 or end == 0:
                try:
                    return msgspec.json.decode(lines[-1], type=Seal)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    return None
        return None
    finally:
        os.close(fd)


def read(path: str | os.PathLike) -> list[Seal]:
    """The seals of ``path`` in the order written. A torn last line (a crash mid-append) is left out;
    a malformed line elsewhere raises msgspec.DecodeError or ValidationError naming it."""
    lines = Path(path).read_bytes().split(b"\n")
    seals = []
    for number, line in enumerate(lines, 1):
        if not line:
            continue
        try:
            seals.append(msgspec.json.decode(line, type=Seal))
        except (msgspec.DecodeError, msgspec.ValidationError):
            if number == len(lines):  # the last line without its newline: a torn append
                break
            raise
    return seals


# -- the service's sealer ---------------------------------------------------------------------------

HEADS_SQL = "SELECT scale_id, record_no, link FROM ingestor_claims WHERE record_no IS NOT NULL ORDER BY scale_id"
INSERT_SQL = "INSERT INTO ingestor_seals (instance, sealed_at, key_id, seal) VALUES (%s, %s, %s, %s)"
CONNECT_TIMEOUT_S = 5  # the supervisor's loop waits this long at most for a server that does not answer


class Sealer:
    """Seals every scale's chain head for the supervisor: signed, stored in ``ingestor_seals``, appended to a file.

    Raises ConfigError at construction when the secret key cannot be used
    (so a bad key fails the start, not the first seal an interval later).
    """

    def __init__(self, dsn: str, schema: str, instance: str, key_file: str | os.PathLike,
                 seal_file: str | os.PathLike) -> None:
        self.dsn, self.schema, self.instance = dsn, schema, instance
        self.key = load_secret(key_file)
        self.seal_file = Path(seal_file)
        self._filed = False  # the file holds every seal of this instance the database holds (checked at first)

    def seal(self) -> Seal | None:
        """Sign the heads committed now; None when no chain has a record yet.

        The database first, then the file: a seal in the file is always in
        the database too (the verifier reports one that is not). Before the
        first seal, and after one whose append failed, the file is caught up:
        a torn last line cut, and this instance's seals the database holds
        after the file's last one appended, oldest first. Raises
        psycopg.Error from PostgreSQL (nothing stored), OSError from the
        file (the seal is in the database only, until the next seal).
        """
        import datetime as dt

        import psycopg

        from .failpoints import failpoint
        from .schema import set_search_path

        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
            set_search_path(conn, self.schema)
            heads = [Head(s, n, bytes(link).hex()) for s, n, link in conn.execute(HEADS_SQL)]
            if not heads:
                return None
            self._warn_behind(heads)
            now = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
            seal = sign(self.key, self.instance, now, heads)
            failpoint("seal.database", conn)
            conn.execute(INSERT_SQL, (self.instance, now, seal.key_id, msgspec.json.encode(seal).decode()))
        failpoint("seal.file")
        self.seal_file.parent.mkdir(parents=True, exist_ok=True)
        behind = [] if self._filed else self._unfiled(seal)
        for missed in behind:
            append(self.seal_file, missed)
        if behind:
            log.warning("Seal file %s caught up: %d seal(s) of the database appended",
                                                self.seal_file, len(behind))
        self._filed = False
        append(self.seal_file, seal)
        self._filed = True
        return seal

    def _warn_behind(self, heads: list[Head]) -> None:
        """Log, at ERROR, the chains whose head is behind the one the seal file's last seal signed: the database
        lost records (a restore or a failover) and no skip moved them on (docs/alibi.md#after-a-restore)."""
        try:
            latest = last(self.seal_file)
        except OSError:
            return  # told by the append that follows
        if latest is None or latest.instance != self.instance:
            return
        now = {h.scale_id: h.record_no for h in heads}
        behind = [(h.scale_id, now[h.scale_id], h.record_no) for h in latest.heads
                  if h.scale_id in now and now[h.scale_id] < h.record_no]
        if behind:
            s, at, sealed = behind[0]
            log.error("Alibi chains of %d scale(s) are behind the last seal of %s (scale %d at record %d, sealed at "
                      "%d): the database lost records, and their numbers will be given again "
                      "(docs/alibi.md#after-a-restore)", len(behind), self.seal_file, s, at, sealed)

    def _unfiled(self, now: Seal) -> list[Seal]:
        """This instance's seals in the database after the file's last one (``now`` excluded), oldest first."""
        import psycopg

        from .schema import set_search_path

        cut = cut_torn_tail(self.seal_file)
        if cut:
            log.warning("Seal file %s: cut a torn last line of %d bytes (a crash mid-append)",
                                                self.seal_file, cut)
        latest = last(self.seal_file)
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
            set_search_path(conn, self.schema)
            texts = conn.execute(
                "SELECT seal FROM ingestor_seals WHERE instance = %s AND sealed_at > %s::timestamptz "
                "AND sealed_at < %s::timestamptz ORDER BY sealed_at, id",
                (self.instance, latest.sealed_at if latest else "-infinity", now.sealed_at)).fetchall()
        return [msgspec.json.decode(t, type=Seal) for (t,) in texts]
