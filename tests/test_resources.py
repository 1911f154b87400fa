"""What a running service holds besides its processes (ingestor/resources.py), opened and closed for real: the
stats socket and the HTTP port, a real database, the shared blocks; a taken endpoint is named, close releases
everything it opened (ports free again, blocks unlinked, their record gone)."""

from __future__ import annotations

import multiprocessing
import socket
import urllib.request

import msgspec
import pytest
import zmq

from ingestor import leftovers, stats
from ingestor.config import Config
from ingestor.errors import IngestorError, SharedMemoryError
from ingestor.resources import Resources
from ingestor.stats import Counters, WriterFigures

from .fix_service import free_port

SPAWN = multiprocessing.get_context("spawn")


def config(tmp_path, **overrides) -> Config:
    settings = {"data_dir": str(tmp_path), "stats_endpoint": f"tcp://127.0.0.1:{free_port()}",
                "http_bind": f"127.0.0.1:{free_port()}", "ring_capacity": 64} | overrides
    return Config(**settings)


@pytest.fixture
def resources(tmp_path):
    made: list[Resources] = []

    def make(**overrides) -> Resources:
        made.append(Resources(config(tmp_path, **overrides)))
        return made[-1]

    yield make
    for res in made:
        res.close()


def test_before_the_database_the_stats_answer_starting_with_the_defaults(resources):
    res = resources()
    res.bind()
    f = res.figures("starting", [])
    assert (f.status, f.ring_capacity, f.received_events, f.database_connected, f.dsn) == ("starting", 64, 0, False,
                                                                                              None)
    res.publish(f)
    with urllib.request.urlopen(f"http://{res.config.http_bind}/metrics", timeout=5) as reply:
        assert b"ingestor_received_events_total 0.0" in reply.read()
    assert not res.opened and res.spool_leftovers()  # nothing to keep yet
    with pytest.raises(RuntimeError, match="once the database is migrated"):
        res.blocks  # noqa: B018 (reading it is what raises)


def test_a_stats_request_is_answered_with_the_snapshot_and_anything_else_with_an_error(resources):
    res = resources()
    res.bind()
    assert res.stats is not None
    ctx = zmq.Context.instance()
    for request, expected in ((stats.STATS_REQUEST, "starting"), (b"what", None)):
        req = ctx.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.connect(res.config.stats_endpoint)
        req.send(request)
        assert res.stats.socket.poll(5000)
        res.stats.answer(lambda: res.figures("starting", []))
        reply = msgspec.json.decode(req.recv())
        req.close()
        if expected:
            assert reply["status"] == expected
        else:
            assert "unknown request" in reply["error"]


@pytest.mark.parametrize("taken", ["stats_endpoint", "http_bind"])
def test_a_taken_endpoint_is_refused_naming_it(resources, tmp_path, taken):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    value = f"tcp://127.0.0.1:{port}" if taken == "stats_endpoint" else f"127.0.0.1:{port}"
    res = resources(**{taken: value})
    try:
        with pytest.raises(IngestorError, match=f"cannot bind the .*{port}"):
            res.bind()
    finally:
        holder.close()


def test_open_creates_the_blocks_on_a_real_database_and_close_releases_everything(resources, dsn, tmp_path):
    res = resources(dsn=dsn)
    res.bind()
    assert res.start_database() == dsn and res.told_dsn is not None and "password" not in res.told_dsn
    shared = res.open(dsn, 2, SPAWN)
    assert res.opened and shared.ring.lanes == 2 and res.blocks.ring.capacity == 64
    assert (tmp_path / leftovers.RECORD).exists()
    f = res.figures("running", [WriterFigures(pid=0, alive=False, restarts=0)] * 2)
    assert f.ring_capacity == 64 and not f.database_connected and len(f.writers) == 2
    res.tick(f)  # the periodic work runs against the database (commits record, partitions, rate line)
    counters, stats_endpoint, http = shared.counters, res.config.stats_endpoint, res.config.http_bind
    res.close()
    with pytest.raises(SharedMemoryError):
        Counters.attach(counters, 2)
    assert not (tmp_path / leftovers.RECORD).exists()
    again = resources(stats_endpoint=stats_endpoint, http_bind=http)
    again.bind()  # the ports are free again
