"""What a running service holds besides its processes: opened in order at boot, closed at exit.

The supervisor (:mod:`ingestor.supervisor`) keeps the processes; this is
what they share and what the service shows, in the order it is opened:

1. the keys (CURVE, alibi sealing): a bad key fails the start before anything else;
2. the stats socket and the HTTP endpoints (:mod:`ingestor.monitoring`): bound
   before the database is awaited, so ``ingestor stats`` says "starting" meanwhile;
3. the database: the embedded PostgreSQL when no DSN is given (:mod:`ingestor.embedded_pg`);
4. once PostgreSQL is migrated: the sealer, the shared blocks
   (:mod:`ingestor.blocks`), the periodic work (:mod:`ingestor.upkeep`) and the
   watch of the central copy's lag (:mod:`ingestor.central`).

:meth:`Resources.figures` composes the figures of docs/operations.md#stats
from the shared counters and what the supervisor tells of its writers.
"""

from __future__ import annotations

import logging
import multiprocessing.context
import time
from pathlib import Path

import zmq

from . import central, commits, database, schema, seals, security
from .blocks import OwnedBlocks
from .config import Config, without_password
from .embedded_pg import EmbeddedPostgres
from .errors import IngestorError
from .monitoring import Monitoring
from .recent import RecentEvents
from .roles import SharedBlocks
from .sdnotify import Notifier
from .stats import Figures, InputFigures, RateWindow, StatsServer, Status, WriterFigures
from .upkeep import Upkeep

log = logging.getLogger("ingestor.supervisor")  # its lines are the supervisor's, as before the split


