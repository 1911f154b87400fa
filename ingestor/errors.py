"""The errors scale-ingestor raises, one small hierarchy (psycopg_pool/errors.py style)."""


class IngestorError(Exception):
    """Base class of every error raised by scale-ingestor."""


class ConfigError(IngestorError):
    """A configuration value is missing, malformed or out of its allowed range."""


class SharedMemoryError(IngestorError):
    """A shared-memory block is missing, foreign, or used against its rules."""


class RingError(SharedMemoryError):
    """The shared-memory ring is missing, foreign, or used against its rules."""


class BootError(IngestorError):
    """A child process cannot start (an endpoint cannot be bound, the spool cannot be opened, keys unreadable).

    The child exits with ``child.EXIT_BOOT_ERROR`` and the supervisor halts instead of restarting it.
    """


class EmbeddedPostgresError(IngestorError):
    """The embedded PostgreSQL server could not be found, initialised or started."""


class DatabaseError(IngestorError):
    """The database cannot be reached with this configuration, or is not one the ingestor can store into."""


class MigrationError(IngestorError):
    """A schema migration failed; nothing of that migration was applied."""


class StatsUnavailable(IngestorError):
    """No running ingestor answered on the stats endpoint."""


class SpoolError(IngestorError):
    """The on-disk spool cannot be written, or holds segments this version cannot replay."""


class ArchiveError(IngestorError):
    """A day partition could not be archived as it is (ingestor/archive.py); it stays in PostgreSQL."""


class VerifyError(IngestorError):
    """What the alibi verifier was asked to check cannot be read (a seal file that is missing or not a file)."""
