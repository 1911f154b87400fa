"""ingestor/roles.py: each supervised process's role is one Struct naming its entry point, and the plan of a service."""

from __future__ import annotations

import importlib
import inspect
import pickle

import pytest
import zmq

from ingestor import roles
from ingestor.config import Config
from ingestor.errors import ConfigError
from ingestor.ring import RingSpec
from ingestor.roles import FrontArgs, LifecycleArgs, MqttArgs, SharedBlocks, SimulatorArgs, WriterArgs

SHARED = SharedBlocks(RingSpec("ring-x", 3, 1024, "id"), None, "counters-x", "acks-x")


def planned(**overrides) -> list[roles.ChildArgs]:
    return roles.plan(Config(data_dir="/tmp/unused", **overrides), "dbname=x", SHARED, None)


@pytest.mark.parametrize("role", [FrontArgs, WriterArgs, SimulatorArgs, LifecycleArgs, MqttArgs])
def test_each_role_names_an_entry_point_that_takes_its_args_and_a_stop_flag(role):
    module, function = role.entry.split(":")
    entry = getattr(importlib.import_module(module), function)
    parameters = list(inspect.signature(entry).parameters.values())
    assert [p.name for p in parameters[:2]] == ["args", "stop"]
    assert all(p.default is not inspect.Parameter.empty for p in parameters[2:])
    assert inspect.signature(entry).parameters["args"].annotation in (role.__name__, role)


def test_a_service_is_one_writer_per_lane_and_one_front_each_named_once():
    names = [args.name for args in planned()]
    assert names == ["writer-0", "writer-1", "writer-2", "front"]
    assert [args.index for args in planned() if isinstance(args, WriterArgs)] == [0, 1, 2]


@pytest.mark.parametrize(("batch_timeout_ms", "pace_ms"), [(40, 40.0), (4, 4.0), (200, 50.0), (600_000, 50.0)])
def test_the_front_paces_at_the_group_commit_interval_and_never_longer_than_50_ms(batch_timeout_ms, pace_ms):
    """ingestor/front.py "Pacing": a frame may wait the interval in ZeroMQ's queue; a long interval must not
    hold a stop request or fill the high-water mark."""
    front = next(a for a in planned(batch_timeout_ms=batch_timeout_ms) if isinstance(a, FrontArgs))
    assert front.pace_ms == pace_ms


def test_the_simulator_and_the_lifecycle_child_only_when_asked_for():
    names = [args.name for args in planned(simulate_scales=5, retention_days=30)]
    assert names == ["writer-0", "writer-1", "writer-2", "front", "simulator", "lifecycle"]
    assert [a.name for a in planned(archive_after_days=2)][-1] == "lifecycle"


def test_the_simulator_connects_on_loopback_to_the_front_s_endpoint():
    sim = next(a for a in planned(simulate_scales=5, bind="tcp://0.0.0.0:7001") if isinstance(a, SimulatorArgs))
    assert sim.endpoint == "tcp://127.0.0.1:7001"


def test_with_curve_the_simulator_gets_a_key_pair_the_front_allows(tmp_path):
    server_public, _ = zmq.curve_keypair()
    config = Config(data_dir=str(tmp_path), simulate_scales=5, curve_secret_key="k", curve_clients_dir=str(tmp_path))
    plan = roles.plan(config, "dbname=x", SHARED, server_public)
    front = next(a for a in plan if isinstance(a, FrontArgs))
    sim = next(a for a in plan if isinstance(a, SimulatorArgs))
    assert sim.curve is not None and sim.curve.server_public == server_public
    assert front.curve is not None and front.curve.extra_clients == (sim.curve.public,)


def test_every_role_survives_the_pickling_of_spawn():
    for args in planned(simulate_scales=5, retention_days=30):
        copy = pickle.loads(pickle.dumps(args))
        assert copy == args and copy.name == args.name and copy.entry == args.entry


def test_curve_without_the_service_s_public_key_is_refused_rather_than_run_without_curve(tmp_path):
    config = Config(data_dir=str(tmp_path), curve_secret_key="k", curve_clients_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="CURVE needs the service's public key"):
        roles.plan(config, "dbname=x", SHARED, None)
