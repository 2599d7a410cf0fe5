"""ctrain's import graph is a one-way tree: no cycle, and no module imports one of a higher layer."""
import ast
import pathlib

import pytest

CTRAIN = pathlib.Path(__file__).resolve().parents[1] / "ctrain"

# Lowest first; a module may import modules of lower layers only. ctrain.data's modules count as one package.
# checkpoint sits low: it saves whatever state it is given and knows nothing of training.
LAYERS = (
    ("ctrain",),  # the package itself: its __version__
    ("ctrain.checks", "ctrain.constraints", "ctrain.energy", "ctrain.models", "ctrain.progress", "ctrain.storage"),
    ("ctrain.data",),
    ("ctrain.metrics", "ctrain.search"),
    ("ctrain.attacks",),
    ("ctrain.objective",),
    ("ctrain.sharding", "ctrain.evaluate", "ctrain.chains"),
    ("ctrain.checkpoint",),  # waits for peers (sharding) before a save; knows nothing of train
    ("ctrain.train",),
)


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(CTRAIN.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _node(module: str) -> str:
    """Returns the layering's node of a module: ctrain.data.* is the one package node ctrain.data."""
    return "ctrain.data" if module.startswith("ctrain.data") else module


def _imports(path: pathlib.Path, modules: set[str]) -> set[str]:
    """Returns the ctrain modules a file imports, at module level or inside functions."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from ctrain import search` imports the module ctrain.search, not the package ctrain
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                       for alias in node.names]
        else:
            continue
        for target in targets:
            if not target.startswith("ctrain"):
                continue
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in modules and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    files = sorted(CTRAIN.rglob("*.py"))
    modules = {_module_name(f) for f in files}
    return {_module_name(f): _imports(f, modules) for f in files}


def test_ctrain_has_no_import_cycle():
    graph = _graph()
    assert {"ctrain.objective", "ctrain.chains", "ctrain.checkpoint"} <= graph["ctrain.train"]  # the parse finds them
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_ctrain_has_no_upward_import():
    level = {module: i for i, layer in enumerate(LAYERS) for module in layer}
    graph = _graph()
    unplaced = sorted({_node(m) for m in graph} - set(level))
    assert not unplaced, f"modules in no layer of LAYERS (add each where its imports put it): {unplaced}"
    upward = [f"{m} imports {d}" for m, deps in sorted(graph.items()) for d in sorted(deps)
              if _node(m) != _node(d) and level[_node(d)] >= level[_node(m)]]
    assert not upward, "imports of a module of the same or a higher layer: " + "; ".join(upward)
    assert level["ctrain.checkpoint"] < level["ctrain.train"]  # the test can fail: checkpoint must not import train


def _unexplained_function_imports(text: str, name: str) -> list[str]:
    """Returns "name:line" of each import inside a function with no comment on its line or the three lines above."""
    lines = text.split("\n")
    found = []
    for fn in ast.walk(ast.parse(text, filename=name)):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                near = lines[max(0, node.lineno - 4):node.lineno]
                if not any("#" in line for line in near):
                    found.append(f"{name}:{node.lineno}")
    return found


def test_function_level_imports_state_their_reason():
    """An import inside a function hides a dependency, so each one says why it is not at the top (issue 31 item 7)."""
    unexplained = [hit for p in sorted(CTRAIN.rglob("*.py"))
                   for hit in _unexplained_function_imports(p.read_text(), str(p.relative_to(CTRAIN.parent)))]
    assert not unexplained, f"function-level imports without a comment giving the reason: {unexplained}"
    probe = "def f():\n    x = 1\n    y = 2\n    z = 3\n    import json\n    return json\n"
    assert _unexplained_function_imports(probe, "probe.py") == ["probe.py:5"]  # the check can fail
    assert _unexplained_function_imports(probe.replace("import json", "import json  # why"), "probe.py") == []
