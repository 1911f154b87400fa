"""The supervisor (``ingestor run``): owns the ring and the children, in one loop.

Modelled on gunicorn's arbiter. Signal handlers only queue the signal; the
loop wakes on a signal (``signal.set_wakeup_fd``), a child's death (its
process sentinel), a stats request, or once a second, then handles queued
signals, reaps dead children, spawns missing ones and hands fresh figures
to the periodic work of :mod:`ingestor.upkeep`.

Children: one front, one writer per ring lane, and optionally a simulator.
A dead child is respawned at the same index, after a backoff that doubles
with each quick failure; a child exiting with ``EXIT_BOOT_ERROR`` halts the
supervisor instead (it would only fail again).

Stopping (the phases of :class:`Phase`):
- graceful (SIGTERM, SIGINT): ``STOPPING_FRONT``: stop the simulator and
  the front (SIGTERM, they place the batch in hand); once the front is gone,
  ``DRAINING``: set the ring's draining flag so writers exit once their lane
  is written; then stop the embedded PostgreSQL and exit 0. When the database stays unreachable for
  ``DRAIN_OFFLINE_GRACE_S``, or writing takes longer than
  ``--drain-seconds``, the writers are killed and what the ring still
  holds goes in front of the spool for the next start (exit 0: nothing
  accepted was lost).
- immediate (SIGQUIT, or a second SIGINT/SIGTERM): SIGKILL every child, put
  what the ring holds in front of the spool, exit 1.
"""

from __future__ import annotations

import enum
import errno
import logging
import multiprocessing
import os
import queue
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

import msgspec
import numpy as np
import zmq

from . import central, child, commits, database, leftovers, roles, schema, seals, security
from .acks import AckTable
from .backoff import Backoff
from .config import Config, without_password
from .embedded_pg import EmbeddedPostgres
from .errors import IngestorError, SpoolError
from .failpoints import failpoint
from .monitoring import Monitoring
from .protocol import RECORD_DTYPE
from .recent import RecentEvents
from .ring import Ring
from .roles import ChildArgs, FrontArgs, SharedBlocks, WriterArgs
from .sdnotify import Notifier
from .spool import Spool
from .stats import STATS_REQUEST, Counters, Figures, RateWindow, WriterFigures
from .upkeep import Upkeep

log = logging.getLogger(__name__)

LOOP_WAKE_S = 1.0  # the loop runs at least this often
DRAIN_OFFLINE_GRACE_S = 10.0  # a drain waits this long for an unreachable database, then spools
FRONT_STOP_TIMEOUT_S = 15.0
RESTART_BACKOFF = Backoff(first_s=0.5, max_s=30.0)  # a child's restarts while it keeps failing quickly
STABLE_AFTER_S = 10.0  # a child that lived this long resets its backoff
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)
# the identity of docs/operations.md#stats, logged once at exit: received_events = the sum of the others.
FINAL_COUNTS = ("received_events", "invalid", "duplicates", "persisted", "failed", "lost", "pending")



class Phase(enum.Enum):
    """Where the service is in its life (the stats' ``status`` is :attr:`status`)."""

    STARTING = enum.auto()  # PostgreSQL awaited and migrated, children started; until the front listens
    RUNNING = enum.auto()
    STOPPING_FRONT = enum.auto()  # graceful stop 1: simulator and front place what they hold and exit
    DRAINING = enum.auto()  # graceful stop 2: the ring's draining flag is set, writers write their lanes out

    @property
    def status(self) -> str:
        """``starting``, ``running`` or ``draining`` (docs/operations.md#stats)."""
        return {Phase.STARTING: "starting", Phase.RUNNING: "running"}.get(self, "draining")

    @property
    def stopping(self) -> bool:
        return self in (Phase.STOPPING_FRONT, Phase.DRAINING)


