"""Reaching PostgreSQL at start: which failed connections are worth waiting out, and the wait itself.

After a power cut the database (often on another box) may come back after
the ingestor. Connection refused, timeouts, unresolvable host names and "the
database system is starting up" are waited out, with a backoff from
:data:`WAIT`'s first delay to its last. A server that answers with a
refusal (bad password, unknown database or role, pg_hba) or a certificate
that does not verify is a configuration error, raised at once
(docs/operations.md#start).
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg

from . import schema
from .backoff import Backoff
from .errors import DatabaseError

WAIT = Backoff(first_s=1.0, max_s=30.0)  # while PostgreSQL cannot be reached at start

# FATAL messages of a server that is there but cannot take connections yet.
_TRANSIENT_FATAL = (
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "the database system is not accepting connections",
    "sorry, too many clients already",
    "remaining connection slots are reserved",
)

# Answers that only a change of configuration mends. libpq's own "no password
# supplied" comes without FATAL: the server asked for a password and none was
# configured (a missing password file), a refusal like a wrong password.
_REFUSALS = ("FATAL", "certificate", "SSL", "no password supplied", "invalid connection option", "invalid sslmode")


def connection_error_is_transient(e: psycopg.OperationalError) -> bool:
    """True when a failed connection may succeed later without anyone changing the configuration.

    libpq gives no SQLSTATE for failed connections (``e.sqlstate`` is None),
    so the message decides: no server answer (refused, timeout, DNS) or a
    FATAL from a server not ready yet is transient; any other FATAL (a
    refusal: password, role, database, pg_hba) and certificate or SSL
    failures are not.
    """
    text = str(e)
    if any(m in text for m in _TRANSIENT_FATAL):
        return True
    return not any(m in text for m in _REFUSALS)


def migrate_when_reachable(dsn: str, schema_name: str, partitions_ahead: int,
                           idle: Callable[[str, float], bool]) -> bool:
    """Migrate the database (:func:`ingestor.schema.migrate`), waiting out failures that may pass.

    Before each wait, ``idle(reason, delay_s)`` is called: it spends the
    ``delay_s`` seconds (the supervisor answers stats and takes signals
    meanwhile) and returns False to give up, when this returns False too.
    Returns True once migrated. Raises DatabaseError for a refusal.
    """
    failures = 0
    while True:
        try:
            schema.migrate(dsn, schema_name, partitions_ahead)
            return True
        except psycopg.OperationalError as e:
            if not connection_error_is_transient(e):
                raise DatabaseError(f"cannot connect to PostgreSQL to migrate: {e}") from None
            reason = " ".join(str(e).split())
        failures += 1
        if not idle(reason, WAIT.delay(failures)):
            return False
