"""Every failpoint × every action it takes, against the real service and a real PostgreSQL.

Each case runs one scenario that passes every failpoint at least once: an
acked-mode sender (re-sending what gets no reply) sends 2,000 events of 20
scales, a few of them refused by a CHECK constraint (the writers bisect and
dead-letter them) and a few invalid (the front dead-letters them); the
writers stall on their first batches, so the ring (512 slots) fills and the
front spills to the spool and refills from it. The case's failpoint is armed
with its action; afterwards the failpoint must have fired and
:func:`tests.checker.check` must hold. A failpoint added to
``ingestor.failpoints.FAILPOINTS`` is covered here by its name alone.
"""

from __future__ import annotations

import re
import signal

import pytest
import zmq

from ingestor import failpoints
from ingestor.errors import ConfigError

from .checker import Sent, check, plant_messages, send_acked

pytestmark = pytest.mark.slow

# How each action is armed: bounded, so that the service recovers and the case ends.
ARMED = {"kill": "1*kill", "enospc": "3*enospc", "eio": "3*eio", "sleep": "2*sleep(300)", "disconnect": "2*disconnect"}
# The writers' first batches stall long enough (> front.SPILL_AFTER_S) for the front to spill.
STALL = "writer.dedup=3*sleep(800)"

# Failpoints passed only when the service stops with records in the ring: the stop signal.
STOPPED_BY = {"supervisor.spool_leftovers": signal.SIGQUIT, "supervisor.drain": signal.SIGTERM}
# Failpoints passed only with more than this scenario's dead letters: extra options and junk events.
ROTATING = ("--dead-letter-max-bytes", "65536")

# The archive's failpoints are passed by `ingestor partitions archive`, the sealer's by a sealing
# service, not by this scenario: tests/test_archive.py and tests/test_seals.py run each with each action.
CASES = [(name, action) for name, (actions, _) in failpoints.FAILPOINTS.items()
         if not name.startswith(("archive.", "seal.")) for action in actions]


def test_every_failpoint_is_in_the_matrix():
    from .test_archive import ARCHIVE_CASES
    from .test_seals import SEAL_CASES

    assert {name for name, _ in CASES + ARCHIVE_CASES + SEAL_CASES} == set(failpoints.FAILPOINTS)
    for name, (actions, where) in failpoints.FAILPOINTS.items():
        assert where and actions, name
        for action in actions:
            failpoints.parse(name, ARMED[action])


def test_a_count_holds_across_processes_racing_for_it(tmp_path, monkeypatch):
    # a pass's index comes from its own O_APPEND offset: 8 processes x 50 passes fire exactly 3 times
    import multiprocessing

    monkeypatch.setenv(failpoints.STATE_ENV, str(tmp_path))
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(_pass_fifty_times, range(8))
    assert failpoints.fired("writer.copy", tmp_path) == 3
    assert (tmp_path / "writer.copy.passes").stat().st_size == 400


def _pass_fifty_times(_: int) -> None:
    failpoints.arm("writer.copy", "3*sleep(1)")
    for _ in range(50):
        failpoints.failpoint("writer.copy")


def test_actions_chain_and_the_grammar_is_checked():
    failpoints.arm("spool.write", "1*off->2*eio->sleep(0)")
    try:
        failpoints.failpoint("spool.write")  # off
        for _ in range(2):
            with pytest.raises(OSError, match="Input/output error"):
                failpoints.failpoint("spool.write")
        failpoints.failpoint("spool.write")  # sleep(0) from now on
        assert failpoints.fired("spool.write") == 3
    finally:
        failpoints.disarm_all()
    for name, action, words in [("no.such", "kill", "unknown failpoint"), ("writer.copy", "eio", "not one of"),
                                ("spool.write", "2*", "is not [count*]task"), ("spool.write", "kill(3)", "only sleep")]:
        with pytest.raises(ConfigError, match=re.escape(words)):
            failpoints.parse(name, action)


@pytest.mark.parametrize(("name", "action"), CASES, ids=[f"{n}={a}" for n, a in CASES])
def test_failpoint_keeps_every_accepted_event(name, action, service_factory, dsn, conn, tmp_path):
    conn.execute("ALTER TABLE weighing_logs ADD CONSTRAINT no666 CHECK (scale_id <> 666)")
    state = tmp_path / "failpoints"
    state.mkdir()
    armed = f"{name}={ARMED[action]}" + ("" if name == "writer.dedup" else f";{STALL}")
    env = {failpoints.ENV: armed, failpoints.STATE_ENV: str(state)}
    args = ("--dsn", dsn, "--writers", "2", "--ring-capacity", "512", "--batch-size", "200",
            "--batch-timeout-ms", "20", *(ROTATING if name == "deadletter.rotate" else ()))
    svc = service_factory(*args, env=env)
    svc.wait_ready()
    sent = Sent()
    messages = plant_messages(sent, junk=10 if name == "deadletter.rotate" else 0)
    logs = []
    if name in STOPPED_BY:
        # Only a stop with records in the ring passes these: the signal while the writers
        # stall, then a restart without failpoints; the sender re-sends what got no reply.
        with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as dealer:
            dealer.connect(svc.ack_bind)
            for m in messages:
                dealer.send_multipart(m)
            svc.wait_for(lambda s: s["ring_used"] > 0)
            dealer.close(linger=0)
        sig = STOPPED_BY[name]
        expected = -signal.SIGKILL if action == "kill" else 1 if sig == signal.SIGQUIT else 0
        assert svc.terminate(sig) == expected
        logs.append(svc.output())
        svc = service_factory(*args)
        svc.wait_ready()
    if name == "deadletter.rotate":  # two rounds: the second's letters cannot fit the first's file
        send_acked(svc.ack_bind, messages[:20], sent)
    send_acked(svc.ack_bind, messages, sent)
    s = svc.wait_for(lambda s: s["pending"] == 0 and all(w["alive"] for w in s["writers"]), timeout_s=60)
    fired = failpoints.fired(name, state)
    assert fired >= 1, f"{name} was never passed: the scenario does not reach it"
    summary = check(dsn, s, sent, svc.dead_letter_dir, "\n".join(logs + [svc.output()]))
    assert svc.terminate() == 0
    print(f"\n{name}={ARMED[action]}: fired {fired}, {summary}")
