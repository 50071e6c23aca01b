"""Reproducible installs: requirements.lock covers pyproject.toml with hashes and is what the
running virtualenv holds; `make sbom` describes it; the served Plotly.js is the pinned one."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
PLOTLY = ROOT / "tooling" / "plotly"
HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})\b")


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    requirement: Requirement
    hashes: tuple[str, ...]

    def applies(self) -> bool:
        return self.requirement.marker is None or self.requirement.marker.evaluate()


def lock_pins(text: str) -> dict[str, Pin]:
    """requirements.lock as canonical name -> pin (continuation lines joined, comments dropped)."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    pins: dict[str, Pin] = {}
    for line in logical:
        requirement = Requirement(line.split(" --hash=", 1)[0].strip())
        (spec,) = requirement.specifier
        assert spec.operator == "==", line
        name = canonicalize_name(requirement.name)
        assert name not in pins, f"{name} pinned twice"
        pins[name] = Pin(name, spec.version, requirement, tuple(HASH.findall(line)))
    return pins


@pytest.fixture(scope="module")
def pins() -> dict[str, Pin]:
    return lock_pins(LOCK.read_text())


def pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = [
        *project["project"]["dependencies"],
        *project["project"]["optional-dependencies"]["dev"],
        *project["build-system"]["requires"],
    ]
    return [Requirement(r) for r in listed]


def test_lock_parser_reads_pins_markers_and_hashes() -> None:
    text = (
        "a-b==1.0 ; python_full_version < '3.11.3' \\\n"
        f"    --hash=sha256:{'1' * 64} \\\n"
        f"    --hash=sha256:{'2' * 64}\n"
        "    # via\n    #   perfuse (pyproject.toml)\n"
        "C_d==2.0 \\\n"
        f"    --hash=sha256:{'3' * 64}\n    # via a-b\n"
    )
    parsed = lock_pins(text)
    assert set(parsed) == {"a-b", "c-d"}
    assert parsed["a-b"].hashes == ("1" * 64, "2" * 64)
    assert parsed["c-d"].version == "2.0" and parsed["c-d"].hashes == ("3" * 64,)
    assert str(parsed["a-b"].requirement.marker) == 'python_full_version < "3.11.3"'


def test_every_pyproject_requirement_is_locked_with_hashes(pins: dict[str, Pin]) -> None:
    requirements = pyproject_requirements()
    assert {"django", "psycopg", "ruff", "mypy", "setuptools"} <= {canonicalize_name(r.name) for r in requirements}
    for requirement in requirements:
        pin = pins.get(canonicalize_name(requirement.name))
        assert pin is not None, f"{requirement} is not in requirements.lock: run `make lock`"
        assert requirement.specifier.contains(pin.version, prereleases=True), (
            f"requirements.lock pins {pin.name}=={pin.version}, pyproject.toml asks {requirement}: run `make lock`"
        )
        assert pin.hashes, f"{pin.name} has no --hash=sha256: in requirements.lock"
        # An extra (psycopg[binary]) brings packages of its own: those are locked too.
        for extra in requirement.extras:
            for raw in importlib.metadata.requires(pin.name) or []:
                needed = Requirement(raw)
                if needed.marker is not None and needed.marker.evaluate({"extra": extra}):
                    assert canonicalize_name(needed.name) in pins, f"{requirement}: {needed} is not locked"


def test_every_locked_package_has_sha256_hashes(pins: dict[str, Pin]) -> None:
    assert len(pins) > 50
    assert [name for name, pin in pins.items() if not pin.hashes] == []
    # The installer and the build backend of the --no-build-isolation project install are locked.
    assert {"pip", "setuptools"} <= set(pins)


def test_running_venv_holds_exactly_the_locked_versions(pins: dict[str, Pin]) -> None:
    applying = [pin for pin in pins.values() if pin.applies()]
    assert len(applying) > 50
    wrong = {}
    for pin in applying:
        try:
            installed = importlib.metadata.version(pin.name)
        except importlib.metadata.PackageNotFoundError:
            installed = "missing"
        if installed != pin.version:
            wrong[pin.name] = f"installed {installed}, locked {pin.version}"
    assert wrong == {}


