"""The house's layers, read from the imports of dpe_dagster (lazy imports inside functions count;
imports only for type checking do not)."""

from __future__ import annotations

import ast
import re
from importlib.metadata import entry_points
from pathlib import Path

from dpe_dagster.providers import ENTRY_POINT_GROUP
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


# What names a cloud: its name, its services, its SDK.
CLOUD_WORDS = re.compile(r"\b(aws(_asg)?|amazon|ec2|eks|boto3?|botocore|sqs|azure|gcp|gce)\b", re.IGNORECASE)


def provider_packages() -> set[str]:
    """The packages of dpe's own providers, from its entry points (`dpe.providers`)."""
    return {point.value.split(":")[0] for point in entry_points(group=ENTRY_POINT_GROUP)
            if point.value.startswith("dpe_dagster.")}


def test_no_core_module_names_a_cloud_or_imports_a_provider():
    """Everything that differs between clouds lives in a provider's package: the core (the policy,
    the control loop, the ledger, the launcher, the CLI) reaches providers only through the registry."""
    packages = provider_packages()
    assert {"dpe_dagster.pools.aws", "dpe_dagster.pools.local"} <= packages

    def in_provider(module: str) -> bool:
        return any(module == p or module.startswith(p + ".") for p in packages)

    for module, names in imports().items():
        if in_provider(module):
            continue
        reached = sorted(n for n in names if in_provider(n))
        assert not reached, f"{module} imports provider module(s) {reached}: go through dpe_dagster.providers"
        text = modules()[module].read_text()
        named = sorted({m.group(0) for m in CLOUD_WORDS.finditer(text)})
        assert not named, f"{module} names a cloud: {named}"


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
