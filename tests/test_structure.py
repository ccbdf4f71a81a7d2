"""The package's shape: no import circle among its modules (any import, at module level or inside a function:
one that runs late is still a dependency, and a circle means neither module can be understood alone)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "aot_diffusion"


def _module_names(root: Path) -> dict:
    out = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph(root: Path = PACKAGE) -> dict:
    """{module: {package modules it imports}}; ``from X import name`` counts as X.name where that is a module."""
    modules = _module_names(root)
    graph = {m: set() for m in modules}
    for module, path in modules.items():
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = (".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
                        if node.level else node.module or "")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[module] |= {t for t in targets if t in modules and t != module}
    return graph


def cycles(graph: dict) -> list:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_circle():
    graph = import_graph()
    assert len(graph) > 30 and graph["aot_diffusion.params"] >= {"aot_diffusion.schema", "aot_diffusion.plugins"}
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_circle(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n")  # a late import closes the circle too
    (pkg / "c.py").write_text("from . import a\n")
    assert cycles(import_graph(pkg)) == [["pkg.a", "pkg.b"]]


def test_every_stage_of_the_table_names_a_function_that_takes_its_run():
    """The CLI finds a job's function through its stage (dag.Stage.function); a misspelt `run` entry fails here,
    not when a cluster job starts."""
    import inspect

    from aot_diffusion import dag

    for st in dag.ALL_STAGES:
        fn = st.function()
        assert fn.__module__ == f"aot_diffusion.stages.{st.run.split(':')[0]}", st.name
        first, *rest = inspect.signature(fn).parameters.values()
        assert first.name == "run" and all(p.default is not p.empty for p in rest), st.name


def test_the_stage_graph_has_one_node_per_stage_with_its_jobs(tmp_path):
    """`aot-diffusion dag --stages`: the job counts add up to the plan's main jobs, the edges are the stages'
    reads (train feeds sample, never the reverse), and the DOT and PNG are written."""
    from aot_diffusion import dag
    from aot_diffusion.params import compose
    from aot_diffusion.stage_graph import stage_graph, write_stage_graph

    plan = dag.Plan(compose("smoke"))
    counts, edges = stage_graph(plan)
    assert list(counts) == [st.name for st in dag.STAGES]
    assert sum(counts.values()) == sum(1 for st, _ in plan.jobs() if st in dag.STAGES)
    assert counts["train"] == len(plan.ctx.models)
    assert ("train", "sample") in edges and ("sample", "train") not in edges
    dot, png = write_stage_graph(plan, tmp_path / "g")
    assert dot.read_text().count("->") == len(edges) and png.read_bytes()[:4] == b"\x89PNG"
