"""The alert rules (monitoring/prometheus/alerts.yml) checked and unit-tested by Prometheus's own promtool.

alerts_test.yml holds, for every alert, a series it must fire on and a healthy one it must stay quiet
on. Each alert's expression is then broken both ways (never true, always true) and promtool must fail:
a unit test that passes whatever the rule says proves nothing.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.fix_service import require_command

RULES_DIR = Path(__file__).resolve().parent.parent / "monitoring" / "prometheus"
RULES, RULE_TESTS = RULES_DIR / "alerts.yml", RULES_DIR / "alerts_test.yml"
ALERTS = [r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def promtool(*args: str, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess:
    return subprocess.run([require_command("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_promtool_check_rules_accepts_the_shipped_rules():
    done = promtool("check", "rules", RULES.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in done.stdout


def test_promtool_unit_tests_pass_and_every_alert_has_a_firing_and_a_quiet_case():
    done = promtool("test", "rules", RULE_TESTS.name)
    assert done.returncode == 0, done.stdout + done.stderr
    fires, quiet = set(), set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    assert fires == set(ALERTS), f"alerts never shown firing: {set(ALERTS) - fires}"
    assert quiet == set(ALERTS), f"alerts never shown quiet: {set(ALERTS) - quiet}"


@pytest.mark.slow
@pytest.mark.parametrize("broken_as, expr", [("never true", "vector(1) == 2"),
                                             ("always true", 'label_replace(vector(1), "x", "", "", "")')])
@pytest.mark.parametrize("alert", ALERTS)
def test_the_unit_tests_fail_when_an_alerts_expression_is_broken(alert, broken_as, expr, tmp_path):
    doc = yaml.safe_load(RULES.read_text())
    for rule in (r for g in doc["groups"] for r in g["rules"] if r["alert"] == alert):
        rule["expr"] = expr
    (tmp_path / RULES.name).write_text(yaml.safe_dump(doc))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    done = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert done.returncode != 0, f"{alert} {broken_as}: promtool's unit tests still pass"
    assert alert in done.stdout + done.stderr
