#!/usr/bin/env python3
"""The inputs side by side: ZeroMQ, MQTT (JSON, QoS 1) and Sparkplug B, one measurement per message.

    python bench/inputs.py [--events 30000] [--seconds 30] [--rate 300] [--rounds 1] [--paced-only --inputs opcua]

On one throwaway PostgreSQL and one mosquitto (persistence on, no bound on
queued or in-flight messages), per round:

- **full speed**: ZeroMQ: a separate sender (bench/loadgen.py) sends --events
  single-event frames as fast as it can; MQTT: --events QoS 1 messages are
  published while the service is stopped (queued at the broker for the
  input's session), then the service starts and takes the backlog; events/s
  from the first commit to the last, and the ratio to a raw COPY of the same
  number of rows in the same run.
  OPC UA: tests/opcua_scale.py's terminal records --opcua-events weighings
  of one variable as fast as asyncua's own server writes them.
- **the plant's rate**: --rate messages/s of 300 scales for --seconds,
  each input alone (ZeroMQ single-event frames; MQTT QoS 1 JSON; Sparkplug B
  DDATA by alias at QoS 0; OPC UA: one terminal's variable changing --rate
  times a second): CPU seconds per process (front, writers, the input,
  supervisor, PostgreSQL, mosquitto or the terminal) and the service's share
  of a core.

Results: bench/results/inputs-DATE.json and .md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as paho  # noqa: E402
from compare import Sampler, machine, postgres_procs, save_results  # noqa: E402
from throughput import copy_baseline, free_port, fresh_db, sender, start_service, throwaway_server  # noqa: E402

from ingestor import stats  # noqa: E402
from ingestor.sparkplug import Payload  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SCALES = 300
START_MS = 1_764_064_800_000
TEMPLATE = "plant/+/scale/{scale_id}/weight"


class Broker:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        conf = directory / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                        f"persistence_location {directory}/\nmax_queued_messages 0\nmax_inflight_messages 0\n"
                        + ("user root\n" if __import__("os").geteuid() == 0 else ""))
        self.proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        time.sleep(0.5)

    def client(self, client_id: str, **kwargs) -> paho.Client:
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, **kwargs)
        c.max_inflight_messages_set(1000)
        c.max_queued_messages_set(0)
        c.connect("127.0.0.1", self.port)
        return c

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Terminal:
    """tests/opcua_scale.py: one scale's OPC UA server recording ``n`` weighings at ``rate``/s once told to."""

    def __init__(self, n: int, rate: float) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="bench-opcua-"))
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.opcua_scale", str(self.port), str(self.directory),
                                      str(n), str(1000 / rate if rate else 0)], cwd=Path(__file__).resolve().parent.parent,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not (self.directory / "listening").exists():
            time.sleep(0.05)

    def go(self) -> None:
        (self.directory / "go").write_text("")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def config_file(workdir: Path, broker: Broker, table: str, port: int = 0) -> Path:
    path = workdir / f"{table}.toml"
    if table == "opcua":
        path.write_text(f'[opcua]\nendpoint = "opc.tcp://127.0.0.1:{port}/"\nqueue_size = 1000\n[[opcua.scales]]\n'
                        'scale_id = 17\ndata = ["ns=2;s=Scale17.Weight"]\nseq = "ns=2;s=Scale17.Counter"\n')
    elif table == "mqtt":
        path.write_text(f'[mqtt]\nbroker = "127.0.0.1:{broker.port}"\ntopics = ["{TEMPLATE}"]\n'
                        'client_id = "bench-ingestor"\n')
    else:
        path.write_text(f'[sparkplug]\nbroker = "127.0.0.1:{broker.port}"\ndevices = ["plant/+/scale-{{scale_id}}"]\n'
                        'client_id = "bench-sparkplug"\n')
    return path


