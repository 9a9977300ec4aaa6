"""The library's import graph: no circles, and only the composition root knows envs and agents.

The graph is read from the source (every `import` statement, those inside functions included, since a
function-level import is still a dependency), not from what happens to be imported at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

LIBRARY = Path(__file__).resolve().parent.parent / "rlprompt_math"
COMPOSITION_ROOT = {"rlprompt_math.train", "rlprompt_math.cli"}
OUTER_LAYERS = ("rlprompt_math.envs", "rlprompt_math.agents")  # installed from the top-level envs/, agents/


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the package directory `root`."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imported_names(module: str, path: Path) -> set[str]:
    """The dotted names `module` imports, relative imports resolved; `from p import x` gives `p.x`
    (which is `p`'s submodule x, or a name defined in p)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.split(".")
                if not is_package:
                    package = package[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the library modules it imports (and any envs/agents name, which live outside `root`)."""
    modules = module_names(root)
    graph = {}
    for module, path in modules.items():
        edges = set()
        for name in imported_names(module, path):
            if name.startswith(OUTER_LAYERS):
                edges.add(name)
                continue
            # The longest prefix that is a module: `engines.load_engine` is an import of `engines`.
            parts = name.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()
            if parts and ".".join(parts) != module:
                edges.add(".".join(parts))
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once fully explored
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycle_in_the_library():
    graph = import_graph(LIBRARY)
    # The graph is read, not empty: a top-level and a function-level import are both edges.
    assert "rlprompt_math.engines" in graph["rlprompt_math.oracle"]
    assert "rlprompt_math.engines" in graph["rlprompt_math.evaluation"]
    assert "rlprompt_math.engines.transformers" in graph["rlprompt_math.engines"]
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_only_the_composition_root_imports_envs_and_agents():
    graph = import_graph(LIBRARY)
    offenders = {module: sorted(n for n in edges if n.startswith(OUTER_LAYERS))
                 for module, edges in graph.items() if module not in COMPOSITION_ROOT}
    assert not {m: names for m, names in offenders.items() if names}
    assert any(n.startswith("rlprompt_math.envs") for n in graph["rlprompt_math.train"])  # the check sees them


def test_the_checks_see_a_circle_through_a_function_level_import(tmp_path):
    package = tmp_path / "rlprompt_math"
    (package / "engines").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "engines" / "__init__.py").write_text("from .base import Engine\n")
    (package / "engines" / "base.py").write_text("def load():\n    from ..train import build\n")
    (package / "train.py").write_text("from .engines import Engine\nfrom .envs import PromptRefineEnv\n")
    (package / "oracle.py").write_text("import rlprompt_math.agents\n")
    graph = import_graph(package)
    assert find_cycle(graph) == ["rlprompt_math.engines", "rlprompt_math.engines.base", "rlprompt_math.train",
                                 "rlprompt_math.engines"]
    assert "rlprompt_math.agents" in graph["rlprompt_math.oracle"]
    (package / "engines" / "base.py").write_text("def load():\n    pass\n")
    assert find_cycle(import_graph(package)) is None
