"""No import cycle inside a package: every module can be read (and imported) after the ones it uses.

Function-level imports count too, so a cycle cannot hide behind a lazy import. So do packages: importing
`server.db.pool` first runs `server/db/__init__.py`, so a module that imports it imports every module that
package's `__init__` imports, and a cycle can run through there (`server.runs.events` once could not be the
first module a program imported, for that reason).
"""

import grimp
import pytest


def _ancestors(module: str, package: str) -> list[str]:
    """The packages inside `package` whose __init__ runs before `module` (not `package` itself)."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))] if module.startswith(f"{package}.") else []


def cycles(package: str) -> list[tuple[str, str]]:
    """Pairs (a, b) where importing a imports b directly (or b is a package whose __init__ runs first) and b
    leads back to a."""
    graph = grimp.build_graph(package)
    edges: dict[str, set[str]] = {}
    for m in graph.modules:
        out = edges.setdefault(m, set())
        for n in graph.find_modules_directly_imported_by(m):
            if not n.startswith(f"{package}."):
                continue
            out.add(n)
            # A package that contains m is already being imported when m runs: no new edge through it.
            out.update(a for a in _ancestors(n, package) if a != m and a not in _ancestors(m, package))

    def reaches(start: str, goal: str) -> bool:
        seen, todo = {start}, [start]
        while todo:
            for n in edges.get(todo.pop(), ()):
                if n == goal:
                    return True
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        return False

    return sorted((m, n) for m, out in edges.items() for n in out if reaches(n, m))


@pytest.mark.parametrize("package", ["agent", "tools", "memory", "server"])
def test_no_import_cycle_inside(package):
    assert cycles(package) == []
