"""deploy/systemd: `systemd-analyze verify` accepts every unit, and every long-running process
`make run` starts (scripts/run.sh) has a unit running the same command.

The units name the installed paths (/opt/perfuse, /etc/perfuse); verify checks that each
ExecStart binary exists, so they are checked as a rendered copy pointing at this checkout."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.process_support import ROOT

UNITS = ROOT / "deploy" / "systemd"
INSTANCES = {
    "perfuse-daphne@.service": "perfuse-daphne@8001.service",
    "perfuse-engine@.service": "perfuse-engine@1.service",
}


def _rendered(directory: Path) -> list[str]:
    names = []
    for unit in sorted([*UNITS.glob("*.service"), *UNITS.glob("*.target")]):
        text = unit.read_text().replace("/opt/perfuse", str(ROOT))
        text = text.replace("/etc/perfuse/perfuse.env", str(directory / "perfuse.env"))
        (directory / unit.name).write_text(text)
        names.append(INSTANCES.get(unit.name, unit.name))
    (directory / "perfuse.env").write_text((UNITS / "perfuse.env").read_text())
    return names


def test_systemd_analyze_verify_accepts_every_unit(tmp_path: Path) -> None:
    names = _rendered(tmp_path)
    assert len(names) == 11  # ten services and the target
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *names], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    # Unknown keys and bad values are only warnings (exit 0): any output is a failure.
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), done.stdout + done.stderr


def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    _rendered(tmp_path)
    unit = tmp_path / "perfuse-notifier.service"
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystem=strictly"))
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", unit.name], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert "protect system" in done.stderr


def _run_sh_commands() -> set[str]:
    """`manage.py CMD ARGS` of every process scripts/run.sh starts in the background (&),
    less the demo-only ones."""
    demo_only = {"simulate_fleet"}
    found = set()
    for line in (ROOT / "scripts" / "run.sh").read_text().splitlines():
        match = re.search(r'"\$PY" manage\.py (\w+)([^&]*)&\s*$', line)
        if match and match.group(1) not in demo_only:
            found.add(" ".join([match.group(1), *shlex.split(match.group(2))]))
    return found


def _unit_commands() -> dict[str, str]:
    commands = {}
    for unit in UNITS.glob("*.service"):
        for line in unit.read_text().splitlines():
            if line.startswith("ExecStart=") and "manage.py " in line:
                commands[line.split("manage.py ", 1)[1].strip()] = unit.name
    return commands


def test_every_process_of_make_run_has_a_unit() -> None:
    wanted = _run_sh_commands()
    assert {"run_engine", "run_notifier", "run_hl7", "run_mqtt_ingest", "audit_checkpoint --every 60"} <= wanted
    assert wanted <= set(_unit_commands()), wanted - set(_unit_commands())
    run_sh = (ROOT / "scripts" / "run.sh").read_text()
    assert 'daphne" -b 127.0.0.1 -p "$PORT"' in run_sh
    daphne = (UNITS / "perfuse-daphne@.service").read_text()
    assert "/.venv/bin/daphne -b 127.0.0.1 -p %i config.asgi:application" in daphne
    assert "ExecStart=/usr/sbin/mosquitto -c " in (UNITS / "perfuse-mosquitto.service").read_text()


@pytest.mark.parametrize("unit", sorted(p.name for p in UNITS.glob("perfuse-*.service")))
def test_units_are_hardened_and_restart(unit: str) -> None:
    text = (UNITS / unit).read_text()
    if unit == "perfuse-prometheus-dir.service":  # a oneshot run as root before the Daphnes
        assert "Type=oneshot" in text and "rm -rf /run/perfuse-metrics" in text
        return
    for line in ("NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "Restart=on-failure", "User=perfuse"):
        assert line in text.splitlines(), (unit, line)
    assert "PartOf=perfuse.target" in text and "WantedBy=perfuse.target" in text
    # Any process that writes audit events may sign a checkpoint and append it to the anchor.
    assert "ReadWritePaths=/var/lib/perfuse/anchor" in text.splitlines(), unit
