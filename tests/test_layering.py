"""The shape of the code: toolkit/ in layers, imports pointing down only, no circles, small modules.

The layers, bottom first (README, "Repository layout"):

    core       errors, files, settings, command line, locks, safe model loading, report files, run history
    data       images, label formats, the managed dataset, perceptual hash, evaluation splits
    promotion  the registry of model versions, its checks, the promotion rule
    model      metrics, inference, evaluation, training and its planning (reads the registry)
    memory     the memory bank: reading, analysis, priorities, charts, the detection-system API
    report     the HTML report
    workflow   what chains the stages (the demo's workspace)

A module may import its own package and the packages below it, never one above. The stage
scripts at the top level may import any of toolkit/; no toolkit module imports a script.
Read with ``ast`` (imports inside functions count too), nothing is imported or run.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = ["core", "data", "promotion", "model", "memory", "report", "workflow"]
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    """Every module of toolkit/ and every top-level script, by dotted name."""
    found = {_module_name(p): p for p in sorted((REPO / "toolkit").rglob("*.py"))}
    found.update({p.stem: p for p in sorted(REPO.glob("*.py"))})
    return found


def _imports(path: Path, known: set[str]) -> set[str]:
    """The known modules that ``path`` imports (``from toolkit.x import y`` counts y if y is a module)."""
    out: set[str] = set()
    package = _module_name(path).rpartition(".")[0] if path.name != "__init__.py" else _module_name(path)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            if base in known:
                out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known)
    out.discard(_module_name(path) if path.parent != REPO else path.stem)
    return out


def _graph() -> dict[str, set[str]]:
    sources = _sources()
    known = set(sources)
    return {name: _imports(path, known) for name, path in sources.items()}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "toolkit" or len(parts) < 2:
        return None
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else -1


def test_every_toolkit_module_stands_in_a_layer():
    loose = [m for m in _graph() if m.startswith("toolkit.") and _layer(m) == -1]
    assert loose == [], f"modules outside the layer packages {LAYERS}: {loose}"


def test_imports_point_down_only():
    upward = []
    for module, deps in _graph().items():
        here = _layer(module)
        if here is None:
            continue
        for dep in deps:
            there = _layer(dep)
            if there is None:
                upward.append(f"{module} imports the script {dep}")
            elif there > here:
                upward.append(f"{module} ({LAYERS[here]}) imports {dep} ({LAYERS[there]}), a layer above it")
    assert upward == []


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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


def test_no_import_circles_among_modules_and_scripts():
    assert _circles(_graph()) == []


def test_the_circle_finder_finds_a_circle():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_toolkit_module_is_over_600_lines():
    big = {m: n for m, p in _sources().items() if m.startswith("toolkit.")
           and (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert big == {}


def test_the_toolkit_home_is_the_folder_of_the_stage_scripts():
    """The default --root and the scripts' paths in printed hints come from it: a module moved into
    a deeper package must still find the repository."""
    from toolkit.core.layout import TOOLKIT_HOME

    assert TOOLKIT_HOME == REPO and (TOOLKIT_HOME / "training_pipeline.py").is_file()