@pytest.fixture(scope="module")
def sbom(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("sbom") / "sbom.cdx.json"
    subprocess.run(["scripts/sbom.sh", "--output", str(out)], cwd=ROOT, check=True, capture_output=True, timeout=300)
    text = out.read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    document: dict[str, Any] = json.loads(text)
    return document


def component(sbom: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        c for c in sbom["components"] if canonicalize_name(c["name"]) == canonicalize_name(name)
    ]
    assert len(found) == 1, f"{name}: {len(found)} components"
    return found[0]


def test_sbom_names_the_locked_python_packages_with_their_hashes(sbom: dict[str, Any], pins: dict[str, Pin]) -> None:
    assert sbom["bomFormat"] == "CycloneDX" and sbom["specVersion"] == "1.6"
    assert sbom["metadata"]["component"]["name"] == "perfuse"
    for name in ("django", "psycopg", "psycopg-binary"):
        found = component(sbom, name)
        assert found["version"] == pins[name].version
        assert found["purl"] == f"pkg:pypi/{name}@{pins[name].version}"
        hashes = {h["content"] for ref in found["externalReferences"] for h in ref.get("hashes", [])}
        assert hashes == set(pins[name].hashes)
    python = [c for c in sbom["components"] if c["purl"].startswith("pkg:pypi/")]
    assert {canonicalize_name(c["name"]) for c in python} == set(pins)


def test_sbom_dependency_graph_follows_the_lock(sbom: dict[str, Any]) -> None:
    refs = {c["bom-ref"] for c in sbom["components"]}
    graph = {d["ref"]: set(d["dependsOn"]) for d in sbom["dependencies"]}
    root = sbom["metadata"]["component"]["bom-ref"]
    assert set(graph) == refs | {root}
    assert all(deps <= refs for deps in graph.values())
    ref: dict[str, str] = {canonicalize_name(c["name"]): c["bom-ref"] for c in sbom["components"]}
    assert {ref["django"], ref["psycopg"], ref["plotly-js-dist-min"]} <= graph[root]
    assert {ref["asgiref"], ref["sqlparse"]} <= graph[ref["django"]]
    assert ref["asgiref"] not in graph[root]  # only Django and Channels ask for it


def test_sbom_names_the_pinned_plotly_js(sbom: dict[str, Any]) -> None:
    locked = json.loads((PLOTLY / "package-lock.json").read_text())["packages"]["node_modules/plotly.js-dist-min"]
    found = component(sbom, "plotly.js-dist-min")
    assert found["version"] == locked["version"]
    assert found["purl"] == f"pkg:npm/plotly.js-dist-min@{locked['version']}"
    sha512 = base64.b64decode(locked["integrity"].removeprefix("sha512-")).hex()
    assert found["hashes"] == [{"alg": "SHA-512", "content": sha512}]


def recorded_plotly_sha256() -> str:
    digest, path = (PLOTLY / "plotly.min.js.sha256").read_text().split()
    assert path == "node_modules/plotly.js-dist-min/plotly.min.js"
    return digest


def test_served_plotly_is_the_pinned_npm_package() -> None:
    package = json.loads((PLOTLY / "package.json").read_text())
    version = package["dependencies"]["plotly.js-dist-min"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), "pin an exact version"
    locked = json.loads((PLOTLY / "package-lock.json").read_text())["packages"]["node_modules/plotly.js-dist-min"]
    assert locked["version"] == version and locked["integrity"].startswith("sha512-")
    served = (ROOT / "static" / "vendor" / "plotly.min.js").read_bytes()
    assert hashlib.sha256(served).hexdigest() == recorded_plotly_sha256()
    assert f"plotly.js v{version}\n".encode() in served[:200]


def run_ensure_plotly(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f'source scripts/lib.sh; ROOT="{root}"; ensure_plotly'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def copy_plotly_tooling(root: Path) -> Path:
    tooling = root / "tooling" / "plotly"
    tooling.mkdir(parents=True)
    for name in ("package.json", "package-lock.json", "plotly.min.js.sha256"):
        shutil.copy(PLOTLY / name, tooling / name)
    return tooling


def test_ensure_plotly_installs_checks_and_refuses(tmp_path: Path) -> None:
    tooling = copy_plotly_tooling(tmp_path)
    # No node_modules: `npm ci` installs the locked package, whose file is checked, then served.
    answer = run_ensure_plotly(tmp_path)
    assert answer.returncode == 0, answer.stderr
    served = tmp_path / "static" / "vendor" / "plotly.min.js"
    assert hashlib.sha256(served.read_bytes()).hexdigest() == recorded_plotly_sha256()
    # A tampered package file: npm ci reinstalls from the integrity-checked tarball...
    served.unlink()
    (tooling / "node_modules" / "plotly.js-dist-min" / "plotly.min.js").write_text("alert('not plotly')")
    answer = run_ensure_plotly(tmp_path)
    assert answer.returncode == 0, answer.stderr
    served = tmp_path / "static" / "vendor" / "plotly.min.js"
    assert hashlib.sha256(served.read_bytes()).hexdigest() == recorded_plotly_sha256()
    # ...and a recorded sha256 the package does not match is refused: nothing is served.
    served.unlink()
    (tooling / "plotly.min.js.sha256").write_text(f"{'0' * 64}  node_modules/plotly.js-dist-min/plotly.min.js\n")
    answer = run_ensure_plotly(tmp_path)
    assert answer.returncode != 0
    assert "does not match plotly.min.js.sha256" in answer.stderr
    assert not served.exists()
