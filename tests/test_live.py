"""The live page's server side (ingestor/live.py): its colours and reasons, the scale lookup's refusals,
the files it serves; and the latency histogram's fixed Prometheus buckets. The page in a browser:
tests/test_live_page.py."""

from __future__ import annotations

import io
import json

import msgspec
import pytest

from ingestor import live
from ingestor.monitoring import LATENCY_BOUNDS_S, Monitoring, _latency
from ingestor.stats import Figures, LatencyHistogram, WriterFigures
from tests.fix_service import free_port

WRITER = WriterFigures(pid=1, alive=True, restarts=0, persisted=0, batches=0, last_batch_ms=0.0)
HEALTHY = Figures(status="running", writers=[WRITER], database_connected=True)
# (figures changed, the reason the page must give) for every amber condition
AMBER = [
    ({"lost": 3}, "3 accepted events were lost since the start"),
    ({"spool_events": 40, "spool_bytes": 4096}, "40 events wait in the on-disk spool (4096 bytes)"),
    ({"writers": [msgspec.structs.replace(WRITER, restarts=2)]}, "writers restarted 2 times since the start"),
    ({"archive_failures": 1}, "1 archive attempts failed"),
    ({"retention_refused": 2}, "retention refused to drop 2 day partitions"),
    ({"seal_failures": 1}, "1 seals could not be stored"),
    ({"central_stalled_s": 901.0}, "the central server has confirmed nothing for 901 s"),
    ({"status": "draining"}, "draining before it exits"),
]


def test_healthy_figures_are_green_with_no_reason():
    assert live.glance(HEALTHY, True, "ok") == live.Glance("green", [])
    assert live.glance(msgspec.structs.replace(HEALTHY, central_stalled_s=900.0), True, "ok").level == "green"


@pytest.mark.parametrize("change, reason", AMBER, ids=[r.split()[1] for _, r in AMBER])
def test_each_condition_that_needs_a_look_is_amber_and_says_why(change, reason):
    g = live.glance(msgspec.structs.replace(HEALTHY, **change), True, "ok")
    assert g.level == "amber" and len(g.reasons) == 1 and g.reasons[0].startswith(reason), g


def test_an_unhealthy_service_is_red_with_health_s_reason_first():
    g = live.glance(msgspec.structs.replace(HEALTHY, lost=1), False, "the database is unreachable")
    assert g.level == "red" and g.reasons[0] == "the database is unreachable" and len(g.reasons) == 2
    assert live.glance(None, False, "starting") == live.Glance("amber", ["starting"])


def call(app, path: str) -> tuple[str, bytes, str]:
    seen = {}
    body = b"".join(app({"PATH_INFO": path, "wsgi.input": io.BytesIO()},
                        lambda status, headers: seen.update(status=status, headers=dict(headers))))
    return seen["status"], body, seen["headers"]["Content-Type"]


@pytest.mark.parametrize("text", ["abc", "-1", "1.5", "2147483648", "", "1%200", "٣"])
def test_a_lookup_of_something_that_is_no_scale_id_is_400_naming_it(text):
    m = Monitoring("127.0.0.1:0", 60)
    status, body, _ = call(m.app, f"/api/v1/scales/{text}")
    assert status == "400 Bad Request" and repr(text) in json.loads(body)["error"]


def test_a_lookup_before_the_database_is_known_or_while_it_is_away_is_503_with_the_reason():
    m = Monitoring("127.0.0.1:0", 60)
    status, body, _ = call(m.app, "/api/v1/scales/7")
    assert status.startswith("503") and "starting" in json.loads(body)["error"]
    m.serve_lookups(f"host=127.0.0.1 port={free_port()} user=x dbname=x", "public")  # nobody listens there
    status, body, _ = call(m.app, "/api/v1/scales/7")
    assert status.startswith("503") and json.loads(body)["error"].startswith("the database cannot answer: ")


@pytest.mark.parametrize("path, found", [
    ("/", "index.html"), ("/static/live.js", "live.js"), ("/static/uPlot.iife.min.js", "uPlot.iife.min.js"),
    ("/static/uPlot.LICENSE", "uPlot.LICENSE"), ("/static/../live.py", None), ("/static/", None),
    ("/static/index.html/..", None), ("/live.js", None), ("/static//etc/passwd", None), ("/index.html", None),
])
def test_only_the_page_s_own_files_are_served(path, found):
    status, body, kind = call(Monitoring("127.0.0.1:0", 60).app, path)
    if found is None:
        assert status == "404 Not Found"
    else:
        assert status == "200 OK" and body == live.static_file(found)[0] and kind == live.STATIC[found]


def test_the_page_fetches_nothing_from_elsewhere():
    for name in ("index.html", "live.js"):
        text = live.static_file(name)[0].decode()
        assert "http://" not in text.replace("http://<", "") and "https://" not in text, name
        assert "//cdn" not in text and "import(" not in text, name
    assert "MIT License" in live.static_file("uPlot.LICENSE")[0].decode()


def test_the_live_endpoint_answers_200_even_while_unhealthy_so_the_browser_console_stays_quiet():
    m = Monitoring("127.0.0.1:0", 60)
    m.update(msgspec.structs.replace(HEALTHY, database_connected=False, dsn="host=db.plant user=ingestor"))
    status, body, _ = call(m.app, "/api/v1/live")
    answer = json.loads(body)
    assert status == "200 OK" and answer["glance"] == {"level": "red", "reasons": ["the database is unreachable"]}
    # the stats socket's very shape, without the database's address: the page may be open to the plant network
    assert answer["stats"] == json.loads(msgspec.json.encode(msgspec.structs.replace(m.snapshot(), dsn=None)))


def test_latency_buckets_are_fixed_and_exact_at_each_bound():
    h = LatencyHistogram(upper_ms=[1, 5, 6, 300, 301, 1100, 70000], count=[2, 3, 4, 5, 6, 7, 8])
    samples = {s.labels["le"]: s.value for s in _latency(h).samples if s.name.endswith("_bucket")}
    assert list(samples) == [repr(b) for b in LATENCY_BOUNDS_S] + ["+Inf"]
    assert samples["0.005"] == 5 and samples["0.3"] == 14 and samples["1.0"] == 20 and samples["2.0"] == 27
    assert samples["60.0"] == 27 and samples["+Inf"] == 35
    assert [s.labels["le"] for s in _latency(LatencyHistogram()).samples if s.name.endswith("_bucket")] == list(samples)
