"""No import cycle inside a package: every module can be read (and imported) after the ones it uses.

Function-level imports count too, so a cycle cannot hide behind a lazy import.
"""

import grimp
import pytest


def cycles(package: str) -> list[tuple[str, str]]:
    """Pairs (a, b) where a imports b directly and b leads back to a."""
    graph = grimp.build_graph(package)
    return sorted(
        (m, n)
        for m in graph.modules
        for n in graph.find_modules_directly_imported_by(m)
        if n.startswith(f"{package}.") and graph.find_shortest_chain(importer=n, imported=m)
    )


@pytest.mark.parametrize("package", ["agent", "tools", "memory", "server"])
def test_no_import_cycle_inside(package):
    assert cycles(package) == []
