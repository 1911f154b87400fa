"""The live page at / (ingestor/live.py) in a real browser: Debian's Chromium, headless, driven by Selenium.

Screenshots of the healthy and the outage state land in the test's tmp_path, and also in
``$INGESTOR_SCREENSHOTS`` when set (docs/img/ was made so: ``INGESTOR_SCREENSHOTS=docs/img pytest
tests/test_live_page.py``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from tests.fix_service import require_command

pytestmark = pytest.mark.slow
# Chromium on a machine with no way out: without these it keeps trying to reach Google's hosts
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1250")
# the page's figures that stand still once the events are in (uptime and rates move on their own)
STEADY = ("received_events", "persisted", "duplicates", "invalid", "failed", "lost", "lost_after_commit", "pending",
          "ring_used", "ring_capacity", "spool_events", "spool_bytes", "dead_letter_errors", "archived_partitions",
          "archive_failures", "seals", "seal_failures", "database_connected")


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    chromium, driver_path = require_command("chromium"), require_command("chromedriver")
    profile = tempfile.mkdtemp(prefix="ingestor-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=DriverService(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser):
    """The browser on a blank page, its console emptied of what an earlier test's page logged."""
    browser.get("about:blank")
    browser.get_log("browser")
    return browser


def page_text(driver, element_id: str) -> str:
    return driver.find_element("id", element_id).text


def wait_page(driver, predicate, what: str, timeout_s: float = 30):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"the page never showed {what}; it shows:\n{driver.find_element('tag name', 'main').text}")


def shown(value) -> str:
    """A stats value as the page writes it (live.js: shown())."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return str(value)


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def screenshot(driver, tmp_path: Path, name: str) -> None:
    driver.save_screenshot(str(tmp_path / name))
    if os.environ.get("INGESTOR_SCREENSHOTS"):
        shutil.copy(tmp_path / name, Path(os.environ["INGESTOR_SCREENSHOTS"]) / name)


def look_up(driver, scale_id: str) -> None:
    field = driver.find_element("id", "scale-id")
    field.clear()
    field.send_keys(scale_id)
    driver.find_element("id", "lookup").click()


def events(start: int, n: int, scale_id: int | None = None) -> bytes:
    now_ms = int(time.time() * 1000) - 60_000
    return msgspec.msgpack.encode([{"scale_id": scale_id or i % 5 + 1, "seq": i, "ts": now_ms + i,
                                    "data_1": i, "data_2": f"w{i}"} for i in range(start, start + n)])


def test_the_page_loads_clean_shows_the_stats_figures_and_updates_while_events_flow(page, service_factory, dsn,
                                                                                    tmp_path):
    svc = service_factory("--dsn", dsn, "--writers", "2", "--batch-timeout-ms", "20")
    svc.wait_ready()
    page.get(f"http://{svc.http}/")
    wait_page(page, lambda: page_text(page, "level") == "GREEN", "green")
    svc.send(events(0, 300), msgspec.msgpack.encode([{"scale_id": 1}]))  # and one invalid event

    s = svc.wait_for(lambda s: s["persisted"] == 300 and s["invalid"] == 1 and s["pending"] == 0)
    wait_page(page, lambda: page_text(page, "stat-persisted") == "300", "persisted 300")
    time.sleep(1.5)  # one more poll: every figure from the same snapshot as the stats socket's
    s = svc.stats()
    for name in STEADY:
        assert page_text(page, f"stat-{name}") == shown(s[name]), name
    for q in ("p50", "p99"):  # JavaScript writes 14.0 as 14
        assert float(page_text(page, f"stat-latency_{q}_ms")) == s["latency_ms"][q]
    assert len(page.find_elements("css selector", "#writers tr")) == 2

    seen, sending = set(), threading.Thread(target=lambda: [svc.send(events(1000 + k * 50, 50)) or time.sleep(0.4)
                                                            for k in range(12)])
    points = page.execute_script("return charts['chart-rates'].data[0].length")
    sending.start()
    while sending.is_alive():
        seen.add(int(page_text(page, "stat-persisted")))
        time.sleep(0.3)
    sending.join()
    assert len(seen) >= 3, f"the page showed persisted only as {sorted(seen)} while 600 events flowed"
    assert page.execute_script("return charts['chart-rates'].data[0].length") > points
    peak = page.execute_script("return Math.max(...charts['chart-rates'].data[2])")
    assert peak > 0, "the rate chart never showed the invalid event"
    screenshot(page, tmp_path, "live-page-healthy.png")
    assert console_errors(page) == []


def test_the_scale_lookup_finds_a_scale_just_sent_with_its_alibi_record_numbers(page, service_factory, dsn):
    svc = service_factory("--dsn", dsn, "--writers", "1", "--batch-timeout-ms", "20")
    svc.wait_ready()
    svc.send(events(0, 12, scale_id=4242))
    svc.wait_for(lambda s: s["persisted"] == 12)
    page.get(f"http://{svc.http}/")
    for text, want in (("4242", None), ("99999", "scale 99999 has sent nothing yet")):
        look_up(page, text)
        wait_page(page, lambda: page_text(page, "scale-latest").startswith(f"scale {text}"), f"scale {text}")  # noqa: B023
        if want:
            assert page_text(page, "scale-latest") == want
            assert not page.find_element("id", "scale-weighings").is_displayed()
            continue
        assert "latest seq 11" in page_text(page, "scale-latest")
        rows = [[td.text for td in tr.find_elements("tag name", "td")]
                for tr in page.find_elements("css selector", "#scale-weighings tr.weighing")]
        # newest first, ten of them, each chained: record numbers 1..12 in the order stored
        assert [r[0] for r in rows] == [str(i) for i in range(11, 1, -1)]
        assert [r[4] for r in rows] == [str(i + 1) for i in range(11, 1, -1)]
    assert console_errors(page) == []


def test_the_page_turns_red_with_the_reason_while_the_database_is_away_and_green_after(page, service_factory,
                                                                                       own_pg, tmp_path):
    svc = service_factory("--dsn", own_pg.dsn, "--writers", "1", "--batch-timeout-ms", "20")
    svc.wait_ready()
    page.get(f"http://{svc.http}/")
    wait_page(page, lambda: page_text(page, "level") == "GREEN", "green")
    for k in range(6):  # some flow on the charts before the outage
        svc.send(events(k * 50, 50))
        time.sleep(0.5)
    svc.wait_for(lambda s: s["persisted"] == 300)
    own_pg.stop("immediate")
    svc.send(events(300, 40))
    wait_page(page, lambda: page_text(page, "level") == "RED", "red")
    assert "the database is unreachable" in page_text(page, "reasons")
    assert page_text(page, "stat-database_connected") == "NO"
    wait_page(page, lambda: "database unreachable" in page_text(page, "recent"), "the outage in its recent events")
    look_up(page, "3")
    wait_page(page, lambda: page_text(page, "scale-error").startswith("the database cannot answer"), "the lookup refused")
    screenshot(page, tmp_path, "live-page-outage.png")
    own_pg.start()
    wait_page(page, lambda: page_text(page, "level") == "GREEN", "green again", timeout_s=60)
    svc.wait_for(lambda s: s["persisted"] == 340)
    wait_page(page, lambda: "database reachable again" in page_text(page, "recent"), "the database back in its events")
    assert console_errors(page) == [f"http://{svc.http}/api/v1/scales/3 - Failed to load resource: the server "
                                    "responded with a status of 503 (Service Unavailable)"]
