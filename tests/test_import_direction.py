"""The import graph points one way: the root on top, features in the middle, the base below.

Every import counts, also those inside functions and under TYPE_CHECKING: an
annotation that names another feature's class is a dependency too. A feature
may import another only where the composition root (cortexd/features.py)
hands it that feature's object; each such edge is listed below with the
argument that wires it, and an edge that is no longer used must leave the list.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import cortexd

PACKAGE = Path(cortexd.__file__).parent
ROOT = frozenset({"app", "features", "core_methods", "main", "__main__"})
BASE = frozenset(
    {
        "",  # cortexd/__init__.py: the version
        "protocol",
        "config",
        "store",
        "server",
        "host",
        "log",
        "sd",
        "runtime",
        "sharedwork",
        "summaries",  # the components' summaries `status` serves
        "imports",  # modules imported on first use, off the loop
        "knowledge",  # the runbook's data and its loader
    }
)
FEATURES = frozenset(
    {
        "alerts",
        "backup",
        "explain",
        "healing",
        "inference",
        "logs",
        "metrics",
        "monitor",
        "notify",
        "plugins",
        "repair",
        "updates",
    }
)
# (importer, imported): the argument of cortexd/features.py that wires it.
WIRED = {
    ("explain", "alerts"): "install_explain(alerts=alerts)",
    ("explain", "inference"): "install_explain(engine=engine)",
    ("explain", "monitor"): "install_explain(health=monitor)",
    ("explain", "plugins"): "install_explain(plugins=plugins)",
    ("explain", "repair"): "install_explain(fixes=repair)",
    ("healing", "alerts"): "install_healing(daemon, alerts, repair)",
    ("healing", "repair"): "install_healing(daemon, alerts, repair)",
    ("inference", "alerts"): "install_inference(daemon, alerts)",
    ("logs", "alerts"): "install_logs(daemon, alerts)",
    ("metrics", "alerts"): "install_metrics(alerts=alerts)",
    ("metrics", "inference"): "install_metrics(engine=engine)",
    ("metrics", "monitor"): "install_metrics(monitor=monitor)",
    ("metrics", "notify"): "install_metrics(notifier=notifier)",
    ("metrics", "updates"): "install_metrics(updates=updates)",
    ("monitor", "alerts"): "install_monitor(daemon, alerts)",
    ("notify", "alerts"): "install_notify(daemon, alerts)",
    ("plugins", "monitor"): "install_plugins(daemon, monitor, …)",
    ("plugins", "notify"): "install_plugins(…, notifier.action_types)",
    ("repair", "alerts"): "install_repair(daemon, monitor, alerts)",
    ("repair", "monitor"): "install_repair(daemon, monitor, alerts)",
    ("repair", "plugins"): "install_plugins(…, repair.hooks, …): the plugins' hooks",
    ("updates", "alerts"): "install_updates(daemon, alerts, …)",
}


def top_package(module: str) -> str:
    """`cortexd.monitor.checks.system` -> `monitor`; `cortexd` -> ``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> Iterator[str]:
    """Every cortexd module `path` imports, relative imports resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "cortexd")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            if base.split(".")[0] == "cortexd":
                yield base


def package_edges() -> dict[tuple[str, str], list[str]]:
    """(importer, imported) top-level packages -> the modules where it happens."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        source = top_package(module_name(path))
        for target in map(top_package, imports(path)):
            if target != source:
                edges.setdefault((source, target), []).append(module_name(path))
    return edges


def layer(package: str) -> str:
    if package in ROOT:
        return "root"
    if package in BASE:
        return "base"
    assert package in FEATURES, f"cortexd.{package} is in no layer; add it to this test"
    return "feature"


def test_every_package_has_a_layer() -> None:
    for path in PACKAGE.rglob("*.py"):
        layer(top_package(module_name(path)))


def test_the_base_imports_no_feature_and_not_the_root() -> None:
    wrong = {
        edge: where
        for edge, where in package_edges().items()
        if layer(edge[0]) == "base" and layer(edge[1]) != "base"
    }
    assert not wrong, wrong


def test_no_feature_imports_the_root() -> None:
    wrong = {
        edge: where
        for edge, where in package_edges().items()
        if layer(edge[0]) == "feature" and layer(edge[1]) == "root"
    }
    assert not wrong, wrong


def test_features_import_each_other_only_where_the_root_wires_them() -> None:
    sideways = {
        edge: where
        for edge, where in package_edges().items()
        if layer(edge[0]) == layer(edge[1]) == "feature"
    }
    unwired = {edge: where for edge, where in sideways.items() if edge not in WIRED}
    assert not unwired, f"feature imports the root does not wire: {unwired}"
    unused = sorted(WIRED.keys() - sideways.keys())
    assert not unused, f"listed as wired but not imported any more: {unused}"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_package_graph_has_no_cycles() -> None:
    graph: dict[str, set[str]] = {}
    for source, target in package_edges():
        graph.setdefault(source, set()).add(target)
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
