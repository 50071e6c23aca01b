"""The layering of the code (README "What is where"): imports point down the table below, never up,
and no group of modules imports itself in a circle.

Every .py file of the project packages (migrations excepted) is parsed with `ast`; each import of
a project module is an arrow, wherever it is written (module top, `if TYPE_CHECKING:`, or inside a
function, so a function-level import cannot dodge the check). A module's rank is that of the most
specific prefix in LAYERS; the edge modules of an app (views, api, urls, routing, consumers,
forms, management commands: the entry points that use the access layer guarding them) take the
app's rank in EDGES instead. Python also runs a package's __init__ before its submodules; that
implicit arrow is not modelled (re-exporting __init__ files would otherwise always be cycles).

PERFUSE_IMPORT_ROOT points the test at another checkout (e.g. an older commit in a git worktree).
"""

from __future__ import annotations

import ast
import os
from collections.abc import Container, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(os.environ.get("PERFUSE_IMPORT_ROOT") or Path(__file__).resolve().parents[2])
PACKAGES = ("config", "telemetry", "audit", "alerts", "dashboard")

# Module prefix → rank, bottom to top; the most specific prefix wins.
LAYERS: dict[str, float] = {
    # 0: plumbing (settings, env, metrics, API errors, middleware, client address, ...).
    "config": 0,
    # Which Redis server holds what, and the Cluster hash tags of the limits' keys.
    "config.redis_servers": 0,
    # 1: the audit-trail writer; every layer audits its own acts.
    "audit.models": 1,
    "audit.chain": 1,
    "audit.trail": 1,
    "audit.checkpoints": 1,
    "audit.anchor": 1,
    "audit.services": 1,
    "audit.hardening": 1,
    # 2: telemetry core (registry, ingest, storage, engine, selectors, simulator).
    "telemetry": 2,
    # The archive: Parquet + manifests out of the hot store, verify, restore (telemetry/archive/).
    "telemetry.archive": 2,
    # HL7 v2 over MLLP (framing, ADT parsing, ACKs): telemetry core, calling its services; the
    # run_hl7 listener command is a telemetry edge (EDGE_NAMES "management").
    "telemetry.hl7": 2,
    # The raw-message model, loaded by telemetry.models: its own unit, or telemetry and
    # telemetry.hl7 (whose outbox and services use telemetry's models) would form a cycle.
    "telemetry.hl7.models": 2,
    # The lifecycle after the archive: legal holds, retention, research export (telemetry/lifecycle/):
    # above the archive, whose verification retention asks. Its models are telemetry's (loaded by
    # telemetry.models), a unit of their own that imports no project module.
    "telemetry.lifecycle": 2,
    "telemetry.lifecycle.models": 2,
    # 3: the access layer, and the audit trail's read side (verify, selectors, FHIR).
    "audit": 3,
    "audit.access": 3,
    # 4, 5: alarms, then the ward overview and chart.
    "alerts": 4,
    "dashboard": 5,
    # 5: the FHIR read API and bulk export (resources, selectors, export jobs); views/urls 5.5.
    "dashboard.fhir": 5,
    # 6: composition roots.
    "config.urls": 6,
    "config.asgi": 6,
    "config.routing": 6,
    "config.ops": 6,
}
# App prefix → rank of its edge modules.
EDGES: dict[str, float] = {
    "telemetry": 3.5,
    "audit": 3.5,
    "audit.access": 3.5,
    "alerts": 4.5,
    "dashboard": 5.5,
    "dashboard.fhir": 5.5,
}
EDGE_NAMES = frozenset({"views", "api", "urls", "routing", "consumers", "forms", "management"})

# Function-level imports of project modules allowed, with the reason.
NESTED_ALLOWED: dict[tuple[str, str], str] = {
    # AppConfig.ready connects the receivers of telemetry's signals; the receivers import models,
    # which cannot be imported while apps.py itself is being loaded.
    ("alerts.apps", "alerts.receivers"): "signal receivers, connected once the app registry is ready",
}


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported project module
    line: int
    nested: bool  # written inside a function or class body


