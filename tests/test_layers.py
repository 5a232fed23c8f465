"""The house's layers, read from the imports of dpe_dagster (lazy imports inside functions count;
imports only for type checking do not)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.paths import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "dpe_dagster"
# None left: the reports are handed the autoscaler's busy counts (usage/live.py `BusySoFar`), and
# configuration checks provider names in the registry (providers.py), not in pools/
KNOWN_PACKAGE_CYCLES: set[frozenset] = set()


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports() -> dict[str, set[str]]:
    """module -> every module name it imports (dpe_dagster's resolved to modules; others as written)."""
    known = modules()

    def resolve(name: str) -> str:
        while name not in known and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    out = {}
    for module, path in known.items():
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                       and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
        names = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known]
                names.update(subs if len(subs) == len(node.names) else [node.module, *subs])
        out[module] = {resolve(n) if n.startswith("dpe_dagster") else n for n in names} - {module}
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_another_that_imports_it_back():
    assert cycles(imports()) == []


def test_the_library_imports_nothing_of_the_project_that_uses_it():
    for module, names in imports().items():
        foreign = {n for n in names if n.split(".")[0] in ("assets", "resources", "tests")}
        assert not foreign, f"{module} imports {sorted(foreign)}"


def test_only_the_cli_starts_the_aws_emulator():
    users = {m for m, names in imports().items() if "dpe_dagster.pools.aws.emulator" in names}
    assert users <= {"dpe_dagster.cli"}, users


def test_pools_kubernetes_and_spark_know_nothing_of_scaling_usage_or_launching():
    for module, names in imports().items():
        if module.startswith(("dpe_dagster.pools", "dpe_dagster.kube", "dpe_dagster.spark")):
            above = {n for n in names if n.split(".")[1:2] and n.split(".")[1] in
                     ("scaling", "usage", "launch", "containers", "sim", "cli", "definitions", "component")}
            assert not above, f"{module} imports {sorted(above)}"


def test_package_cycles_are_only_the_known_ones():
    package = {}
    for module, names in imports().items():
        for name in names:
            if name.startswith("dpe_dagster.") and module.count("."):
                a, b = module.split(".")[1], name.split(".")[1]
                if a != b:
                    package.setdefault(a, set()).add(b)
    found = {frozenset({a, b}) for a, targets in package.items() for b in targets if a in package.get(b, ())}
    assert found <= KNOWN_PACKAGE_CYCLES, found - KNOWN_PACKAGE_CYCLES
