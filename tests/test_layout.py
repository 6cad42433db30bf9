"""The runtime's layout: no import cycle, a Trainer file readable in one sitting, and one module (run_folder.py)
that names the run folder's files and does the atomic rename."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "torchstrap_runtime"
RUN_FOLDER = PACKAGE / "run_folder.py"
RUN_FILES = ("log.jsonl", "arrays.h5", "config.json", "last.pt", "run.lock")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """The `modules` that the module `name` (with `source`) imports anywhere: at top level or inside functions,
    relative or absolute, `from . import submodule` included."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # a name inside a module: that module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
    return {name: imported_modules(path.read_text(), name, path.name == "__init__.py", set(paths))
            for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (as a path that ends where it starts), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == "open":
                return stack[stack.index(child):] + [child]
            if child not in state and (cycle := visit(child)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def string_literals(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string constant of a file except docstrings (f-strings' literal parts included)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def python_files() -> list[Path]:
    return sorted([*PACKAGE.rglob("*.py"), *(ROOT / "torchstrap" / "generator").rglob("*.py")])


def test_the_import_walk_sees_every_kind_of_import():
    modules = {"pkg", "pkg.a", "pkg.e", "pkg.sub", "pkg.sub.b", "pkg.sub.c", "pkg.sub.d", "pkg.sub.mod"}
    source = """
from . import b
from .c import thing
from ..e import x
import pkg.a
def later():
    from pkg.sub.d import other
"""
    assert imported_modules(source, "pkg.sub.mod", False, modules) == \
        {"pkg.sub", "pkg.sub.b", "pkg.sub.c", "pkg.e", "pkg.a", "pkg.sub.d"}
    assert imported_modules("from . import a", "pkg", True, modules) == {"pkg.a"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_runtime_has_no_import_cycle():
    graph = import_graph()
    assert "torchstrap_runtime.plots" in graph["torchstrap_runtime.trainer_base"]  # imported inside a method
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_trainer_py_reads_in_one_sitting():
    lines = len((PACKAGE / "trainer.py").read_text().splitlines())
    assert lines < 450, f"torchstrap_runtime/trainer.py has {lines} lines: move a part into its own module"


def test_only_run_folder_py_spells_the_run_folder_files():
    spelled = [f"{path.relative_to(ROOT)}:{line}: {text!r}" for path in python_files() if path != RUN_FOLDER
               for line, text in string_literals(path) if any(name in text for name in RUN_FILES)]
    assert not spelled, "import the file names from torchstrap_runtime.run_folder:\n" + "\n".join(spelled)
    assert all(any(name == text for _, text in string_literals(RUN_FOLDER)) for name in RUN_FILES)


def test_only_run_folder_py_renames_files_into_place():
    renames = [f"{path.relative_to(ROOT)}:{node.lineno}" for path in python_files() if path != RUN_FOLDER
               for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.Attribute) and node.attr == "replace"
               and isinstance(node.value, ast.Name) and node.value.id == "os"]
    assert not renames, "write through run_folder.atomic_write instead of os.replace:\n" + "\n".join(renames)
