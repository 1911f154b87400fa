"""The supervisor (``ingestor run``): owns the ring and the children, in one loop.

Modelled on gunicorn's arbiter. Signal handlers only queue the signal
(:mod:`ingestor.signals`); the loop wakes on a signal, a child's death (its
process sentinel), a stats request, or once a second, then handles queued
signals, reaps dead children (:class:`ingestor.child.Child`), spawns missing
ones and hands fresh figures
to :class:`ingestor.resources.Resources` (the stats, the periodic work of
:mod:`ingestor.upkeep`). Everything the service holds besides its processes
(sockets, the database, the shared blocks) lives there.

Children: one front, one writer per ring lane, optionally the lifecycle child,
a simulator and the inputs of the ``[mqtt]``, ``[sparkplug]`` and ``[opcua]``
tables (:func:`ingestor.roles.plan`).
A dead child is respawned at the same index, after a backoff that doubles
with each quick failure; a child exiting with ``EXIT_BOOT_ERROR`` halts the
supervisor instead (it would only fail again).

Stopping (the phases of :class:`Phase`):
- graceful (SIGTERM, SIGINT): ``STOPPING_INPUTS`` (with an input table):
  stop the inputs (SIGTERM: each reads no more and acknowledges to its
  source what the ingestor answers meanwhile, while front and writers run
  on); once they are gone, ``STOPPING_FRONT``: stop the simulator and
  the front (SIGTERM, they place the batch in hand); once the front is gone,
  ``DRAINING``: set the ring's draining flag so writers exit once their lane
  is written; then stop the embedded PostgreSQL and exit 0. When the
  database stays unreachable for ``DRAIN_OFFLINE_GRACE_S``, or writing takes longer than
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
import signal
import time

import zmq

from . import database, leftovers, roles
from .child import EXIT_BOOT_ERROR, Child, exit_description
from .config import Config
from .errors import IngestorError
from .failpoints import failpoint
from .placement import settle_front_died_stopping
from .resources import Resources
from .roles import INPUTS, FrontArgs, WriterArgs
from .signals import SignalQueue
from .stats import Figures, InputFigures, Status, WriterFigures

log = logging.getLogger(__name__)

LOOP_WAKE_S = 1.0  # the loop runs at least this often
DRAIN_OFFLINE_GRACE_S = 10.0  # a drain waits this long for an unreachable database, then spools
FRONT_STOP_TIMEOUT_S = 15.0
INPUT_STOP_TIMEOUT_S = 15.0  # an input waits up to 5 s for the ingestor's last replies (mqtt.py, opcua.py FINISH_S)
# the identity of docs/operations.md#stats, logged once at exit: received_events = the sum of the others.
FINAL_COUNTS = ("received_events", "invalid", "duplicates", "persisted", "failed", "lost", "pending")


class Phase(enum.Enum):
    """Where the service is in its life (the stats' ``status`` is :attr:`status`)."""

    STARTING = enum.auto()  # PostgreSQL awaited and migrated, children started; until the front listens
    RUNNING = enum.auto()
    STOPPING_INPUTS = enum.auto()  # graceful stop 0: the inputs acknowledge what is answered and exit
    STOPPING_FRONT = enum.auto()  # graceful stop 1: simulator and front place what they hold and exit
    DRAINING = enum.auto()  # graceful stop 2: the ring's draining flag is set, writers write their lanes out

    @property
    def status(self) -> Status:
        """``starting``, ``running`` or ``draining`` (docs/operations.md#stats)."""
        return "starting" if self is Phase.STARTING else "running" if self is Phase.RUNNING else "draining"

    @property
    def stopping(self) -> bool:
        return self in (Phase.STOPPING_INPUTS, Phase.STOPPING_FRONT, Phase.DRAINING)


class Supervisor:
    """Runs the service described by ``config``; :meth:`run` returns the exit code."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.ctx = multiprocessing.get_context("spawn")
        self.signals = SignalQueue()
        self.phase = Phase.STARTING
        self.children: list[Child] = []
        self.res = Resources(config)  # the sockets, the database, the shared blocks, the periodic work
        self._stop_deadline = self._phase_deadline = 0.0
        self._offline_since: float | None = None
        self._halt_reason: str | None = None

    # -- the loop -------------------------------------------------------------

    def run(self) -> int:
        self.signals.install()
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
                self.tick()
        except IngestorError as e:
            log.error("%s", e)
            return 2
        finally:
            self.cleanup()

    def sleep(self) -> None:
        """Wait up to LOOP_WAKE_S for a signal, a child's death or a stats request; answer stats."""
        poller = zmq.Poller()
        if self.res.stats is not None:
            poller.register(self.res.stats.socket, zmq.POLLIN)
        poller.register(self.signals.fileno, zmq.POLLIN)
        for c in self.children:
            if (sentinel := c.sentinel) is not None:
                poller.register(sentinel, zmq.POLLIN)
        try:
            events = dict(poller.poll(int(LOOP_WAKE_S * 1000)))
        except zmq.ZMQError as e:
            if e.errno == errno.EINTR:
                return
            raise
        if self.signals.fileno in events:
            self.signals.clear_wakeup()
        if self.res.stats is not None and self.res.stats.socket in events:
            self.res.stats.answer(self.snapshot)

    def handle_signals(self) -> int | None:
        """Act on the queued signals; an exit code when it is time to exit."""
        while (sig := self.signals.get()) is not None:
            name = signal.Signals(sig).name
            if sig == signal.SIGHUP:
                log.info("SIGHUP: nothing to reload (configuration is read at start)")
            elif not self.children:
                log.info("%s while starting: exiting (nothing was accepted yet)", name)
                return 0
            elif sig == signal.SIGQUIT or self.phase.stopping:
                log.warning("%s: stopping immediately", name)
                return self.stop_immediately()
            else:
                log.info("%s: draining (stop reading, write everything accepted, exit)", name)
                self.begin_drain()
        return None

    # -- boot -----------------------------------------------------------------

    def boot(self) -> bool:
        """Bind stats and HTTP, reach and migrate the database, create the shared blocks, start the children.

        Returns False when a stop signal arrived while the database was awaited.
        """
        cfg, res = self.config, self.res
        leftovers.remove_stale(cfg.data_dir)  # first: a crash loop must not pile up memory while PostgreSQL is awaited
        server_public = res.load_keys()
        res.bind()  # before the database: while it is awaited, `ingestor stats` says "starting"
        res.publish(self.snapshot())  # /metrics from the first second: database_connected 0 meanwhile
        dsn = res.start_database()
        if not self.wait_for_database(dsn):
            return False
        shared = res.open(dsn, cfg.writer_count(), self.ctx)
        self.children = [Child(args) for args in roles.plan(cfg, dsn, shared, server_public)]
        for c in self.children:
            self.spawn(c)
        return True

    def wait_for_database(self, dsn: str) -> bool:
        """Migrate, waiting while PostgreSQL cannot be reached yet (:mod:`ingestor.database`).

        Stats answer "starting" meanwhile and systemd's start timeout is
        extended. Returns False when a stop signal came first; DatabaseError
        when the server refuses.
        """
        def idle(reason: str, delay_s: float) -> bool:
            self.res.tell_waiting_for_database(reason, delay_s)
            deadline = time.monotonic() + delay_s
            while time.monotonic() < deadline:
                self.sleep()
                self.res.publish(self.snapshot())
                if self.handle_signals() is not None:
                    return False
            return True

        return database.migrate_when_reachable(dsn, self.config.schema, self.config.partitions_ahead, idle)

    @property
    def writers(self) -> list[Child]:
        return [c for c in self.children if isinstance(c.args, WriterArgs)]

    @property
    def inputs(self) -> list[Child]:
        return [c for c in self.children if isinstance(c.args, INPUTS)]

    @property
    def front(self) -> Child:
        return next(c for c in self.children if isinstance(c.args, FrontArgs))

    # -- children ---------------------------------------------------------------

    def spawn(self, c: Child) -> None:
        c.start(self.ctx, self.config.log_level, self.config.instance)

    def reap_children(self) -> None:
        """Notice children that ended; log how, and schedule their respawn."""
        for c in self.children:
            if (ended := c.reap()) is None:
                continue
            code, pid = ended
            if isinstance(c.args, FrontArgs) and code != 0 and self.phase.stopping:
                if held := settle_front_died_stopping(self.res.blocks.counters.front, pid):  # no successor will
                    self.res.recent.remember(f"front died holding {held} events: lost")
            how = f"{c.name} (pid {pid}) {exit_description(code)}"
            if code == EXIT_BOOT_ERROR:
                self._halt_reason = f"{c.name} could not boot (exit code {code}); see the log above"
                continue
            log.log(logging.INFO if code == 0 else logging.ERROR, "%s", how)
            if code == 0 and (not isinstance(c.args, WriterArgs) or self.phase.stopping):
                c.wanted = False  # a writer exits 0 while running only to be replaced
                continue
            if code != 0:
                self.res.recent.remember(f"{how}; restarting")
            delay = c.schedule_restart()
            if isinstance(c.args, WriterArgs):
                self.res.blocks.counters.writers["restarts"][c.args.index] = c.restarts
            log.warning("Restarting %s in %.1f s (restart %d)", c.name, delay, c.restarts)

    def manage_children(self) -> int | None:
        """Respawn what is due; advance a graceful stop. Returns an exit code when it is time to exit."""
        if self._halt_reason:
            log.error("Halting: %s", self._halt_reason)
            return self.stop_immediately()
        now = time.monotonic()
        for c in self.children:
            if c.wanted and c.process is None and now >= c.spawn_after:
                self.spawn(c)
        if self.phase is Phase.STOPPING_INPUTS:
            if any(c.alive() for c in self.inputs):
                if now <= self._phase_deadline:
                    return None
                log.error("Inputs did not stop within %.0f s; killing them (their sources deliver again what they "
                          "did not acknowledge)", INPUT_STOP_TIMEOUT_S)
                for c in self.inputs:
                    c.kill()
            self.stop_front()
        if self.phase is Phase.STOPPING_FRONT:
            if self.front.alive():
                if now > self._phase_deadline:
                    log.error("Front did not stop within %.0f s; killing it", FRONT_STOP_TIMEOUT_S)
                    self.front.kill()
                return None
            failpoint("supervisor.drain")
            self.res.blocks.ring.draining = True
            self.phase = Phase.DRAINING
        return self.drain(now) if self.phase is Phase.DRAINING else None

    def drain(self, now: float) -> int | None:
        """Graceful stop 2: wait for the writers to write their lanes out; give up (spooling what is left) when
        the database stays unreachable or ``--drain-seconds`` pass. The exit code once done."""
        blocks = self.res.blocks
        if not any(c.alive() or c.wanted for c in self.writers):
            log.info("Drained: %d events persisted in all, ring empty", int(blocks.counters.writers["persisted"].sum()))
            self.res.upkeep.finish()  # the commits recorded as clean, and a seal of what this run wrote
            return 0 if blocks.ring.used() == 0 else 1
        if blocks.counters.database_connected([c.alive() for c in self.writers]):
            self._offline_since = None
        elif self._offline_since is None:
            self._offline_since = now
        offline = self._offline_since is not None and now - self._offline_since > DRAIN_OFFLINE_GRACE_S
        if not offline and now <= self._stop_deadline:
            return None
        why = (f"the database has been unreachable for {DRAIN_OFFLINE_GRACE_S:.0f} s" if offline
               else f"writers did not drain within {self.config.drain_seconds:g} s")
        log.warning("Draining: %s; stopping the writers and keeping what is left in the spool", why)
        self.kill_children()
        return 0 if self.res.spool_leftovers() else 1

    def begin_drain(self) -> None:
        """Graceful stop: the inputs first (front and writers answer what they sent), then the front."""
        self.res.notifier.notify("STOPPING=1", "STATUS=draining: writing everything accepted")
        self._stop_deadline = time.monotonic() + self.config.drain_seconds
        if not self.inputs:
            self.stop_front()
            return
        self.phase = Phase.STOPPING_INPUTS
        self._phase_deadline = time.monotonic() + INPUT_STOP_TIMEOUT_S
        for c in self.inputs:
            c.wanted = False
            c.terminate()

    def stop_front(self) -> None:
        self.phase = Phase.STOPPING_FRONT
        self._phase_deadline = time.monotonic() + FRONT_STOP_TIMEOUT_S
        for c in self.children:
            if not isinstance(c.args, WriterArgs) and c.wanted:  # the writers go on until the ring is drained
                c.wanted = False
                c.terminate()

    def stop_immediately(self) -> int:
        """SIGKILL every child; keep what the ring holds in the spool; exit code 1."""
        self.kill_children()
        self.res.spool_leftovers()
        return 1

    def kill_children(self) -> None:
        for c in self.children:
            c.wanted = False
            c.kill()
        for c in self.children:
            c.join(5)

    # -- each turn of the loop --------------------------------------------------------

    def tick(self) -> None:
        """Fresh figures to the periodic work and /metrics (:meth:`Resources.tick`); the end of --run-seconds."""
        self.res.tick(self.snapshot())
        cfg = self.config
        if cfg.run_seconds and self.phase is Phase.RUNNING and time.time() - self.res.started >= cfg.run_seconds:
            log.info("Ran for %.0f s as asked (--run-seconds); draining", cfg.run_seconds)
            self.begin_drain()

    def notice_ready(self) -> None:
        """Starting → running once the front listens: then senders' frames are read (systemd READY=1)."""
        if self.phase is Phase.STARTING and self.res.opened and self.res.blocks.counters.front["listening"]:
            self.phase = Phase.RUNNING
            self.res.tell_running(len(self.writers))

    def snapshot(self) -> Figures:
        """The figures of docs/operations.md#stats (:meth:`Resources.figures`) with the writers' processes."""
        self.notice_ready()  # here: a stats request sees "running" the moment the front listens
        writers = [WriterFigures(pid=c.pid, alive=c.alive(), restarts=c.restarts) for c in self.writers]
        inputs = [InputFigures(name=c.name, slot=getattr(c.args, "slot", 0), pid=c.pid, alive=c.alive(),
                               restarts=c.restarts) for c in self.inputs]
        return self.res.figures(self.phase.status, writers, inputs)

    # -- teardown -------------------------------------------------------------------

    def cleanup(self) -> None:
        for c in self.children:
            if c.alive():
                c.kill()
                c.join(5)
        if self.res.opened:  # the figures of docs/operations.md#stats outlive the stats socket in the log
            s = self.snapshot()
            log.info("Final counts: %s", " ".join(f"{k}={getattr(s, k)}" for k in FINAL_COUNTS))
        self.res.close()
        self.signals.close()
