"""The SBOM behind `make sbom`: CycloneDX 1.6 JSON of what a Perfuse deployment installs.

Python: every package pinned in requirements.lock, through cyclonedx-py's requirements mode
(name, version, purl, and the sha256 of every file the lock accepts). The lock, not an
environment, is the source: an environment holds whatever was ever installed into it, the lock is
what `make run` / `make test` install. The dependency graph comes from the lock's `# via`
annotations (uv writes, for each package, who asked for it), so it is the graph the lock was
resolved with. npm: the packages of tooling/plotly/package-lock.json (Plotly.js, served to every
browser), with the sha512 integrity `npm ci` checks. The document is validated against the
CycloneDX schema before it is written.

    python tooling/lock/sbom.py [--output dist/sbom.cdx.json]
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")
# Who asked for a package, as uv annotates it: the project, the installer input, or a package.
ROOT_PARENTS = re.compile(r"^(perfuse \(pyproject\.toml\)|-r \S+|-c \S+)$")


def lock_graph(lock: str) -> dict[str, set[str]]:
    """Package (canonical name) -> the packages it depends on, from the lock's `# via` lines.
    The project itself is "" (the root)."""
    children: dict[str, set[str]] = {"": set()}
    current = ""
    in_via = False
    for line in lock.splitlines():
        pin = PIN.match(line)
        if pin:
            current = canonicalize_name(pin.group(1))
            children.setdefault(current, set())
            in_via = False
            continue
        comment = line.strip()
        if not current or not comment.startswith("#"):
            continue
        text = comment.lstrip("#").strip()
        if text == "via":
            in_via = True
            continue
        if text.startswith("via "):
            parents, in_via = [text[4:]], False
        elif in_via and text:
            parents = [text]
        else:
            continue
        for parent in parents:
            key = "" if ROOT_PARENTS.match(parent) else canonicalize_name(parent)
            children.setdefault(key, set()).add(current)
    return children


def python_bom(lock_path: Path, pyproject: Path) -> dict[str, Any]:
    out = subprocess.run(  # noqa: S603 (our own interpreter, fixed arguments)
        [
            sys.executable,
            "-m",
            "cyclonedx_py",
            "requirements",
            str(lock_path),
            "--pyproject",
            str(pyproject),
            "--spec-version",
            "1.6",
            "--output-reproducible",
            # Validated once, whole, after the npm components and the graph are added (main).
            "--no-validate",
            "--output-file",
            "-",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    bom: dict[str, Any] = json.loads(out.stdout)
    return bom


def npm_purl(name: str, version: str) -> str:
    if name.startswith("@"):
        scope, bare = name.split("/", 1)
        return f"pkg:npm/{quote(scope)}/{bare}@{version}"
    return f"pkg:npm/{name}@{version}"


def npm_components(npm_lock: Path) -> tuple[list[dict[str, Any]], list[str], dict[str, list[str]]]:
    """The lock's packages as components, the refs the root depends on, and each package's
    dependencies (refs)."""
    lock = json.loads(npm_lock.read_text())
    packages: dict[str, Any] = lock["packages"]
    refs: dict[str, str] = {}
    components: list[dict[str, Any]] = []
    for path, meta in sorted(packages.items()):
        if not path:
            continue
        name = path.rsplit("node_modules/", 1)[1]
        purl = npm_purl(name, meta["version"])
        refs[name] = purl
        component: dict[str, Any] = {
            "type": "library",
            "bom-ref": purl,
            "name": name,
            "version": meta["version"],
            "purl": purl,
        }
        algorithm, _, digest = meta["integrity"].partition("-")
        if algorithm == "sha512":
            component["hashes"] = [{"alg": "SHA-512", "content": base64.b64decode(digest).hex()}]
        if meta.get("license"):
            component["licenses"] = [{"expression": meta["license"]}]
        components.append(component)
    root = [refs[name] for name in sorted(packages[""].get("dependencies", {}))]
    graph = {
        refs[path.rsplit("node_modules/", 1)[1]]: sorted(refs[d] for d in meta.get("dependencies", {}) if d in refs)
        for path, meta in packages.items()
        if path
    }
    return components, root, graph


def build(lock_path: Path, npm_lock: Path, pyproject: Path) -> dict[str, Any]:
    bom = python_bom(lock_path, pyproject)
    root_ref: str = bom["metadata"]["component"]["bom-ref"]
    by_name: dict[str, str] = {canonicalize_name(c["name"]): c["bom-ref"] for c in bom["components"]}
    graph = lock_graph(lock_path.read_text())
    missing = sorted(set(graph) - set(by_name) - {""})
    if missing:
        raise SystemExit(f"sbom: requirements.lock names packages cyclonedx-py did not list: {missing}")
    dependencies = {
        (by_name[name] if name else root_ref): sorted(by_name[child] for child in children)
        for name, children in graph.items()
    }
    components, npm_root, npm_graph = npm_components(npm_lock)
    bom["components"].extend(components)
    dependencies[root_ref] = sorted(dependencies.get(root_ref, []) + npm_root)
    dependencies.update(npm_graph)
    bom["dependencies"] = [{"ref": ref, "dependsOn": deps} for ref, deps in sorted(dependencies.items())]
    return bom


def validate(document: str) -> None:
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(document)
    if error is not None:
        raise SystemExit(f"sbom: not valid CycloneDX 1.6: {error}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lock", type=Path, default=ROOT / "requirements.lock")
    parser.add_argument("--npm-lock", type=Path, default=ROOT / "tooling" / "plotly" / "package-lock.json")
    parser.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml")
    parser.add_argument("--output", type=Path, default=ROOT / "dist" / "sbom.cdx.json")
    args = parser.parse_args()
    document = json.dumps(build(args.lock, args.npm_lock, args.pyproject), indent=2) + "\n"
    validate(document)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(document)
    print(args.output)  # the command's answer: where the SBOM is


if __name__ == "__main__":
    main()
