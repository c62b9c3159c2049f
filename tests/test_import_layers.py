"""The shape of the code: no import cycle between our modules, and the SQL of our tables in ``checkpoints/``.

Imports are read from the source (``ast``), every one of them: at module level, inside functions and
under ``TYPE_CHECKING``, which is where a cycle usually hides. A cycle made only of annotations is named
by its importer in ``ANNOTATION_ONLY_IMPORTERS``: the pattern registry types its callbacks with the
runtime they are given, and the runtime reads the registry; no such import runs.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("graphs", "nodes", "checkpoints", "server", "agents")

# Modules outside checkpoints/ that import SQLAlchemy only for the type of a handle they pass on (an
# AsyncEngine, a statement built in checkpoints/): no query is built there.
SQL_HANDLE_TYPES_ONLY = frozenset({"graphs.lifecycle.machine", "graphs.lifecycle.metrics", "nodes.criteria_gate"})


# SQL statement text, as a query written by hand would hold it (keywords upper case, as we write SQL): the
# issue's "grep finds no SQL text outside checkpoints/", over code, comments and docstrings alike. Prose that
# names a keyword ("PostgreSQL NOTIFY from workers", "the first ``LISTEN``") is not a statement.
SQL_TEXT = re.compile(
    r"\bSELECT\b[^\n]*\bFROM\s+\w|\bINSERT\s+INTO\s+\w|\bUPDATE\s+\w+\s+SET\b|\bDELETE\s+FROM\s+\w"
    r"|\b(?:CREATE|ALTER|DROP)\s+(?:UNIQUE\s+)?(?:TABLE|INDEX|VIEW|TRIGGER|FUNCTION|SEQUENCE)\b|\bON\s+CONFLICT\b"
    r"|\bNOTIFY\s+\w+\s*,|\b(?:UN)?LISTEN\s+\w+\s*(?:;|$|[\"'`])|\bPRAGMA\s+\w+|\bpg_(?:try_)?advisory_\w+|\bpg_notify\b"
)
# A string literal that is a statement in lower case (upper case is found above, in any line).
SQL_STRING = re.compile(
    r"^\s*(?:select\s.*\sfrom\s+\w|insert\s+into\s|update\s+\w+\s+set\s|delete\s+from\s|(?:create|alter|drop)\s+"
    r"(?:unique\s+)?(?:table|index)\s|(?:un)?listen\s+\w+\s*;?\s*$|notify\s+\w+|pragma\s+\w+)",
    re.S,
)


def sql_text(source: str) -> list[int]:
    """The lines of ``source`` that hold SQL statement text (1-based)."""
    found = {n for n, line in enumerate(source.splitlines(), 1) if SQL_TEXT.search(line)}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL_STRING.search(node.value):
            found.add(node.lineno)
    return sorted(found)


# The modules whose ``if TYPE_CHECKING:`` imports (never executed) may close a cycle.
ANNOTATION_ONLY_IMPORTERS = ("graphs.kernel.patterns",)


def _module_files() -> dict[str, Path]:
    files = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join(parts)] = path
    return files


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """The ids of the nodes under an ``if TYPE_CHECKING:`` block."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                inside.update(id(n) for n in ast.walk(child))
    return inside


def _imported_names(module: str, path: Path, *, annotations: bool = True) -> Iterator[str]:
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    tree = ast.parse(path.read_text(), str(path))
    skipped = set() if annotations else _type_checking_nodes(tree)
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            yield source
            yield from (f"{source}.{alias.name}" for alias in node.names)  # `from graphs import process`


