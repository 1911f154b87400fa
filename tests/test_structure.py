"""The structure docs/architecture.md promises: no import cycle in the package, no function longer than a screen."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ingestor"
SCREEN_LINES = 60  # a function a reader sees whole, docstring included


def imports() -> dict[str, set[str]]:
    """module -> the package's modules it imports, at the top or inside a function."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        name = path.stem
        graph[name] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    graph[name].add(node.module.split(".")[0])
                else:
                    graph[name] |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ingestor."):
                graph[name].add(node.module.split(".")[1])
    return {m: {d for d in deps if (PACKAGE / f"{d}.py").exists()} for m, deps in graph.items()}


def test_the_package_imports_have_no_cycle():
    graph = imports()
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph[module]):
            assert state.get(dep) != 1, "import cycle: " + " -> ".join(path + [module, dep])
            if dep not in state:
                visit(dep, path + [module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_no_function_is_longer_than_a_screen():
    long = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > SCREEN_LINES:
                    long.append(f"{path.name}:{node.name} ({lines} lines)")
    assert not long, long


def test_the_docs_name_only_tests_that_exist():
    root = PACKAGE.parent
    tests = set()
    for path in (root / "tests").glob("test_*.py"):
        tests |= set(re.findall(r"def (test_\w+)", path.read_text()))
    missing = []
    for doc in ("README.md", "docs/operations.md", "docs/architecture.md", "docs/PROTOCOL.md", "bench/README.md"):
        for name in set(re.findall(r"(test_\w+)(…?)", (root / doc).read_text())):
            name, abbreviated = name
            modules = {p.stem for p in (root / "tests").glob("*.py")} | {p.stem for p in (root / "bench").glob("*.py")}
            if name in tests or name in modules or (abbreviated and any(t.startswith(name) for t in tests)):
                continue
            missing.append(f"{doc}: {name}")
    assert not missing, missing


def test_the_architecture_module_table_names_every_module_and_only_those():
    table = (PACKAGE.parent / "docs" / "architecture.md").read_text().split("## Modules", 1)[1].split("\n\n")[1]
    named = set(re.findall(r"^\| `([a-z_]+)\.py` \|", table, re.M))
    assert named == {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}


def test_each_core_module_has_its_own_test_module():
    core = ("protocol", "front", "placement", "ring", "shm", "spool", "writer", "copy_payload", "claims", "chains",
            "acks", "supervisor", "child", "signals", "resources", "blocks", "scheduler", "roles", "config", "stats",
            "backoff")
    assert [m for m in core if not (PACKAGE.parent / "tests" / f"test_{m}.py").exists()] == []