class Child:
    """One supervised child: its role (``args``, :mod:`ingestor.roles`), its current process, its restart history."""

    def __init__(self, args: ChildArgs) -> None:
        self.args = args
        self.name = args.name  # front, writer-N, simulator, lifecycle: in the log and the process title
        self.process: multiprocessing.process.BaseProcess | None = None
        self.started_at = 0.0
        self.restarts = 0
        self.quick_failures = 0
        self.spawn_after = 0.0
        self.wanted = True

    def alive(self) -> bool:
        return self.process is not None and self.process.exitcode is None

    @property
    def pid(self) -> int:
        """The live process's pid; 0 when none runs."""
        return (self.process.pid or 0) if self.process is not None and self.alive() else 0

    def start(self, ctx: multiprocessing.context.SpawnContext, log_level: str, instance: str) -> None:
        """Start a new process running :func:`ingestor.child.main` with ``args`` (signals blocked until its
        handlers are in)."""
        process = ctx.Process(target=child.main, args=(self.args, log_level, instance), name=self.name, daemon=False)
        with _signals_blocked():
            process.start()
        self.process = process
        self.started_at = time.monotonic()
        log.debug("Spawned %s (pid %d)", self.name, process.pid)

    def terminate(self) -> None:
        """SIGTERM: the child finishes what it holds and exits."""
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)

    def join(self, timeout_s: float) -> None:
        if self.process is not None:
            self.process.join(timeout_s)


