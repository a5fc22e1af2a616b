"""The code's shape: an import graph without circles (a circle hidden by an import inside a
function still makes two modules one)."""

import ast
import graphlib
from pathlib import Path

from conftest import REPO

SRC = REPO / "src"


def _modules() -> dict[str, Path]:
    modules = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imported(node: ast.AST, package: str, modules: dict[str, Path]) -> list[str]:
    """The modules of src/ that an import statement names: `from a.b import c` imports the
    module a.b.c if there is one, else a.b; a relative import counts from `package`."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parent = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*parent, base] if base else parent)
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    else:
        return []
    found = []
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name:
            found.append(name)
    return found


def import_graph() -> dict[str, set[str]]:
    """Each module of src/ and the modules of src/ it imports, wherever the import stands."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        imported = {m for node in ast.walk(tree) for m in _imported(node, package, modules)}
        # a submodule's import of its own package's __init__ is Python's order, not a circle
        graph[name] = {m for m in imported if m != name and not name.startswith(f"{m}.")}
    return graph


def test_the_import_graph_of_src_has_no_circles():
    graph = import_graph()
    assert len(graph) > 50 and "aelab.sweeps.jobs" in graph["aelab.train"]
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as err:
        circle = " -> ".join(err.args[1])
        raise AssertionError(f"modules that import each other: {circle}") from None


def test_how_a_run_flows_counts_todays_files_and_stays_within_60_percent_of_the_old_path():
    """docs/extending.md's table of the training path: each row's count is its files' `wc -l`
    today, the total is their sum, and it stays at most 60% of the 1,715 lines before #37's
    layout, so that a change which lengthens the path updates the page and is seen."""
    page = (REPO / "docs" / "extending.md").read_text()
    table = page.split("## How a run flows")[1].split("\n\n")[2]
    rows = [line.split("|")[2:4] for line in table.splitlines()[2:]]
    total = 0
    for files, count in rows[:-1]:
        paths = [REPO / name for name in files.split("`")[1::2]]
        assert paths and all(path.is_file() for path in paths), files
        lines = sum(len(path.read_text().splitlines()) for path in paths)
        assert int(count) == lines, f"{files.strip()}: {lines} lines, the page says {count.strip()}"
        total += lines
    assert int(rows[-1][1].strip(" *").replace(",", "")) == total
    assert total <= 0.6 * 1715, f"the training path is {total} lines, over 60% of 1,715"
