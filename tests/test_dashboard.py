"""The Grafana dashboard and its provisioning files, checked against Grafana's published schema.

Grafana itself is not installable here; its typed models (grafana-foundation-sdk, the Grafana 11.6
build) are the schema: a JSON key they do not know is dropped when the dashboard is read into them,
so a round trip that changes the JSON names a key Grafana would ignore. The provisioning files are
held to the keys of Grafana's provisioning readers (pkg/services/provisioning/{datasources,dashboards}
in Grafana's source; Grafana docs "Provision Grafana"). Every panel's query runs against a real
Prometheus in tests/test_prometheus.py.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "monitoring" / "grafana"
_spec = importlib.util.spec_from_file_location("monitoring_dashboard", ROOT / "monitoring" / "dashboard.py")
dashboard = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dashboard)

DATASOURCE_KEYS = {"name", "type", "access", "orgId", "orgName", "uid", "url", "user", "database", "basicAuth",
                   "basicAuthUser", "withCredentials", "isDefault", "correlations", "jsonData", "secureJsonData",
                   "version", "editable"}
PROVIDER_KEYS = {"name", "orgId", "folder", "folderUid", "type", "disableDeletion", "updateIntervalSeconds",
                 "allowUiUpdates", "options"}
FILE_PROVIDER_OPTIONS = {"path", "foldersFromFilesStructure"}
BUILTIN_VARIABLES = {"__rate_interval", "__interval", "__range"}


def committed() -> dict:
    return json.loads(dashboard.OUT.read_text())


def round_trip(board: dict) -> dict:
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models import dashboard as gm

    register_default_plugins()  # panel options and Prometheus queries read into their own types too
    return json.loads(json.dumps(gm.Dashboard.from_json(board), cls=JSONEncoder))


def test_the_committed_dashboard_is_exactly_what_monitoring_dashboard_py_builds():
    assert dashboard.OUT.read_text() == dashboard.rendered(), (
        "monitoring/grafana/dashboards/scale-ingestor.json was edited by hand or not rebuilt: "
        "run python monitoring/dashboard.py")


def test_every_key_of_the_dashboard_is_one_grafanas_schema_knows():
    board = committed()
    assert round_trip(board) == board


# (where, key): one unknown key put at each level of the JSON model must be caught
MUTATIONS = {
    "dashboard": lambda b: b.__setitem__("refreshh", "5s"),
    "panel": lambda b: b["panels"][1].__setitem__("titel", "x"),
    "row": lambda b: b["panels"][0].__setitem__("colapsed", True),
    "query": lambda b: b["panels"][1]["targets"][0].__setitem__("exp", "up"),
    "field defaults": lambda b: b["panels"][1]["fieldConfig"]["defaults"].__setitem__("unitt", "s"),
    "timeseries option": lambda b: b["panels"][1]["fieldConfig"]["defaults"]["custom"].__setitem__("lineWidht", 2),
    "variable": lambda b: b["templating"]["list"][1].__setitem__("querry", "up"),
    "grid position": lambda b: b["panels"][1]["gridPos"].__setitem__("width", 3),
}


@pytest.mark.parametrize("where", MUTATIONS)
def test_a_key_grafana_does_not_know_is_caught_at_every_level(where):
    board = copy.deepcopy(committed())
    MUTATIONS[where](board)
    assert round_trip(board) != board


def test_the_panels_tile_the_grid_without_overlap_and_query_through_the_datasource_variable():
    board = committed()
    taken: set[tuple[int, int]] = set()
    names = {v["name"] for v in board["templating"]["list"]}
    for p in board["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & taken, f"panel {p['title']!r} overlaps another"
        taken |= cells
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert [t["refId"] for t in p["targets"]] == [chr(ord("A") + i) for i in range(len(p["targets"]))]
        for t in p["targets"]:
            used = set(re.findall(r"\$\{?(\w+)", t["expr"]))
            assert used - BUILTIN_VARIABLES <= names, (p["title"], used)
            assert 'instance=~"$instance"' in t["expr"], f"{p['title']}: {t['expr']} ignores the chosen ingestors"


def provisioning(kind: str) -> dict:
    return yaml.safe_load((GRAFANA / "provisioning" / kind / "scale-ingestor.yaml").read_text())


def datasource_problems(doc: dict) -> list[str]:
    problems = [] if doc.get("apiVersion") == 1 else ["apiVersion must be 1"]
    problems += [f"unknown top-level key {k!r}" for k in set(doc) - {"apiVersion", "datasources", "deleteDatasources"}]
    for ds in doc.get("datasources") or []:
        problems += [f"unknown data source key {k!r}" for k in set(ds) - DATASOURCE_KEYS]
        problems += [f"data source lacks {k!r}" for k in ("name", "type", "url") if not ds.get(k)]
        if ds.get("access", "proxy") not in ("proxy", "direct"):
            problems.append(f"access {ds['access']!r} is neither proxy nor direct")
    return problems


def provider_problems(doc: dict) -> list[str]:
    problems = [] if doc.get("apiVersion") == 1 else ["apiVersion must be 1"]
    problems += [f"unknown top-level key {k!r}" for k in set(doc) - {"apiVersion", "providers"}]
    for p in doc.get("providers") or []:
        problems += [f"unknown provider key {k!r}" for k in set(p) - PROVIDER_KEYS]
        if p.get("type") != "file":
            problems.append(f"provider type {p.get('type')!r}: only 'file' reads dashboards from disk")
        options = p.get("options") or {}
        problems += [f"unknown file provider option {k!r}" for k in set(options) - FILE_PROVIDER_OPTIONS]
        if not str(options.get("path", "")).startswith("/"):
            problems.append("options.path must be an absolute folder")
    return problems


def test_the_provisioning_files_use_only_the_keys_grafanas_provisioning_reads():
    ds, providers = provisioning("datasources"), provisioning("dashboards")
    assert datasource_problems(ds) == []
    assert provider_problems(providers) == []
    assert [d["type"] for d in ds["datasources"]] == ["prometheus"]  # what the datasource variable offers
    assert committed()["templating"]["list"][0]["query"] == "prometheus"


@pytest.mark.parametrize("mutate, problem", [
    (lambda d: d.__setitem__("apiVersion", 2), "apiVersion must be 1"),
    (lambda d: d["datasources"][0].__setitem__("isdefault", True), "unknown data source key 'isdefault'"),
    (lambda d: d["datasources"][0].pop("url"), "data source lacks 'url'"),
    (lambda d: d["datasources"][0].__setitem__("access", "server"), "access 'server' is neither proxy nor direct"),
    (lambda d: d.__setitem__("datasource", []), "unknown top-level key 'datasource'"),
])
def test_a_datasource_file_grafana_would_misread_is_refused(mutate, problem):
    doc = copy.deepcopy(provisioning("datasources"))
    mutate(doc)
    assert problem in datasource_problems(doc)


@pytest.mark.parametrize("mutate, problem", [
    (lambda d: d["providers"][0].__setitem__("allowUIUpdates", True), "unknown provider key 'allowUIUpdates'"),
    (lambda d: d["providers"][0].__setitem__("type", "files"), "provider type 'files': only 'file' reads dashboards"),
    (lambda d: d["providers"][0]["options"].__setitem__("paths", "/x"), "unknown file provider option 'paths'"),
    (lambda d: d["providers"][0]["options"].__setitem__("path", "dashboards"), "options.path must be an absolute"),
])
def test_a_provider_file_grafana_would_misread_is_refused(mutate, problem):
    doc = copy.deepcopy(provisioning("dashboards"))
    mutate(doc)
    assert any(p.startswith(problem) for p in provider_problems(doc))
