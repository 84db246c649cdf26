"""Prometheus recording and alert rules (k8s/monitoring/rules): `promtool check rules` and
`promtool test rules` with the unit tests next to them; every alert has a test that fires it."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from support import ROOT

RULES = ROOT / "k8s/monitoring/rules"
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool (Debian prometheus) is not installed: tests/install-tools.sh"
)


def rule_files() -> list:
    return sorted(p for p in RULES.glob("*.yaml") if not p.name.endswith(".test.yaml"))


def test_rules_are_valid():
    files = rule_files()
    assert files, f"no rule files in {RULES}"
    done = subprocess.run([PROMTOOL, "check", "rules", *map(str, files)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_rule_unit_tests_pass_and_fire_every_alert():
    tests = sorted(RULES.glob("*.test.yaml"))
    assert tests
    done = subprocess.run(
        [PROMTOOL, "test", "rules", *map(str, tests)], capture_output=True, text=True, timeout=120, cwd=RULES
    )
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr
    alerts = {
        r["alert"]
        for f in rule_files()
        for g in yaml.safe_load(f.read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    fired = {
        a["alertname"]
        for t in tests
        for case in yaml.safe_load(t.read_text())["tests"]
        for a in case.get("alert_rule_test", [])
        if a.get("exp_alerts")
    }
    assert alerts and alerts <= fired, f"alerts without a test that fires them: {sorted(alerts - fired)}"


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_runbook_names_a_heading_that_exists():
    checked = 0
    for f in rule_files():
        for group in yaml.safe_load(f.read_text())["groups"]:
            for rule in group["rules"]:
                runbook = (rule.get("annotations") or {}).get("runbook")
                if not runbook:
                    continue
                checked += 1
                doc, _, anchor = runbook.partition("#")
                headings = re.findall(r"^#+\s+(.+)$", (ROOT / doc).read_text(), re.M)
                assert anchor in {_slug(h) for h in headings}, f"{f.name}: {rule['alert']}: no heading for {runbook}"
    assert checked >= 3
