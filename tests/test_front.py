"""ingestor/front.py: the front halts the service only when it cannot bind; any later error restarts it."""

from __future__ import annotations

import multiprocessing
import socket
from collections.abc import Iterator

import pytest
import zmq

from ingestor.acks import AckTable
from ingestor.errors import BootError
from ingestor.front import run_front
from ingestor.protocol import RECORD_DTYPE
from ingestor.ring import Ring
from ingestor.roles import DeadLetterArgs, FrontArgs, SharedBlocks
from ingestor.stats import Counters


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def shared() -> Iterator[SharedBlocks]:
    """The blocks a supervisor creates for one writer, owned by the test."""
    ring = Ring.create(lanes=1, lane_capacity=64, dtype=RECORD_DTYPE, ctx=multiprocessing.get_context("spawn"))
    counters, acks = Counters.create(1), AckTable.create(1)
    yield SharedBlocks(ring=ring.spec, semaphores=ring.handles[1], counters=counters.name, acks=acks.name)
    for block in (ring, counters, acks):
        block.unlink()
        block.close()


def front_args(shared: SharedBlocks, tmp_path, bind: str, ack_bind: str | None) -> FrontArgs:
    return FrontArgs(shared=shared, bind=bind, ack_bind=ack_bind, max_frame_bytes=1 << 20, spool_dir=str(tmp_path / "spool"),
                     spool_max_bytes=1 << 20, dead_letters=DeadLetterArgs(str(tmp_path / "dl"), 1 << 20))


@pytest.mark.parametrize("taken", ["bind", "ack_bind"])
def test_an_endpoint_already_bound_is_a_boot_error_naming_it(shared, tmp_path, taken):
    endpoints = {"bind": free_endpoint(), "ack_bind": free_endpoint()}
    ctx = zmq.Context()
    holder = ctx.socket(zmq.PULL)
    holder.bind(endpoints[taken])
    try:
        with pytest.raises(BootError, match=f"cannot bind {endpoints[taken]}: "):
            run_front(front_args(shared, tmp_path, endpoints["bind"], endpoints["ack_bind"]), lambda: False)
    finally:
        holder.close(linger=0)
        ctx.term()


def test_an_error_once_listening_is_not_a_boot_error_so_the_front_is_restarted(shared, tmp_path):
    """child.main exits 3 (halt) only for BootError; anything else exits 1 and the supervisor restarts the front."""
    calls = 0

    def stop() -> bool:  # the loop's own check, three rounds in: an error of the running front
        nonlocal calls
        calls += 1
        if calls == 3:
            raise zmq.ZMQError(zmq.ETERM)
        return False

    with pytest.raises(zmq.ZMQError) as raised:
        run_front(front_args(shared, tmp_path, free_endpoint(), free_endpoint()), stop)
    assert not isinstance(raised.value, BootError)