def json_messages(n: int, seq_start: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        scale, seq = i % SCALES + 1, seq_start + i // SCALES
        out.append((f"plant/hall-{scale % 3}/scale/{scale}/weight",
                    json.dumps({"seq": seq, "ts": START_MS + seq, "data_1": f"{seq}.5 kg"}).encode()))
    return out


def publish(broker: Broker, messages: list[tuple[str, bytes]], rate: float = 0, qos: int = 1) -> None:
    client = broker.client(f"bench-publisher-{time.time_ns()}")
    client.loop_start()
    start = time.monotonic()
    infos = []
    for i, (topic, body) in enumerate(messages):
        if rate:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        infos.append(client.publish(topic, body, qos=qos))
    for info in infos:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()


def subscribe_once(broker: Broker, client_id: str, topic: str) -> None:
    """Open the input's persistent session, so the backlog queues for it."""
    c = broker.client(client_id, clean_session=False)
    done: list[int] = []
    c.on_subscribe = lambda *a: done.append(1)
    c.subscribe(topic, 1)
    while not done:
        c.loop(0.05)
    c.disconnect()


def named_procs(proc: subprocess.Popen, stats_ep: str):
    """supervisor, front, writer-N and the inputs by name (mqtt, sparkplug), from the stats' pids."""
    def find() -> dict[int, str]:
        out = {proc.pid: "supervisor"}
        try:
            s = stats.query(stats_ep, 1.0)
            children = psutil.Process(proc.pid).children()
        except (stats.StatsUnavailable, psutil.Error):
            return out
        names = {w["pid"]: f"writer-{i}" for i, w in enumerate(s["writers"])}
        names |= {i["pid"]: i["name"] for i in s["inputs"]}
        for c in children:
            try:
                if "resource_tracker" in " ".join(c.cmdline()):
                    continue
            except psutil.Error:
                continue
            out[c.pid] = names.get(c.pid, "front")
        return out
    return find


def ack_args() -> list[str]:
    return ["--ack-bind", f"tcp://127.0.0.1:{free_port()}"]


def wait_done(stats_ep: str, n: int, timeout_s: float = 600) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        s = stats.query(stats_ep)
        if s["persisted"] + s["duplicates"] + s["failed"] >= n and s["pending"] == 0:
            return s
        time.sleep(0.05)
    raise SystemExit(f"only {s['persisted']} of {n} in {timeout_s} s")


def drain(stats_ep: str, n: int) -> dict:
    """Events/s from the first commit to the last one of ``n`` events (the service's start and the sender's not
    counted): what a commit after the first stores per second."""
    return drain_after(stats_ep, 0, n)


def drain_after(stats_ep: str, already: int, n: int) -> dict:
    """As :func:`drain`, from the first commit past ``already`` persisted events."""
    import datetime as dt

    while (first := stats.query(stats_ep))["persisted"] <= already:
        time.sleep(0.005)
    t_first, done_first = dt.datetime.fromisoformat(first["last_persisted_at"]).timestamp(), first["persisted"]
    s = wait_done(stats_ep, n)
    seconds = dt.datetime.fromisoformat(s["last_persisted_at"]).timestamp() - t_first
    return {"events": n - done_first, "seconds": round(seconds, 2), "events_per_s": round((n - done_first) / seconds)}


def full_speed_zmq(server, workdir: Path, n: int) -> dict:
    dsn = fresh_db(server, f"zmq_{time.time_ns()}")
    proc, bind, stats_ep = start_service(dsn, workdir)
    send = sender(bind, n, 0, 0, 0, events_per_frame=1)
    result = drain(stats_ep, n)
    send.wait(30)
    proc.terminate()
    proc.wait(120)
    return result


def full_speed_opcua(server, workdir: Path, broker: Broker, n: int) -> dict:
    """The terminal records ``n`` weighings as fast as asyncua's server writes them; events/s first to last commit."""
    dsn = fresh_db(server, f"opcua_{time.time_ns()}")
    terminal = Terminal(n, 0)
    proc, _, stats_ep = start_service(dsn, workdir, *ack_args(), "--config",
                                      str(config_file(workdir, broker, "opcua", terminal.port)))
    while not stats.query(stats_ep)["inputs"][0]["connected"]:
        time.sleep(0.1)
    time.sleep(1)
    while stats.query(stats_ep)["persisted"] == 0:  # the first value, before the weighings begin
        time.sleep(0.05)
    terminal.go()
    result = drain_after(stats_ep, 1, n + 1)
    proc.terminate()
    proc.wait(120)
    terminal.stop()
    return result


def full_speed_mqtt(server, workdir: Path, broker: Broker, n: int, round_no: int) -> dict:
    dsn = fresh_db(server, f"mqtt_{time.time_ns()}")
    subscribe_once(broker, "bench-ingestor", TEMPLATE.replace("{scale_id}", "+"))
    publish(broker, json_messages(n, round_no * 1_000_000))  # queued for the session while no ingestor runs
    proc, _, stats_ep = start_service(dsn, workdir, *ack_args(), "--config", str(config_file(workdir, broker, "mqtt")))
    result = drain(stats_ep, n)
    proc.terminate()
    proc.wait(120)
    return result


def paced(server, workdir: Path, broker: Broker, kind: str, rate: float, seconds: float, round_no: int) -> dict:
    dsn = fresh_db(server, f"{kind}_{time.time_ns()}")
    n = int(rate * seconds)
    terminal = Terminal(n, rate) if kind == "opcua" else None
    extra = [] if kind == "zeromq" else [*ack_args(), "--config", str(config_file(workdir, broker, kind,
                                                                                  terminal.port if terminal else 0))]
    proc, bind, stats_ep = start_service(dsn, workdir, *extra)
    if kind != "zeromq":
        deadline = time.monotonic() + 30
        while not stats.query(stats_ep)["inputs"][0]["connected"] and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)
    sampler = Sampler()
    sampler.watch(postgres_procs(server))
    sampler.watch(named_procs(proc, stats_ep))
    sampler.watch(lambda: {broker.proc.pid: "mosquitto"} if terminal is None else {terminal.proc.pid: "terminal"})
    with sampler:
        t0 = time.perf_counter()
        if kind == "zeromq":
            send = sender(bind, n, rate, 0, 0, events_per_frame=1)
            sampler.watch(lambda: {send.pid: "sender"})
            send.wait()
        elif kind == "mqtt":
            publish(broker, json_messages(n, round_no * 1_000_000), rate)
        elif kind == "sparkplug":
            sparkplug_node(broker, n, rate, round_no)
        else:
            terminal.go()
            while not (terminal.directory / "done").exists():  # asking stats meanwhile would cost the supervisor
                time.sleep(0.5)
        s = wait_done(stats_ep, n + (terminal is not None))  # the terminal's first value is stored too
        wall = time.perf_counter() - t0
    proc.terminate()
    proc.wait(120)
    if terminal is not None:
        terminal.stop()
    procs = sampler.figures()
    service = sum(v["cpu_s"] for name, v in procs.items() if name not in ("postgres", "mosquitto", "sender", "terminal"))
    return {"messages": n, "seconds": round(wall, 1), "p50_ms": s["latency_ms"]["p50"], "p99_ms": s["latency_ms"]["p99"],
            "processes": procs, "service_cpu_s": round(service, 2),
            "service_core_percent": round(100 * service / wall, 1), "service_us_per_event": round(1e6 * service / n)}


