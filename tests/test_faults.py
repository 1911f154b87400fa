"""Faults injected into the running service, each ending with exact database contents.

The tests that stop and start PostgreSQL get a cluster of their own
(``own_pg`` of tests/fix_pg.py), not the session's shared server.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import msgspec
import psycopg
import pytest

from ingestor.simulator import Simulator

from .test_service import identity_holds

pytestmark = pytest.mark.slow

# SPEC-size outage by default; INGESTOR_TEST_OUTAGE_S shortens it for a quick local run.
OUTAGE_S = float(os.environ.get("INGESTOR_TEST_OUTAGE_S", "60"))
START_MS = 1_700_000_000_000


def stored(dsn: str) -> tuple[int, int, int, int]:
    """(rows, distinct (scale_id, seq), states, states whose seq is their scale's greatest stored)."""
    with psycopg.connect(dsn) as conn:
        rows, keys = conn.execute("SELECT count(*), count(DISTINCT (scale_id, seq)) FROM weighing_logs").fetchone()
        states, latest = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE s.seq = m.seq) FROM scale_current_states s "
            "JOIN (SELECT scale_id, max(seq) seq FROM weighing_logs GROUP BY 1) m USING (scale_id)"
        ).fetchone()
    return rows, keys, states, latest


def test_database_outage_mid_stream_loses_nothing_and_spool_drains(service_factory, own_pg):
    rate, scales = 5000, 300
    events = int(rate * (OUTAGE_S + 20))
    svc = service_factory("--dsn", own_pg.dsn, "--writers", "2", "--ring-capacity", "16384")
    svc.wait_ready()
    sim = Simulator(svc.bind, scales=scales, rate=rate, events=events, events_per_frame=50, start_ms=START_MS)
    sent = []
    sender = threading.Thread(target=lambda: sent.append(sim.run()))
    sender.start()
    time.sleep(5)
    own_pg.stop("immediate")
    stopped_at = time.monotonic()
    during = svc.wait_for(lambda s: not s["database_connected"] and s["spool_bytes"] > 0, timeout_s=OUTAGE_S)
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped_at)))
    peak = svc.stats()
    own_pg.start()
    restarted_at = time.monotonic()
    svc.wait_for(lambda s: s["database_connected"], timeout_s=60)
    reconnected_s = time.monotonic() - restarted_at
    sender.join()
    sender_done_s = time.monotonic() - restarted_at
    s = svc.wait_for(lambda s: s["persisted"] == events and s["pending"] == 0, timeout_s=180)
    recovered_s = time.monotonic() - restarted_at
    assert sent[0].events == events
    assert identity_holds(s) and s["database_connected"] and s["spool_bytes"] == 0
    assert (s["invalid"], s["duplicates"], s["failed"]) == (0, 0, 0)
    assert during["received_events"] > during["persisted"]
    assert stored(own_pg.dsn) == (events, events, scales, scales)
    print(f"\noutage {OUTAGE_S:.0f} s at {rate} ev/s: sent {events}, stored {s['persisted']}, "
          f"spool peak {peak['spool_bytes']} B / {peak['spool_events']} events, spooled {s['spooled_events']}, "
          f"after the restart: writing again in {reconnected_s:.1f} s, sender done at {sender_done_s:.1f} s, "
          f"backlog written at {recovered_s:.1f} s")
    assert svc.terminate() == 0


def test_full_ring_and_spool_stop_reading_then_lose_nothing(service_factory, own_pg):
    svc = service_factory("--dsn", own_pg.dsn, "--writers", "2", "--ring-capacity", "1024",
                          "--spool-max-bytes", str(1 << 20))
    svc.wait_ready()
    own_pg.stop("immediate")
    svc.wait_for(lambda s: True)
    # Far beyond ring (1,024) + spool (~2,800 records) + what the front holds
    # in hand (one 4 MiB batch) + the ZeroMQ queues (1,000 messages each side).
    events = 200_000
    sim = Simulator(svc.bind, scales=50, rate=0, events=events, events_per_frame=20, start_ms=START_MS)
    sender = threading.Thread(target=sim.run)
    sender.start()
    full = svc.wait_for(lambda s: s["ring_used"] == s["ring_capacity"] and s["spool_events"] > 0, timeout_s=60)
    time.sleep(1)
    before = svc.stats()
    time.sleep(2)
    stalled = svc.stats()
    # The front stopped reading, the sender is held back, and nothing is lost meanwhile.
    assert stalled["received_events"] == before["received_events"] < events
    assert stalled["spool_bytes"] <= 1 << 20
    assert sender.is_alive() and identity_holds(stalled)
    own_pg.start()
    restarted_at = time.monotonic()
    sender.join(180)
    s = svc.wait_for(lambda s: s["persisted"] == events and s["pending"] == 0, timeout_s=180)
    assert identity_holds(s) and full["spool_bytes"] > 0
    assert stored(own_pg.dsn)[:2] == (events, events)
    print(f"\nring and spool full: reading stopped at {stalled['received_events']} of {events} events "
          f"(spool {stalled['spool_bytes']} B); all {events} stored {time.monotonic() - restarted_at:.1f} s "
          f"after the restart")
    assert svc.terminate() == 0