def import_graph(*, annotations: bool = True) -> dict[str, set[str]]:
    """Module → the modules of ours it imports (``annotations``: with those under ``TYPE_CHECKING``)."""
    files = _module_files()
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        imported = set()
        for name in _imported_names(module, path, annotations=annotations):
            while name and name not in files:  # `from a.b import Class`: the module a.b
                name = name.rpartition(".")[0]
            if name and name != module:
                imported.add(name)
            # Importing a.b.c runs the package a.b's __init__ first, unless the importer is inside a.b.
            package = name.rpartition(".")[0]
            while package and package in files and not module.startswith(package + "."):
                imported.add(package)
                package = package.rpartition(".")[0]
        graph[module] = imported
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph[module]):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_the_cycle_finder_reports_each_cycle_once() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": {"f"}}
    assert cycles(graph) == [["a", "b", "c"], ["d", "e"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_imports_under_type_checking_inside_functions_and_relative_ones_count(tmp_path: Path) -> None:
    source = tmp_path / "inbox.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from graphs.process.orchestrator import ProcessOrchestrator\n"
        "def later():\n"
        "    import nodes.timer\n"
        "from .spec import ProcessSpec\n"
    )
    names = set(_imported_names("graphs.process.inbox", source))
    assert {"graphs.process.orchestrator", "nodes.timer", "graphs.process.spec"} <= names


def test_the_import_graph_sees_every_kind_of_import() -> None:
    graph = import_graph()
    assert "graphs.process.orchestrator" in graph["graphs.runtime"]  # module level
    assert "checkpoints.process.migrations" in graph["graphs.process.migration"]  # from a.b import C
    assert "graphs.kernel.designs" in graph["graphs.process.context"]


def test_no_import_cycle_between_our_modules() -> None:
    found = cycles(import_graph(annotations=False))
    assert found == [], "import cycles (each: the modules that import each other):\n" + "\n".join(map(str, found))
    # With annotations too, but for the importers named: no cycle (a new one, even of annotations, is refused).
    graph, executed = import_graph(), import_graph(annotations=False)
    graph.update({module: executed[module] for module in ANNOTATION_ONLY_IMPORTERS})
    assert cycles(graph) == []


def test_the_process_family_imports_one_way() -> None:
    """Only the family's registration (and the runtime's annotations) know the orchestrator: its parts get
    what they need when it builds them."""
    graph = import_graph()
    importers = sorted(m for m, imported in graph.items() if "graphs.process.orchestrator" in imported)
    assert importers == ["graphs.process", "graphs.process.pattern", "graphs.runtime"]  # its package exports it


def test_no_sql_of_our_tables_outside_checkpoints() -> None:
    """Query construction needs SQLAlchemy or our table objects: neither is imported outside checkpoints/."""
    graph = import_graph()
    building = set()
    for module, path in _module_files().items():
        if module.startswith("checkpoints"):
            continue
        names = set(_imported_names(module, path))
        if "checkpoints.schema.tables" in graph[module] or "checkpoints.schema.lifecycle_tables" in graph[module]:
            building.add(module)
        if any(name == "sqlalchemy" or name.startswith("sqlalchemy.") for name in names):
            building.add(module)
    assert building <= SQL_HANDLE_TYPES_ONLY, (
        f"queries built outside checkpoints/: {sorted(building - SQL_HANDLE_TYPES_ONLY)}"
    )
    moved = {"graphs.process.migration", "graphs.analytics"}
    assert not building & moved


def test_the_sql_text_finder_tells_statements_from_prose() -> None:
    statements = [
        'rows = conn.execute(text("SELECT count(*) FROM journey_instances"))',
        'q = "select seq from journey_events where instance_id = :i"',
        'q = """\n  update journey_instances\n  set status = :s"""',
        "# runs INSERT INTO server_runs (run_id) VALUES (:run_id) ON CONFLICT DO NOTHING",
        "'''Sends ``NOTIFY journeys_runs, '<run id>'`` when a run ends.'''",
        'await conn.execute("LISTEN journeys_runs")',
        'conn.execute("SELECT pg_advisory_xact_lock(:k)")',
        'ddl = "CREATE UNIQUE INDEX ix ON t (a)"',
        'conn.execute("PRAGMA journal_mode=WAL")',
    ]
    for statement in statements:
        assert sql_text(statement), statement
    prose = [
        "# Waiting requests wake on a change notice (in-process, or PostgreSQL NOTIFY from workers)",
        '"""The first ``LISTEN`` is in place when the context is entered."""',
        'message = f"update to area {area_id!r} breaks its state schema at {where}"',
        'ALLOWABLE = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")',
        '"""Select the steps to run; the user may delete from the list the ones to skip."""',
    ]
    for line in prose:
        assert not sql_text(line), line


def test_grep_finds_no_sql_text_outside_checkpoints() -> None:
    """Not only no query built (above): no statement written as text either, in code, comments or docstrings."""
    found = [
        f"{path.relative_to(ROOT)}:{line}"
        for module, path in sorted(_module_files().items())
        if not module.startswith("checkpoints")
        for line in sql_text(path.read_text())
    ]
    assert found == [], f"SQL text outside checkpoints/: {found}"
