"""The layout's promises: the engine's import graph has no cycle, the engine never imports the
demo (Airflow workers load only the engine), and the README's Layout section names every module.

Every import counts, also one inside a function: a lazy import hides a cycle from Python's
loader, not from the reader who has to know which module comes first."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import lifecycle

PACKAGE = Path(lifecycle.__file__).parent
ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "plugins" / "lifecycle"
DEMO = ROOT / "plugins" / "lifecycle_demo"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each lifecycle module -> the lifecycle modules it imports (anywhere in its body)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = {m for m in imported if m in modules} - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, each as the path that closes it (depth-first search)."""
    found, done = [], set()

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in path:
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, path + [nxt])
        done.add(node)

    for start in sorted(graph):
        if start not in done:
            visit(start, [start])
    return found


def test_the_graph_sees_lazy_imports():
    graph = import_graph()
    assert "lifecycle.send" in graph["lifecycle.dag_factory"]  # imported inside the send task only


def test_no_import_cycles_in_the_engine():
    assert cycles(import_graph()) == []


def _imported_modules(path: Path):
    """(line, module) for every import in a file, including `importlib.import_module("...")`."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.lineno, node.module
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
              in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant)):
            yield node.lineno, str(node.args[0].value)


def test_engine_never_imports_the_demo():
    files = [*sorted(ENGINE.rglob("*.py")), *sorted((ROOT / "dags").glob("*.py"))]
    assert len(files) > 20  # the engine is there (a wrong path would pass vacuously)
    found = [f"{path.relative_to(ROOT)}:{line}: {module}" for path in files
             for line, module in _imported_modules(path)
             if module == "lifecycle_demo" or module.startswith("lifecycle_demo.")]
    assert not found, "the engine imports the demo:\n" + "\n".join(found)


def test_the_check_sees_every_kind_of_import(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import lifecycle_demo.cli\nfrom lifecycle_demo import demo_shop\n"
                      "def f():\n    import importlib\n    return importlib.import_module('lifecycle_demo.sinks')\n")
    assert [m for _, m in _imported_modules(source) if m.startswith("lifecycle_demo")] == [
        "lifecycle_demo.cli", "lifecycle_demo", "lifecycle_demo.sinks"]


def _layout_block() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Layout", 1)[1]
    return re.search(r"```\n(.*?)```", section, re.S).group(1)


def test_the_readme_layout_names_every_module():
    block = _layout_block()
    words = set(re.findall(r"[\w./]+", block))
    missing = []
    for package in (ENGINE, DEMO):
        assert f"plugins/{package.name}/" in words, f"README Layout: no plugins/{package.name}/"
        for entry in sorted(package.iterdir()):
            name = f"{entry.name}/" if (entry / "__init__.py").is_file() else entry.name
            if (entry.suffix == ".py" and entry.name != "__init__.py") or name.endswith("/"):
                if name not in words:
                    missing.append(f"{package.name}/{name}")
    assert not missing, "README Layout does not name: " + ", ".join(missing)