class Resources:
    """The resources of the service ``config`` describes; :meth:`close` releases whatever was opened."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.started = time.time()
        self.zmq = zmq.Context()
        self.told_dsn: str | None = None  # in the stats, for `ingestor partitions|history|alibi` without --dsn
        self.stats: StatsServer | None = None
        self.monitoring: Monitoring | None = None  # None without --http-bind
        self.embedded: EmbeddedPostgres | None = None
        self._blocks: OwnedBlocks | None = None
        self._upkeep: Upkeep | None = None
        self.central_lag: central.LagWatch | None = None
        self.rate = RateWindow()
        self.recent = RecentEvents()  # what an operator should see in `ingestor top`
        self.notifier = Notifier()
        self.commits = commits.Keeper(config.data_dir, config.instance, config.schema, config.alibi)

    def load_keys(self) -> bytes | None:
        """Load every configured key now, so that an unreadable one fails the start (ConfigError naming the file)
        rather than a child once the database is up. Returns the front's CURVE public key (None without CURVE)."""
        cfg, server_public = self.config, None
        if cfg.curve_secret_key is not None and cfg.curve_clients_dir is not None:  # both or neither (Config)
            server_public, _ = security.load_secret_key(cfg.curve_secret_key)
            security.load_client_keys(cfg.curve_clients_dir)
        if cfg.alibi_key:
            seals.load_secret(cfg.alibi_key)
        return server_public

    def bind(self) -> None:
        """Bind the stats socket and the HTTP endpoints; IngestorError naming the endpoint when one is taken."""
        cfg = self.config
        self.stats = StatsServer(self.zmq, cfg.stats_endpoint)
        if endpoint := cfg.http_endpoint():
            self.monitoring = Monitoring(endpoint, cfg.stall_seconds)
            try:
                self.monitoring.start()
            except OSError as e:
                self.monitoring = None
                raise IngestorError(f"cannot bind the HTTP monitoring endpoint {cfg.http_bind}: {e}") from None

    def start_database(self) -> str:
        """Start the embedded PostgreSQL when no DSN was given; returns the DSN to use (DatabaseError when the
        embedded server cannot start)."""
        dsn = self.config.dsn
        if not dsn:
            self.embedded = EmbeddedPostgres(self.config.data_dir)
            dsn = self.embedded.start()
            print(f"Using embedded PostgreSQL: {dsn}", flush=True)
        self.told_dsn = without_password(dsn)
        return dsn

    def tell_waiting_for_database(self, reason: str, delay_s: float) -> None:
        """Say that PostgreSQL cannot be reached yet (``reason``) and the next try is in ``delay_s`` s: in the
        log, in the recent events (at the first try), and to systemd (STATUS=, and a start timeout extended)."""
        log.warning("Waiting for PostgreSQL (%s); next try in %.0f s", reason, delay_s)
        if delay_s == database.WAIT.first_s:
            self.recent.remember(f"waiting for PostgreSQL: {reason[:120]}")
        self.notifier.notify(f"STATUS=starting: waiting for PostgreSQL ({reason[:200]})",
                             f"EXTEND_TIMEOUT_USEC={int((delay_s + schema.CONNECT_TIMEOUT_S + 30) * 1e6)}")

    def open(self, dsn: str, writers: int, ctx: multiprocessing.context.SpawnContext) -> SharedBlocks:
        """Once database ``dsn`` is migrated: the sealer, the shared blocks for ``writers`` lanes, the periodic
        work (its check of the commits first: before any writer commits), the central copy's lag watch. Returns
        what the children attach to."""
        cfg = self.config
        if self.monitoring is not None:
            self.monitoring.serve_lookups(dsn, cfg.schema)
        sealer = None
        if cfg.alibi_key:
            sealer = seals.Sealer(dsn, cfg.schema, cfg.instance, cfg.alibi_key, cfg.resolved_seal_file())
        elif cfg.alibi:
            log.warning("Alibi chains on without --alibi-key: the chains are not sealed (docs/alibi.md)")
        self._blocks = b = OwnedBlocks.create(writers, cfg.ring_capacity, Path(cfg.data_dir), ctx)
        self._upkeep = Upkeep(cfg, dsn, b.ring, b.counters, self.commits, sealer, self.recent, self.notifier)
        self._upkeep.check_commits()
        self.central_lag = central.LagWatch(dsn, cfg.schema)
        self.central_lag.start()
        return b.shared

    @property
    def opened(self) -> bool:
        return self._blocks is not None

    @property
    def blocks(self) -> OwnedBlocks:
        """The shared blocks (RuntimeError before :meth:`open`)."""
        if self._blocks is None:
            raise RuntimeError("the shared blocks are created once the database is migrated")
        return self._blocks

    @property
    def upkeep(self) -> Upkeep:
        """The periodic work (RuntimeError before :meth:`open`)."""
        if self._upkeep is None:
            raise RuntimeError("the periodic work starts once the database is migrated")
        return self._upkeep

    def tell_running(self, writers: int) -> None:
        """Say that the front listens (the log, and systemd's READY=1)."""
        log.info("Ingestor running: %d writer(s), ring of %d slots, stats on %s",
                 writers, self.blocks.ring.capacity, self.config.stats_endpoint)
        self.notifier.notify("READY=1", f"STATUS=running: {writers} writer(s), 0 events/s")

    def spool_leftovers(self) -> bool:
        """Put what the ring still holds in front of the spool (:meth:`OwnedBlocks.spool_leftovers`; the children
        must be dead); True when kept, or when there is no ring yet."""
        if self._blocks is None:
            return True
        return self._blocks.spool_leftovers(self.config.resolved_spool_dir(), self.config.spool_max_bytes)

    def figures(self, status: Status, writers: list[WriterFigures], inputs: list[InputFigures] | None = None) -> Figures:
        """The figures of docs/operations.md#stats: ``status`` and the ``writers``' processes from the supervisor,
        the rest from the shared counters (the defaults before :meth:`open`)."""
        cfg = self.config
        f = Figures(instance=cfg.instance, status=status, uptime_s=round(time.time() - self.started, 1),
                    dsn=self.told_dsn, ring_capacity=cfg.ring_capacity, recent_events=self.recent.list())
        if self._blocks is None:
            return f
        counters, ring = self._blocks.counters, self._blocks.ring
        f.ring_capacity = ring.capacity
        f.events_per_s = self.rate.events_per_s()
        f.database_connected = counters.database_connected([w.alive for w in writers])
        if self.central_lag is not None and (lag := self.central_lag.latest) is not None:
            f.central_lag_bytes = lag.lag_bytes
            f.central_stalled_s, f.central_syncing_tables = self.central_lag.stalled_s, lag.syncing_tables
        f.writers, f.inputs = writers, inputs or []
        return counters.read_into(f, ring.used)

    def publish(self, figures: Figures) -> None:
        """Hand fresh figures to /metrics and the live page (nothing without --http-bind)."""
        if self.monitoring is not None:
            self.monitoring.update(figures)

    def tick(self, figures: Figures) -> None:
        """The loop's second: the rate window, the recent events, the periodic work that is due, /metrics."""
        self.recent.notice(figures)
        self.rate.add(time.monotonic(), figures.persisted)
        self.upkeep.tick(figures)
        self.publish(figures)

    def close(self) -> None:
        """Release what was opened, in reverse (the children must be gone: the blocks are unlinked). Closing
        twice does nothing more."""
        if self.monitoring is not None:
            self.monitoring.stop()
            self.monitoring = None
        if self.central_lag is not None:
            self.central_lag.stop()
            self.central_lag = None
        if self.stats is not None:
            self.stats.close()
            self.stats = None
        self.zmq.term()
        if self._blocks is not None:
            self._blocks.destroy()
            self._blocks = None
        if self.embedded is not None:
            self.embedded.stop()
            self.embedded = None
        self.notifier.close()