class Supervisor:
    """Runs the service described by ``config``; :meth:`run` returns the exit code."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.ctx = multiprocessing.get_context("spawn")
        self.signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.phase = Phase.STARTING
        self.started = time.time()
        self.children: list[Child] = []
        self.ring: Ring | None = None
        self.counters: Counters | None = None
        self.acks: AckTable | None = None
        self.monitoring: Monitoring | None = None
        self.central_lag: central.LagWatch | None = None
        self.embedded: EmbeddedPostgres | None = None
        self.dsn = config.dsn
        self.zmq = zmq.Context()
        self.stats_sock: zmq.Socket | None = None
        self._wakeup_r = self._wakeup_w = -1
        self.rate = RateWindow()
        self.recent = RecentEvents()  # what an operator should see in `ingestor top`
        self._told_dsn: str | None = None
        self.sealer: seals.Sealer | None = None
        self.commits = commits.Keeper(config.data_dir, config.instance, config.schema, config.alibi)
        self._stop_deadline = 0.0
        self._offline_since: float | None = None
        self._halt_reason: str | None = None
        self.notifier = Notifier()
        self.upkeep: Upkeep | None = None  # the periodic work, once the blocks exist

    # -- the loop -------------------------------------------------------------

    def run(self) -> int:
        self.install_signals()
        try:
            if not self.boot():
                return 0
            while True:
                self.sleep()
                code = self.handle_signals()
                if code is None:
                    self.reap_children()
                    code = self.manage_children()
                if code is not None:
                    return code
                figures = self.tick()
                if self.monitoring is not None:
                    self.monitoring.update(figures)
        except IngestorError as e:
            log.error("%s", e)
            return 2
        finally:
            self.cleanup()

    def install_signals(self) -> None:
        self._wakeup_r, self._wakeup_w = os.pipe()
        os.set_blocking(self._wakeup_r, False)
        os.set_blocking(self._wakeup_w, False)
        signal.set_wakeup_fd(self._wakeup_w)
        for sig in SIGNALS:
            signal.signal(sig, self.signal_handler)

    def signal_handler(self, signum: int, frame: object) -> None:
        """NO LOGGING, just queue the signal (the loop handles it)."""
        self.signals.put(signum)

    def sleep(self) -> None:
        """Wait up to LOOP_WAKE_S for a signal, a child's death or a stats request; answer stats."""
        poller = zmq.Poller()
        poller.register(self.stats_sock, zmq.POLLIN)
        poller.register(self._wakeup_r, zmq.POLLIN)
        for c in self.children:
            if c.alive():
                poller.register(c.process.sentinel, zmq.POLLIN)
        try:
            events = dict(poller.poll(LOOP_WAKE_S * 1000))
        except zmq.ZMQError as e:
            if e.errno == errno.EINTR:
                return
            raise
        if self._wakeup_r in events:
            try:
                while os.read(self._wakeup_r, 512):
                    pass
            except BlockingIOError:
                pass
        if self.stats_sock in events:
            self.serve_stats()

    def handle_signals(self) -> int | None:
        while True:
            try:
                sig = self.signals.get_nowait()
            except queue.Empty:
                return None
            name = signal.Signals(sig).name
            if sig == signal.SIGHUP:
                log.info("SIGHUP: nothing to reload (configuration is read at start)")
            elif sig == signal.SIGQUIT or self.phase.stopping:
                log.warning("%s: stopping immediately", name)
                return self.stop_immediately()
            else:
                log.info("%s: draining (stop reading, write everything accepted, exit)", name)
                self.begin_drain()

    # -- boot -----------------------------------------------------------------

    def boot(self) -> bool:
        """Bind stats and HTTP, reach and migrate the database, create the shared blocks, start the children.

        Returns False when a stop signal arrived while the database was awaited.
        """
        cfg = self.config
        leftovers.remove_stale(cfg.data_dir)  # first: a crash loop must not pile up memory while PostgreSQL is awaited
        server_public = None
        if cfg.curve_secret_key:  # unreadable keys fail the start here, not in the front after the database is up
            server_public, _ = security.load_secret_key(cfg.curve_secret_key)
            security.load_client_keys(cfg.curve_clients_dir)
        if cfg.alibi_key:
            seals.load_secret(cfg.alibi_key)  # likewise: a bad sealing key fails the start
        self.bind_monitoring()  # first: while the database is awaited, `ingestor stats` says "starting"
        if not self.dsn:
            self.embedded = EmbeddedPostgres(cfg.data_dir)
            self.dsn = self.embedded.start()
            print(f"Using embedded PostgreSQL: {self.dsn}", flush=True)
        self._told_dsn = without_password(self.dsn)  # for `ingestor partitions|history|alibi` without --dsn
        if not self.wait_for_database():
            return False
        if self.monitoring is not None:
            self.monitoring.serve_lookups(self.dsn, cfg.schema)
        if cfg.alibi_key:
            self.sealer = seals.Sealer(self.dsn, cfg.schema, cfg.instance, cfg.alibi_key, cfg.resolved_seal_file())
        elif cfg.alibi:
            log.warning("Alibi chains on without --alibi-key: the chains are not sealed (docs/alibi.md)")
        shared = self.create_shared_blocks(cfg.writer_count())
        self.upkeep = Upkeep(cfg, self.dsn, self.ring, self.counters, self.commits, self.sealer, self.recent, self.notifier)
        self.upkeep.check_commits()  # before any writer commits: the database as the last run left it
        self.children = [Child(args) for args in roles.plan(cfg, self.dsn, shared, server_public)]
        for c in self.children:
            self.spawn(c)
        self.central_lag = central.LagWatch(self.dsn, cfg.schema)
        self.central_lag.start()
        return True

    def bind_monitoring(self) -> None:
        """Bind the stats socket and the HTTP endpoints; IngestorError naming the endpoint when one is taken."""
        cfg = self.config
        self.stats_sock = self.zmq.socket(zmq.REP)
        self.stats_sock.setsockopt(zmq.LINGER, 0)
        try:
            self.stats_sock.bind(cfg.stats_endpoint)
        except zmq.ZMQError as e:
            raise IngestorError(f"cannot bind the stats endpoint {cfg.stats_endpoint}: {e}") from None
        if cfg.http_endpoint():
            self.monitoring = Monitoring(cfg.http_endpoint(), cfg.stall_seconds)
            try:
                self.monitoring.start()
            except OSError as e:
                raise IngestorError(f"cannot bind the HTTP monitoring endpoint {cfg.http_bind}: {e}") from None
            self.monitoring.update(self.snapshot())  # /metrics from the first second: database_connected 0 meanwhile

    def create_shared_blocks(self, writers: int) -> SharedBlocks:
        """Create the ring (one lane per writer), the counters and the ack table; record them for leftovers."""
        lane_capacity = max(1, self.config.ring_capacity // writers)
        self.ring = Ring.create(lanes=writers, lane_capacity=lane_capacity, dtype=RECORD_DTYPE, ctx=self.ctx)
        self.counters = Counters.create(writers)
        self.acks = AckTable.create(writers)
        leftovers.record(self.config.data_dir, [self.ring.spec.name, self.counters.name, self.acks.name],
                         self.ring.semaphore_names)
        return SharedBlocks(ring=self.ring.spec, semaphores=self.ring.handles[1], counters=self.counters.name,
                            acks=self.acks.name)

    def wait_for_database(self) -> bool:
        """Migrate, waiting while PostgreSQL cannot be reached yet (:mod:`ingestor.database`).

        Stats answer "starting" meanwhile and systemd's start timeout is
        extended. Returns False when a stop signal came first; DatabaseError
        when the server refuses.
        """
        def idle(reason: str, delay_s: float) -> bool:
            log.warning("Waiting for PostgreSQL (%s); next try in %.0f s", reason, delay_s)
            if delay_s == database.WAIT.first_s:
                self.recent.remember(f"waiting for PostgreSQL: {reason[:120]}")
            self.notifier.notify(f"STATUS=starting: waiting for PostgreSQL ({reason[:200]})",
                                 f"EXTEND_TIMEOUT_USEC={int((delay_s + schema.CONNECT_TIMEOUT_S + 30) * 1e6)}")
            deadline = time.monotonic() + delay_s
            while time.monotonic() < deadline:
                self.sleep()
                if self.monitoring is not None:
                    self.monitoring.update(self.snapshot())
                if self.stop_requested_while_starting():
                    return False
            return True

        cfg = self.config
        return database.migrate_when_reachable(self.dsn, cfg.schema, cfg.partitions_ahead, idle)

    def stop_requested_while_starting(self) -> bool:
        """Take queued signals before the children exist: any stop signal ends the start (nothing accepted yet)."""
        stop = False
        while True:
            try:
                sig = self.signals.get_nowait()
            except queue.Empty:
                return stop
            if sig != signal.SIGHUP:
                log.info("%s while starting: exiting (nothing was accepted yet)", signal.Signals(sig).name)
                stop = True

    @property
    def writers(self) -> list[Child]:
        return [c for c in self.children if isinstance(c.args, WriterArgs)]

    @property
    def front(self) -> Child:
        return next(c for c in self.children if isinstance(c.args, FrontArgs))

    # -- children ---------------------------------------------------------------

    def spawn(self, c: Child) -> None:
        c.start(self.ctx, self.config.log_level, self.config.instance)

    def reap_children(self) -> None:
        """Notice children that ended; log how, and schedule their respawn."""
        for c in self.children:
            p = c.process
            if p is None or p.exitcode is None:
                continue
            code, pid = p.exitcode, p.pid
            p.close()
            c.process = None
            lived = time.monotonic() - c.started_at
            if isinstance(c.args, FrontArgs) and code != 0 and self.phase.stopping:
                self.count_front_losses(pid)  # no successor will settle its count
            if code == 0:
                log.info("%s (pid %d) exited", c.name, pid)
                if not isinstance(c.args, WriterArgs) or self.phase.stopping:  # a writer exits 0 only to be replaced
                    c.wanted = False
                    continue
            if code == child.EXIT_BOOT_ERROR:
                self._halt_reason = f"{c.name} could not boot (exit code {code}); see the log above"
                continue
            if code < 0:
                sig = signal.Signals(-code).name
                hint = " Perhaps out of memory?" if -code == signal.SIGKILL else ""
                log.error("%s (pid %d) was killed by %s.%s", c.name, pid, sig, hint)
                self.recent.remember(f"{c.name} (pid {pid}) was killed by {sig}; restarting")
            elif code != 0:
                log.error("%s (pid %d) exited with code %d", c.name, pid, code)
                self.recent.remember(f"{c.name} (pid {pid}) exited with code {code}; restarting")
            c.quick_failures = c.quick_failures + 1 if lived < STABLE_AFTER_S else 0
            delay = RESTART_BACKOFF.delay(c.quick_failures) if c.quick_failures else 0.0
            c.spawn_after = time.monotonic() + delay
            c.restarts += 1
            if isinstance(c.args, WriterArgs):
                self.counters.writers["restarts"][c.args.index] = c.restarts
            log.warning("Restarting %s in %.1f s (restart %d)", c.name, delay, c.restarts)

    def count_front_losses(self, pid: int) -> None:
        """A front that died while draining held its batch in hand (counted received, in no ring or spool).

        No successor will reconcile it (``Placement._reconcile_after_crash``), so
        it is counted lost here. What it had taken from ZeroMQ and not yet
        counted is gone uncounted; in acked mode its senders get no reply
        and re-send (docs/PROTOCOL.md §5).
        """
        f = self.counters.front
        held = int(f["held_events"])
        if held:
            f["held_events"] = 0
            f["front_pending"] -= held
            f["lost"] += held
            log.error("LOST %d accepted events: the front (pid %d) died holding them (counted in stats 'lost')",
                      held, pid)
            self.recent.remember(f"front died holding {held} events: lost")

    def manage_children(self) -> int | None:
        """Respawn what is due; advance a graceful stop. Returns an exit code when it is time to exit."""
        if self._halt_reason:
            log.error("Halting: %s", self._halt_reason)
            return self.stop_immediately()
        now = time.monotonic()
        for c in self.children:
            if c.wanted and c.process is None and now >= c.spawn_after:
                self.spawn(c)
        if not self.phase.stopping:
            return None
        if self.phase is Phase.STOPPING_FRONT:
            front = self.front
            if front.alive():
                if now > self._front_deadline:
                    log.error("Front did not stop within %.0f s; killing it", FRONT_STOP_TIMEOUT_S)
                    front.kill()
                return None
            failpoint("supervisor.drain")
            self.ring.draining = True
            self.phase = Phase.DRAINING
        if any(c.alive() or c.wanted for c in self.writers):
            if self.database_connected():
                self._offline_since = None
            elif self._offline_since is None:
                self._offline_since = now
            offline = self._offline_since is not None and now - self._offline_since > DRAIN_OFFLINE_GRACE_S
            if offline or now > self._stop_deadline:
                why = (f"the database has been unreachable for {DRAIN_OFFLINE_GRACE_S:.0f} s" if offline
                       else f"writers did not drain within {self.config.drain_seconds:g} s")
                log.warning("Draining: %s; stopping the writers and keeping what is left in the spool", why)
                self.kill_children()
                return 0 if self.spool_ring_leftovers() else 1
            return None
        log.info("Drained: %d events persisted in all, ring empty", int(self.counters.writers["persisted"].sum()))
        self.upkeep.finish()  # the commits recorded as clean, and a seal of what this run wrote
        return 0 if self.ring.used() == 0 else 1

    def spool_ring_leftovers(self) -> bool:
        """Put what the ring still holds in front of the spool (children must be dead); True when kept.

        Records a killed writer had committed but not released come back as
        duplicates on replay: stored once either way.
        """
        if self.ring is None or self.ring.used() == 0:
            return True
        left = np.concatenate([lane.peek(lane.used()) for lane in self.ring.lanes])
        directory = self.config.resolved_spool_dir()
        try:
            failpoint("supervisor.spool_leftovers")
            spool = Spool(directory, RECORD_DTYPE, self.config.spool_max_bytes)
            try:
                spool.append(left, first=True)
            finally:
                spool.close()
        except (SpoolError, OSError) as e:
            self.counters.front["lost"] += len(left)
            for lane in self.ring.lanes:  # counted lost now, no longer pending
                lane.release(lane.used())
            log.error("LOST %d accepted events left in the ring: the spool cannot take them (%s)", len(left), e)
            return False
        for lane in self.ring.lanes:
            lane.release(lane.used())
        log.warning("Spooled %d events left in the ring to %s; the next start replays them", len(left), directory)
        return True

    def database_connected(self) -> bool:
        """True when every live writer's last database operation succeeded (docs/operations.md#stats ``database_connected``)."""
        w = self.counters.writers
        alive = [c.alive() for c in self.writers]
        return any(alive) and all(bool(w["connected"][i]) for i, a in enumerate(alive) if a)

    def begin_drain(self) -> None:
        self.phase = Phase.STOPPING_FRONT
        self.notifier.notify("STOPPING=1", "STATUS=draining: writing everything accepted")
        now = time.monotonic()
        self._stop_deadline = now + self.config.drain_seconds
        self._front_deadline = now + FRONT_STOP_TIMEOUT_S
        for c in self.children:
            if not isinstance(c.args, WriterArgs):  # the writers go on until the ring is drained
                c.wanted = False
                c.terminate()

    def stop_immediately(self) -> int:
        """SIGKILL every child; keep what the ring holds in the spool; exit code 1."""
        self.kill_children()
        self.spool_ring_leftovers()
        return 1

    def kill_children(self) -> None:
        for c in self.children:
            c.wanted = False
            c.kill()
        for c in self.children:
            c.join(5)

    # -- periodic work ------------------------------------------------------------

    def tick(self) -> Figures:
        """The loop's periodic work (:mod:`ingestor.upkeep`); returns fresh figures."""
        figures = self.snapshot()
        self.recent.notice(figures)
        self.rate.add(time.monotonic(), figures.persisted)
        self.upkeep.tick(figures)
        if self.config.run_seconds and self.phase is Phase.RUNNING and time.time() - self.started >= self.config.run_seconds:
            log.info("Ran for %.0f s as asked (--run-seconds); draining", self.config.run_seconds)
            self.begin_drain()
        return figures

    # -- stats ----------------------------------------------------------------------

    def notice_ready(self) -> None:
        """Starting → running once the front listens: then senders' frames are read (systemd READY=1)."""
        if self.phase is Phase.STARTING and self.counters is not None and self.counters.front["listening"]:
            self.phase = Phase.RUNNING
            log.info("Ingestor running: %d writer(s), ring of %d slots, stats on %s",
                     len(self.writers), self.ring.capacity, self.config.stats_endpoint)
            self.notifier.notify("READY=1", f"STATUS=running: {len(self.writers)} writer(s), 0 events/s")

    def snapshot(self) -> Figures:
        """The figures of docs/operations.md#stats, from the shared counters (the defaults while starting)."""
        self.notice_ready()  # here: a stats request sees "running" the moment the front listens
        f = Figures(instance=self.config.instance, status=self.phase.status, uptime_s=round(time.time() - self.started, 1),
                    dsn=self._told_dsn,
                    ring_capacity=self.config.ring_capacity,
                    recent_events=self.recent.list())
        if self.counters is None:
            return f
        f.ring_capacity = self.ring.capacity
        f.events_per_s = self.rate.events_per_s()
        f.database_connected = self.database_connected()
        if self.central_lag is not None and (lag := self.central_lag.latest) is not None:
            f.central_lag_bytes = lag.lag_bytes
            f.central_stalled_s, f.central_syncing_tables = self.central_lag.stalled_s, lag.syncing_tables
        f.writers = [WriterFigures(pid=c.pid, alive=c.alive(), restarts=c.restarts,
                                   persisted=0, batches=0, last_batch_ms=0.0) for c in self.writers]
        return self.counters.read_into(f, self.ring.used)

    def serve_stats(self) -> None:
        try:
            request = self.stats_sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            return
        if request == STATS_REQUEST:
            reply = msgspec.json.encode(self.snapshot())
        else:
            reply = msgspec.json.encode({"error": f"unknown request {request[:40]!r}; send {STATS_REQUEST!r}"})
        self.stats_sock.send(reply)

    # -- teardown -------------------------------------------------------------------

    def cleanup(self) -> None:
        for c in self.children:
            if c.alive():
                c.kill()
                c.join(5)
        if self.counters is not None:  # the figures of docs/operations.md#stats outlive the stats socket in the log
            s = self.snapshot()
            log.info("Final counts: %s", " ".join(f"{k}={getattr(s, k)}" for k in FINAL_COUNTS))
        if self.monitoring is not None:
            self.monitoring.stop()
        if self.central_lag is not None:
            self.central_lag.stop()
        if self.stats_sock is not None:
            self.stats_sock.close(linger=0)
        self.zmq.term()
        for block in (self.counters, self.acks, self.ring):
            if block is not None:  # the owner destroys its blocks once every child is gone
                block.unlink()
                block.close()
        if self.ring is not None:
            leftovers.forget(self.config.data_dir)  # the semaphores go with the ring's last reference
        if self.embedded is not None:
            self.embedded.stop()
        self.notifier.close()
        signal.set_wakeup_fd(-1)
        for fd in (self._wakeup_r, self._wakeup_w):
            if fd >= 0:
                os.close(fd)


@contextmanager
def _signals_blocked() -> Iterator[None]:
    """Block the handled signals while spawning; the child unblocks them once its handlers are in."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, child.HANDLED_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