@pytest.mark.promise
def test_sigterm_while_database_is_down_keeps_events_in_spool_for_next_start(service_factory, own_pg):
    svc = service_factory("--dsn", own_pg.dsn, "--writers", "2")
    svc.wait_ready()
    own_pg.stop("immediate")
    events = 6000
    Simulator(svc.bind, scales=40, rate=0, events=events, events_per_frame=100, start_ms=START_MS).run()
    svc.wait_for(lambda s: s["received_events"] == events)
    assert svc.terminate(signal.SIGTERM, timeout_s=60) == 0
    assert "Spooled 6000 events left in the ring" in svc.output()
    assert list(Path(svc.log.parent / "spool").glob("*.spool"))
    own_pg.start()
    again = service_factory("--dsn", own_pg.dsn, "--writers", "3")
    again.wait_ready()
    s = again.wait_for(lambda s: s["persisted"] == events and s["pending"] == 0)
    assert identity_holds(s) and s["received_events"] == events and s["replayed_events"] == events
    assert "Replayed 6000 events from spool" in again.output()
    assert stored(own_pg.dsn) == (events, events, 40, 40)
    assert again.terminate() == 0


def test_writers_killed_at_random_moments_mid_stream_store_every_event_once(service_factory, dsn, tmp_path):
    # and leave every alibi chain whole (issue 15), also across a restart with another writer count
    import random

    from ingestor import seals, verifier

    rng = random.Random(7)
    events = 40_000
    public, secret = seals.generate_keys(tmp_path / "keys")
    sealing = ("--alibi-key", str(secret), "--seal-file", str(tmp_path / "seals.jsonl"))
    svc = service_factory("--dsn", dsn, "--writers", "2", "--batch-size", "500", "--batch-timeout-ms", "20", *sealing)
    svc.wait_ready()
    sim = Simulator(svc.bind, scales=100, rate=8000, events=events, events_per_frame=50, start_ms=START_MS)
    sender = threading.Thread(target=sim.run)
    sender.start()
    kills = 0
    while sender.is_alive() and kills < 8:
        time.sleep(rng.uniform(0.2, 0.8))  # lands mid-COPY, mid-UPSERT, between commit and release...
        alive = [w for w in svc.stats()["writers"] if w["alive"]]
        if alive:
            os.kill(rng.choice(alive)["pid"], signal.SIGKILL)
            kills += 1
    sender.join()
    last_kill = time.monotonic()
    s = svc.wait_for(lambda s: s["persisted"] == events and s["pending"] == 0
                     and all(w["alive"] for w in s["writers"]), timeout_s=180)
    print(f"\n{kills} writer kills in a {events}-event stream: {s['persisted']} stored, "
          f"{s['duplicates']} duplicates, done {time.monotonic() - last_kill:.1f} s after the stream ended")
    assert kills >= 4 and sum(w["restarts"] for w in s["writers"]) == kills
    assert identity_holds(s) and s["duplicates"] == 0
    assert stored(dsn) == (events, events, 100, 100)
    assert svc.terminate() == 0
    assert "Sealed the alibi chains of 100 scale(s)" in svc.output()  # the clean stop's seal
    # three writers now: other lanes, the same chains
    svc = service_factory("--dsn", dsn, "--writers", "3", "--batch-size", "500", "--batch-timeout-ms", "20", *sealing)
    svc.wait_ready()
    Simulator(svc.bind, scales=100, rate=8000, events=3000, events_per_frame=50, start_ms=START_MS,
              seq_start=events // 100).run()
    s = svc.wait_for(lambda s: s["persisted"] == 3000 and s["pending"] == 0)
    assert svc.terminate() == 0 and s["seal_failures"] == 0
    report = verifier.verify(dsn, "public", public_keys=[seals.load_public(public)], seal_file=tmp_path / "seals.jsonl")
    assert (report.records, report.scales, report.findings) == (events + 3000, 100, [])
    assert report.seals >= 3  # at each clean stop, and the second start (the first had no chain to seal)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM ingestor_claims WHERE record_no = (%s + 3000) / 100",
                            (events,)).fetchone()[0] == 100


