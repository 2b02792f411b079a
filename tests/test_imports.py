"""The package's import graph: no cycles, and nothing below the CLI imports it.

Every ``import`` statement counts, including the lazy ones inside functions: a lazy import still
ties two modules together and hides a cycle until the function runs. Importing ``a.b.c`` also runs
``a/b/__init__``, so an edge to a module is an edge to its parent packages too — except the
importer's own enclosing packages (already being imported when it runs) and the root ``difflens``
package, whose ``__init__`` is only the public facade that re-exports the API.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "difflens"


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((SRC / ROOT).rglob("*.py"))}


def _resolve(current: str, is_pkg: bool, level: int, module: str | None) -> str:
    if level == 0:
        return module or ""
    base = current.split(".") if is_pkg else current.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def import_graph() -> dict[str, set[str]]:
    """Module → the difflens modules it imports (submodules, and their parent packages but the root)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}

    def add(src: str, target: str) -> None:
        enclosing = {src.rsplit(".", i)[0] for i in range(1, src.count(".") + 1)}
        while target and target != ROOT:
            if target in mods and target != src and target not in enclosing:
                graph[src].add(target)
            target = target.rpartition(".")[0]

    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == ROOT or alias.name.startswith(ROOT + "."):
                        if alias.name == ROOT:
                            graph[name].add(ROOT)
                        add(name, alias.name)
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(name, is_pkg, node.level, node.module)
                if not (target == ROOT or target.startswith(ROOT + ".")):
                    continue
                if target == ROOT and not node.level:
                    graph[name].add(ROOT)
                add(name, target)
                for alias in node.names:  # `from pkg import submodule`
                    sub = f"{target}.{alias.name}"
                    if sub in mods:
                        add(name, sub)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_detector_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_graph_sees_lazy_and_relative_imports():
    g = import_graph()
    # a lazy import inside a function (the trainer behind the `organism:` resolver) is an edge
    assert "difflens.organisms.train" in g["difflens.organisms"]
    # relative imports resolve, and a parent package is an edge too
    assert {"difflens.adl.collect", "difflens.models.pair"} <= g["difflens.adl.patchscope"]
    assert "difflens.graders" in g["difflens.adl.steering"]


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" ↔ ".join(c) for c in cycles)


def test_nothing_below_the_cli_imports_it():
    g = import_graph()
    offenders = sorted(m for m, deps in g.items() if not m.startswith(f"{ROOT}.cli")
                       and any(d == f"{ROOT}.cli" or d.startswith(f"{ROOT}.cli.") for d in deps))
    assert not offenders, f"modules outside difflens.cli import the CLI: {offenders}"


@pytest.mark.parametrize("low,high", [
    ("difflens.models", "difflens.organisms"),   # models never reach the trainer (resolver registry)
    ("difflens.models", "difflens.adl"),
    ("difflens.adl", "difflens.organisms"),
    ("difflens.graders", "difflens.adl"),
    ("difflens.llm", "difflens.graders"),
    ("difflens.rundir", "difflens.adl"),
    ("difflens.rundir", "difflens.models"),
    ("difflens.adl", "difflens.methods"),        # methods sit above ADL (amplification reuses steering's bar)
])
def test_layers_point_one_way(low, high):
    """Nothing in a lower layer imports a higher one, directly or through other modules."""
    g = import_graph()
    reach: dict[str, set[str]] = {}

    def closure(m: str) -> set[str]:
        if m not in reach:
            reach[m] = set()
            for d in g.get(m, ()):
                reach[m] |= {d} | closure(d)
        return reach[m]

    bad = sorted(m for m in g if (m == low or m.startswith(low + "."))
                 and any(d == high or d.startswith(high + ".") for d in closure(m)))
    assert not bad, f"{low} reaches {high} from {bad}"


def test_only_the_cli_drives_the_pipeline():
    """``difflens.run`` (config, stages, runner, experiments over runs) sits above every stage, method,
    evaluation, agent and report module: none of them imports it (the run directory's layout and
    artifacts, which they all use, live below in ``difflens.rundir``)."""
    g = import_graph()
    up = sorted(m for m, deps in g.items()
                if m != ROOT and not m.startswith(f"{ROOT}.cli") and not m.startswith(f"{ROOT}.run")
                and any(d == f"{ROOT}.run" or d.startswith(f"{ROOT}.run.") for d in deps))
    assert not up, f"modules below the pipeline import difflens.run: {up}"