def module_files(root: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            relative = path.relative_to(root)
            if "migrations" in relative.parts:
                continue
            parts = list(relative.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join(parts)] = path
    return files


def _longest_prefix(name: str, known: Container[str]) -> str | None:
    """The longest dotted prefix of `name` (itself included) that is in `known`."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in known:
            return prefix
    return None


def unit_of(module: str) -> str:
    """The table entry a module belongs to: its LAYERS prefix, or `<app>[edge]` for an edge module."""
    edge_app = _longest_prefix(module, EDGES)
    if edge_app is not None and EDGE_NAMES & set(module.split(".")[edge_app.count(".") + 1 :]):
        return f"{edge_app}[edge]"
    prefix = _longest_prefix(module, LAYERS)
    if prefix is None:
        raise AssertionError(f"{module} has no rank in LAYERS")
    return prefix


def rank_of(module: str) -> float:
    unit = unit_of(module)
    return EDGES[unit.removesuffix("[edge]")] if unit.endswith("[edge]") else LAYERS[unit]


def _walk(node: ast.AST, nested: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, nested
        inner = nested or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda)
        yield from _walk(child, inner)


def imports_of(module: str, path: Path, modules: set[str]) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: dict[Import, None] = {}  # ordered set: `from m import a, b` is one arrow
    for node, nested in _walk(tree, nested=False):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import sub` imports the submodule pkg.sub when there is one.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for name in names:
            target = _longest_prefix(name, modules)  # a name inside a module: that module
            if target is not None and target != module:
                found[Import(module, target, node.lineno, nested)] = None
    return list(found)


def project_imports(root: Path) -> list[Import]:
    files = module_files(root)
    modules = set(files)
    return [imp for module, path in files.items() for imp in imports_of(module, path, modules)]


def upward_arrows(imports: list[Import]) -> list[str]:
    return sorted(
        f"{imp.source} (rank {rank_of(imp.source):g}) -> {imp.target} (rank {rank_of(imp.target):g}), line {imp.line}"
        for imp in imports
        if rank_of(imp.target) > rank_of(imp.source)
    )


def cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each as one closed path."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(_closed_path(sorted(component), graph))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


def _closed_path(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One cycle through the component's first node (breadth-first back to it), to name it."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & members):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if nxt not in previous:
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle through {start}")


def _describe(found: list[list[str]]) -> str:
    return "\n".join(" -> ".join(cycle) for cycle in found)


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    return project_imports(ROOT)


def test_every_module_has_a_rank(imports: list[Import]) -> None:
    for module in module_files(ROOT):
        rank_of(module)


def test_no_import_points_up(imports: list[Import]) -> None:
    arrows = upward_arrows(imports)
    assert not arrows, "imports from a lower to a higher layer:\n" + "\n".join(arrows)


def test_no_module_cycle(imports: list[Import]) -> None:
    found = cycles({(imp.source, imp.target) for imp in imports})
    assert not found, "import cycles between modules:\n" + _describe(found)


def test_no_cycle_between_layer_units(imports: list[Import]) -> None:
    """Coarser than modules: the units of the table (e.g. audit.access, telemetry, alerts[edge])."""
    edges = {(unit_of(imp.source), unit_of(imp.target)) for imp in imports}
    found = cycles({(a, b) for a, b in edges if a != b})
    assert not found, "import cycles between layer units:\n" + _describe(found)


def test_no_function_level_project_imports(imports: list[Import]) -> None:
    nested = sorted(
        f"{imp.source} line {imp.line}: {imp.target}"
        for imp in imports
        if imp.nested and (imp.source, imp.target) not in NESTED_ALLOWED
    )
    assert not nested, "function-level imports of project modules (import at the top instead):\n" + "\n".join(nested)


# The checker itself, on small graphs: it must see what it is meant to refuse.


def test_cycles_names_a_cycle() -> None:
    assert cycles({("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")}) == [["a", "b", "c", "a"]]
    assert cycles({("a", "b"), ("b", "c")}) == []


def test_ranks_follow_the_table() -> None:
    assert rank_of("config.net") == 0
    assert rank_of("config.ops") == 6
    assert rank_of("audit.trail") == 1
    assert rank_of("audit.access.policy") == 3
    assert rank_of("audit.access.views") == 3.5
    assert rank_of("audit.management.commands.add_staff") == 3.5
    assert rank_of("telemetry.views") == 3.5
    assert rank_of("telemetry.simulator.fleet") == 2
    assert rank_of("telemetry.hl7.mllp") == 2
    assert rank_of("telemetry.management.commands.run_hl7") == 3.5
    assert rank_of("alerts.consumers") == 4.5
    assert rank_of("dashboard.fhir.exports") == 5
    assert rank_of("dashboard.fhir.views") == 5.5
    assert upward_arrows([Import("audit.trail", "telemetry.events", 1, True)]) == [
        "audit.trail (rank 1) -> telemetry.events (rank 2), line 1"
    ]


def test_nested_and_relative_imports_are_seen(tmp_path: Path) -> None:
    package = tmp_path / "telemetry"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from telemetry import b\n")
    (package / "b.py").write_text("from . import a\n")
    files = module_files(tmp_path)
    found = {imp for module, path in files.items() for imp in imports_of(module, path, set(files))}
    assert found == {Import("telemetry.a", "telemetry.b", 2, True), Import("telemetry.b", "telemetry.a", 1, False)}
