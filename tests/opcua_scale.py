"""A weighing terminal as an OPC UA server (asyncua), for tests/test_opcua.py: run as
``python -m tests.opcua_scale PORT DIRECTORY WEIGHINGS INTERVAL_MS``.

It serves ``ns=2;s=Scale17.Weight`` (Double), ``ns=2;s=Scale17.Unit`` (String) and ``ns=2;s=Scale17.Counter``
(UInt32) on ``opc.tcp://127.0.0.1:PORT/``, writes ``listening`` into DIRECTORY once it does, waits for a file ``go``
there, then records WEIGHINGS weighings, one every INTERVAL_MS: weight ``1000 + n / 2`` with the source timestamp
``T0 + n`` ms and the counter ``n``; then it writes ``done``. It runs until terminated.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sys
from pathlib import Path

from asyncua import Server, ua
from asyncua.server.subscription_service import SubscriptionService

T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
NAMESPACE = "urn:scale-ingestor:test-terminal"


_transfer = SubscriptionService.transfer_subscriptions


async def _transfer_to_the_new_connection(self, params, session_id, callback):  # type: ignore[no-untyped-def]
    """asyncua 2.1's server hands a transferred subscription's publish responses to the new connection but still
    takes its Publish requests from the old one, so after a transfer to a new session (not a reactivated one)
    nothing is published again; OPC UA Part 4 §5.13.7 moves both. Servers of weighing terminals do; this one
    is made to, so the test checks the input against the specification."""
    results = await _transfer(self, params, session_id, callback)
    processor = getattr(callback, "__self__", None)
    for subscription_id, result in zip(params.SubscriptionIds, results):
        subscription = self.subscriptions.get(int(subscription_id))
        if subscription is not None and result.StatusCode.is_good() and processor is not None:
            subscription.pub_request_callback = processor.get_publish_request
    return results


SubscriptionService.transfer_subscriptions = _transfer_to_the_new_connection


async def serve(port: int, directory: Path, weighings: int, interval_ms: float) -> None:
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await server.register_namespace(NAMESPACE)
    scale = await server.nodes.objects.add_object(ua.NodeId("Scale17", ns), "Scale17")
    # the counter first: a weighing's counter is there at or before the weighing's time (docs/operations.md)
    counter = await scale.add_variable(ua.NodeId("Scale17.Counter", ns), "Counter", 0, ua.VariantType.UInt32)
    await scale.add_variable(ua.NodeId("Scale17.Unit", ns), "Unit", "kg", ua.VariantType.String)
    weight = await scale.add_variable(ua.NodeId("Scale17.Weight", ns), "Weight", 0.0, ua.VariantType.Double)
    async with server:
        (directory / "listening").write_text(str(port))
        while not (directory / "go").exists():
            await asyncio.sleep(0.02)
        for n in range(1, weighings + 1):
            at = T0 + dt.timedelta(milliseconds=n)
            await counter.write_value(ua.DataValue(ua.Variant(n, ua.VariantType.UInt32), SourceTimestamp=at))
            await weight.write_value(ua.DataValue(ua.Variant(1000 + n / 2, ua.VariantType.Double), SourceTimestamp=at))
            await asyncio.sleep(interval_ms / 1000)
        (directory / "done").write_text(str(weighings))
        while True:
            await asyncio.sleep(1)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    port, directory, weighings, interval = sys.argv[1:5]
    asyncio.run(serve(int(port), Path(directory), int(weighings), float(interval)))