def sparkplug_node(broker: Broker, n: int, rate: float, round_no: int) -> None:
    """One edge node with 300 scale devices: births, then DDATA by alias, one weighing each, at ``rate``/s."""
    client = broker.client(f"bench-node-{time.time_ns()}")
    client.loop_start()
    seq = 0

    def send(topic: str, *metrics) -> None:
        nonlocal seq
        client.publish(topic, Payload(timestamp=START_MS, seq=seq % 256, metrics=list(metrics)).SerializeToString(), qos=0)
        seq += 1

    send("spBv1.0/plant/NBIRTH/node-1", Payload.Metric(name="bdSeq", datatype=8, long_value=0))
    for scale in range(1, SCALES + 1):
        send(f"spBv1.0/plant/DBIRTH/node-1/scale-{scale}", Payload.Metric(name="Weight", alias=1, datatype=10,
                                                                          double_value=0.0))
    start = time.monotonic()
    for i in range(n):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        scale = i % SCALES + 1
        send(f"spBv1.0/plant/DDATA/node-1/scale-{scale}",
             Payload.Metric(alias=1, timestamp=START_MS + round_no * 10_000_000 + i, double_value=1000 + i / 2))
    client.disconnect()
    client.loop_stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=30_000)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=300.0)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--opcua-events", type=int, default=10_000)
    p.add_argument("--inputs", nargs="+", default=["zeromq", "mqtt", "sparkplug", "opcua"],
                   choices=["zeromq", "mqtt", "sparkplug", "opcua"], help="the inputs run at --rate")
    p.add_argument("--paced-only", action="store_true", help="leave out the full-speed runs")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args()
    workdir, server = throwaway_server("inputs")
    broker_dir = Path(tempfile.mkdtemp(prefix="bench-mosquitto-"))
    broker = Broker(broker_dir)
    results: dict = {"machine": machine(server), "date": time.strftime("%Y-%m-%d"), "events": a.events, "rounds": []}
    lines = []
    try:
        for r in range(a.rounds):
            one: dict = {}
            if not a.paced_only:
                one["copy_events_per_s"] = round(a.events / copy_baseline(server, fresh_db(server, f"copy_{r}"),
                                                                          a.events))
                one["zeromq"] = full_speed_zmq(server, workdir, a.events)
                one["mqtt"] = full_speed_mqtt(server, workdir, broker, a.events, r)
                one["opcua"] = full_speed_opcua(server, workdir, broker, a.opcua_events)
                copy = one["copy_events_per_s"]
                lines.append(f"round {r + 1}: COPY {copy:,} events/s; full speed, one measurement per message: "
                             f"ZeroMQ {one['zeromq']['events_per_s']:,} ({one['zeromq']['events_per_s'] / copy:.2f} × "
                             f"COPY), MQTT backlog {one['mqtt']['events_per_s']:,} "
                             f"({one['mqtt']['events_per_s'] / copy:.2f} × COPY), OPC UA {one['opcua']['events_per_s']:,} "
                             "(one variable, as fast as asyncua's server writes)")
            one["paced"] = {kind: paced(server, workdir, broker, kind, a.rate, a.seconds, r) for kind in a.inputs}
            results["rounds"].append(one)
            for kind, v in one["paced"].items():
                per = ", ".join(f"{name} {x['cpu_s']:.2f}" for name, x in v["processes"].items())
                lines.append(f"  {a.rate:g}/s {kind:>9}: service {v['service_core_percent']} % of a core, "
                             f"{v['service_us_per_event']} µs/event, p50 {v['p50_ms']} p99 {v['p99_ms']} ms; CPU-s: {per}")
            print("\n".join(lines[-(len(a.inputs) + 1):]), flush=True)
        save_results(a.out, f"inputs-{results['date']}{'-' + '-'.join(a.inputs) if a.paced_only else ''}", results, lines)
    finally:
        broker.stop()
        server.stop()
    return 0


if __name__ == "__main__":
    threading.excepthook = lambda args: None
    sys.exit(main())
