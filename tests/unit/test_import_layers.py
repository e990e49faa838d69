"""The floors of the house: no import runs from a lower floor up to a higher one.

=====  ==========================  =============================================
floor  folders                     may import
=====  ==========================  =============================================
0      ``cohortstream`` (the core)  nothing of ours above it
1      ``producers``, ``consumers``  the core (not each other: edges and sinks are
                                    independent rooms)
2      ``streams``, ``export``      the core and floor 1
3      ``api``                      everything below
=====  ==========================  =============================================

The one exception is the command line (``cohortstream/cli*.py``): it is the entry point
of every floor, and imports the floors above the core lazily, inside its command
functions, so ``cohortstream --help`` needs none of them. A module-level import there is
still refused.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FLOORS = {"cohortstream": 0, "producers": 1, "consumers": 1, "streams": 2, "export": 2, "api": 3}
LATERAL_FORBIDDEN = {("producers", "consumers"), ("consumers", "producers")}


def _imports(tree: ast.Module) -> list[tuple[str, int, bool]]:
    """(top-level package, line, imported inside a function) for every absolute import."""
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((alias.name.split(".")[0], child.lineno, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.append((child.module.split(".")[0], child.lineno, in_function))
            visit(child, inner)

    visit(tree, False)
    return found


def _violations() -> list[str]:
    problems = []
    for package, floor in FLOORS.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT)
            is_cli = package == "cohortstream" and path.name.startswith("cli")
            for target, line, lazy in _imports(ast.parse(path.read_text(), str(path))):
                if target not in FLOORS or target == package:
                    continue
                if is_cli and lazy:
                    continue
                if FLOORS[target] > floor:
                    problems.append(f"{relative}:{line} imports {target} (floor {FLOORS[target]} > {floor})")
                elif (package, target) in LATERAL_FORBIDDEN:
                    problems.append(f"{relative}:{line} imports {target} (same floor, separate rooms)")
    return problems


def test_no_import_runs_up_a_floor() -> None:
    problems = _violations()
    assert not problems, "imports against the floors:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("import api.app\n", [("api", 1, False)]),
        ("def f():\n    from streams import worker\n", [("streams", 2, True)]),
        ("from . import x\n", []),
    ],
)
def test_the_import_reader_sees_lazy_and_module_level_imports(
    source: str, expected: list[tuple[str, int, bool]]
) -> None:
    assert _imports(ast.parse(source)) == expected