def test_service_started_before_postgresql_answers_starting_then_stores_once_it_is_up(service_factory, own_pg):
    own_pg.stop("fast")
    svc = service_factory("--dsn", own_pg.dsn, "--writers", "2")
    s = svc.wait_for(lambda s: "waiting for PostgreSQL" in str(s["recent_events"]), timeout_s=30)
    assert s["status"] == "starting" and s["database_connected"] is False and s["writers"] == []
    health = urllib.request.Request(f"http://{svc.http}/health")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(health, timeout=5)
    e.value.close()
    assert e.value.code == 503
    time.sleep(3)  # a few retries
    assert svc.proc.poll() is None and svc.output().count("Waiting for PostgreSQL") >= 2
    own_pg.start()
    svc.wait_ready(timeout_s=60)  # next try within the 1..30 s backoff
    svc.send(msgspec.msgpack.encode([{"scale_id": 5, "seq": n, "ts": START_MS + n} for n in range(300)]))
    svc.wait_for(lambda s: s["persisted"] == 300)
    assert stored(own_pg.dsn) == (300, 300, 1, 1)
    assert svc.terminate() == 0


def test_service_given_a_wrong_password_fails_at_once_naming_the_reason(service_factory, pg_server):
    dsn = f"host=127.0.0.1 port={pg_server.port} user=postgres password=wrong dbname=postgres"
    svc = service_factory("--dsn", dsn, "--writers", "1")
    assert svc.proc.wait(30) == 2
    assert "password authentication failed" in svc.output() and "Waiting for PostgreSQL" not in svc.output()


def test_sigterm_while_waiting_for_postgresql_exits_0(service_factory, own_pg):
    own_pg.stop("fast")
    svc = service_factory("--dsn", own_pg.dsn, "--writers", "1")
    svc.wait_for(lambda s: s["status"] == "starting", timeout_s=30)
    assert svc.terminate(timeout_s=15) == 0
    assert "SIGTERM while starting: exiting" in svc.output()


def test_sigterm_with_database_down_and_spool_disk_full_stops_promptly_and_counts_every_loss(service_factory, own_pg):
    # issue 10 #6: the front waited for ring space ignoring the stop; killed after 15 s, the
    # events it held vanished without a log line; exit after 25.6 s
    from ingestor import failpoints

    full_disk = "spool.create_segment=enospc;spool.write=enospc"
    svc = service_factory("--dsn", own_pg.dsn, "--writers", "2", "--ring-capacity", "1024",
                          env={failpoints.ENV: full_disk})
    svc.wait_ready()
    own_pg.stop("immediate")
    events = 5000
    sender = threading.Thread(target=Simulator(svc.bind, scales=40, rate=0, events=events, events_per_frame=100,
                                               start_ms=START_MS).run, daemon=True)
    sender.start()
    held = svc.wait_for(lambda s: s["ring_used"] == s["ring_capacity"] and s["pending"] > s["ring_used"]
                        and "holding the events in hand and not reading" in svc.output())
    started = time.monotonic()
    code = svc.terminate(signal.SIGTERM, timeout_s=60)
    took = time.monotonic() - started
    out = svc.output()
    assert code == 1 and took < 20 and "did not stop within" not in out
    lost = [int(n) for n in re.findall(r"LOST (\d+) ", out)]
    final = dict(re.findall(r"(\w+)=(\d+)", out[out.index("Final counts:"):].splitlines()[0]))
    final = {k: int(v) for k, v in final.items()}
    # database down all along: every received event is lost, each one counted and logged with its number
    assert len(lost) == 2 and sum(lost) == final["lost"] == final["received_events"] >= held["received_events"]
    assert final["pending"] == 0 and identity_holds(final)
    print(f"\nSIGTERM, database down, spool disk full: stopped in {took:.1f} s; LOST lines {lost}; {final}")
