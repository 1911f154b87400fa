"""The periodic work of a running service, each an interval task of :mod:`ingestor.scheduler`.

The supervisor's loop calls :meth:`Upkeep.tick` with each second's fresh
figures; what is due runs: the ``[RATE]`` line and systemd's STATUS=, the
on-disk record of the commits and the alibi record numbers reserved
(:mod:`ingestor.commits`), the coming day partitions, the seal of the
chains' heads (:mod:`ingestor.seals`), and systemd's watchdog ping. Each
task logs and counts its own failure and is tried again at its next
interval: none of them stops the plant's measurements.
"""

from __future__ import annotations

import logging

import psycopg

from . import commits, schema, seals
from .config import Config
from .recent import RecentEvents
from .ring import Ring
from .scheduler import Scheduler
from .sdnotify import Notifier
from .stats import Counters, Figures, acknowledged

log = logging.getLogger("ingestor.supervisor")  # its lines are the supervisor's, as before the split

RATE_LOG_EVERY_S = 10.0  # the rate line of the seed system
PARTITION_CHECK_EVERY_S = 3600.0


class Upkeep:
    """The periodic work of one run, over the blocks the supervisor created.

    ``sealer``: None without --alibi-key (no seals). ``keeper``: the record of
    commits, checked against the database by :meth:`check_commits` before any
    writer commits.
    """

    def __init__(self, config: Config, dsn: str, ring: Ring, counters: Counters, keeper: commits.Keeper,
                 sealer: seals.Sealer | None, recent: RecentEvents, notifier: Notifier) -> None:
        self.config, self.dsn, self.ring, self.counters = config, dsn, ring, counters
        self.commits, self.sealer, self.recent, self.notifier = keeper, sealer, recent, notifier
        self.figures = Figures()  # the last tick's
        self._batches_logged = 0  # writers' batches counted by the last [RATE] line
        self._commit_check_failing = False
        self.scheduler = self.schedule()

    def schedule(self) -> Scheduler:
        tasks = Scheduler()
        tasks.every("rate line", RATE_LOG_EVERY_S, self.log_rate)
        tasks.every("commits", commits.RECORD_EVERY_S, self.record_commits)
        tasks.every("partitions", PARTITION_CHECK_EVERY_S, self.maintain_partitions)
        # the first seal at once: the heads as this run found them
        tasks.every("seal", self.config.seal_interval_s, self.seal_heads, first_s=0,
                    when=lambda: self.sealer is not None and self.figures.status == "running")
        if self.notifier.watchdog_interval_s:  # systemd's WatchdogSec=: a hung loop stops the pings
            tasks.every("watchdog", self.notifier.watchdog_interval_s, lambda: self.notifier.notify("WATCHDOG=1"),
                        first_s=0)
        return tasks

    def tick(self, figures: Figures) -> None:
        """Run what is due, given the loop's fresh ``figures``; the check of the commits until it has passed."""
        self.figures = figures
        if not self.commits.checked or (self.commits.skipped and self.sealer is not None):
            self.check_commits()
        elif self.commits.wants_reserve(self.numbers_used()):
            self.scheduler["commits"].wake()
        self.scheduler.run_due()

    def finish(self) -> None:
        """At a clean stop, once drained: the commits recorded as clean, and a seal of what this run wrote."""
        self.record_commits(clean=True)
        if self.sealer is not None:
            self.seal_heads()

    def log_rate(self) -> None:
        """The [RATE] line, the summary of the per-batch lines (at DEBUG: ~25 a second at full speed flood a
        journal), and systemd's STATUS=."""
        s = self.figures
        batches = sum(w.batches for w in s.writers)
        done, self._batches_logged = batches - self._batches_logged, batches
        log.info("[RATE] %.1f events/s; %d batches since the last line (average %.0f events, %.0f ms); "
                 "%d persisted, %d pending, %d invalid, ring %d/%d", s.events_per_s, done, s.average_batch_size,
                 s.average_batch_ms, s.persisted, s.pending, s.invalid, s.ring_used, s.ring_capacity)
        self.notifier.notify(f"STATUS={s.status}: {s.events_per_s:.0f} events/s, {s.persisted} persisted, "
                             f"{s.pending} pending, database {'up' if s.database_connected else 'DOWN'}")

    def check_commits(self) -> None:
        """Compare the last run's record of its commits with the database (:mod:`ingestor.commits`); a loss found
        is counted in ``lost_after_commit``. Retried every tick while the database cannot be read, and while the
        chains a skip moved are not sealed yet: the writers get record numbers only after both."""
        if not self.commits.checked:
            try:
                lost = self.commits.check(self.dsn)
            except psycopg.Error as e:
                if not self._commit_check_failing:
                    log.warning("Cannot compare the last run's commits with the database yet (%s); retrying",
                                str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
                self._commit_check_failing = True
                return
            if lost:
                self.counters.front["lost_after_commit_at_start"] = lost
                self.recent.remember(f"{lost} committed events missing at start: lost")
        if self.commits.skipped and self.sealer is not None:
            if not self.seal_heads():  # the seal vouches for the skip (docs/alibi.md#after-a-restore)
                return
            self.commits.skipped = False
        self.counters.front["record_floor"] = self.commits.floor
        self.record_commits()  # at once: a loss found is told once, even if this run is killed before its next record

    def record_commits(self, clean: bool = False) -> None:
        """Keep each lane's last acknowledged commit, and the record numbers reserved, on disk
        (:mod:`ingestor.commits`); the writers may use the numbers once the record holding them is written (or its
        failure logged: the plant's measurements come first)."""
        self.scheduler["commits"].postpone()
        self.commits.keep(self.ring.spec.ring_id, [acknowledged(w) for w in self.counters.writers], clean,
                          self.numbers_used())
        self.counters.front["records_reserved"] = self.commits.reserved

    def numbers_used(self) -> int:
        """The greatest alibi record number any writer linked (stored before its commit)."""
        return int(self.counters.writers["record_no_max"].max(initial=0))

    def maintain_partitions(self) -> None:
        """Create the coming day partitions (archive and retention are the lifecycle child's)."""
        try:
            schema.maintain_partitions(self.dsn, self.config.schema, self.config.partitions_ahead)
        except psycopg.Error as e:
            log.error("Could not create upcoming partitions (will retry in an hour): %s", e)

    def seal_heads(self) -> bool:
        """Seal every scale's chain head (docs/alibi.md); a failure is logged, counted and tried again next interval.
        Returns whether the seal was stored (or there was no chain to seal)."""
        self.scheduler["seal"].postpone()
        if self.sealer is None:
            return True
        front = self.counters.front
        try:
            seal = self.sealer.seal()
        except (psycopg.Error, OSError) as e:
            front["seal_failures"] += 1
            log.error("Could not store a seal of the alibi chains (next try in %.0f s): %s",
                      self.config.seal_interval_s, " ".join(str(e).split()))
            return isinstance(e, OSError)  # stored in the database, not in the file: it vouches all the same
        if seal is not None:
            front["seals"] += 1
            log.info("Sealed the alibi chains of %d scale(s) at %s (key %s)", len(seal.heads), seal.sealed_at,
                     seal.key_id)
        return True
