"""deploy/prometheus/alerts.yml: valid rules (`promtool check rules`), every rule's unit test
passing (`promtool test rules alerts_test.yml`), every alert proven by a case that fails when
the rule never fires, and only metrics that Perfuse really exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.process_support import ROOT

RULES = ROOT / "deploy" / "prometheus"
PROMTOOL = "/usr/bin/promtool"  # Debian package `prometheus` (scripts/test.sh installs it)


def _promtool(*args: str, cwd: Path = RULES) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, check=False)


def _alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load((RULES / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_checks_the_rules() -> None:
    done = _promtool("check", "rules", "alerts.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in done.stdout


def test_promtool_unit_tests_pass() -> None:
    done = _promtool("test", "rules", "alerts_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@pytest.mark.parametrize("alert", [rule["alert"] for rule in _alerts()])
def test_the_unit_tests_fail_when_the_alert_never_fires(alert: str, tmp_path: Path) -> None:
    groups = yaml.safe_load((RULES / "alerts.yml").read_text())
    for group in groups["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == alert:
                rule["expr"] = "vector(1) < 0"
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(groups))
    shutil.copy(RULES / "alerts_test.yml", tmp_path / "alerts_test.yml")
    done = _promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert done.returncode != 0
    assert f"alertname: {alert}," in done.stdout + done.stderr


def test_rules_use_only_metrics_perfuse_exports() -> None:
    source = (ROOT / "config" / "metrics.py").read_text() + (ROOT / "config" / "ops.py").read_text()
    for rule in _alerts():
        for name in re.findall(r"\bperfuse_[a-z0-9_]+", rule["expr"]):
            family = re.sub(r"_(total|bucket|count|sum)$", "", name)
            assert f'"{family}"' in source, (rule["alert"], name)
        assert rule["labels"]["severity"] in ("critical", "warning")
        runbook = rule["annotations"].get("runbook")
        if runbook:
            anchor = runbook.split("#", 1)[1]
            headings = (ROOT / "docs" / "runbooks.md").read_text()
            assert _slug_in(anchor, headings), (rule["alert"], runbook)


def _slug_in(anchor: str, markdown: str) -> bool:
    slugs = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in markdown.splitlines()
        if line.startswith("#")
    }
    return anchor in slugs
