"""The house rules of `clipsift/`, checked on the source (docs/architecture.md draws them).

Each package has a layer; a module may import its own package and packages of lower
layers only, so there is no import circle between packages, nothing imports the CLI, and
the server does not either. Imports inside functions and under TYPE_CHECKING count too.
Only `clipsift.index` talks to its store: other packages import `clipsift.index`,
`clipsift.index.index` (`Index`), `clipsift.index.query` (the query language) and
`clipsift.index.export`, and never reach for an `Index`'s `.store`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "clipsift"

#: lower layers first; a package imports only packages of a lower layer (and itself)
LAYERS: dict[str, int] = {
    "errors": 0,
    "inputs": 1, "htmlpage": 1,
    "models": 2,
    "engines": 3,
    "zeroshot": 4, "embed": 4, "index": 4, "train": 4,
    "evaluation": 5, "sift": 5,
    "server": 6,
    "cli": 7,
}
#: what packages outside clipsift/index may import from it
INDEX_DOORS = {"clipsift.index", "clipsift.index.index", "clipsift.index.query",
               "clipsift.index.export"}


def _package(path: Path) -> str | None:
    """The package a source file belongs to ("index", "embed"...); None for the root
    `clipsift/__init__.py` and `__main__.py` (the lazy public facade and the entry point)."""
    rel = path.relative_to(PACKAGE)
    if len(rel.parts) == 1:
        return None if rel.stem in ("__init__", "__main__") else rel.stem
    return rel.parts[0]


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every `clipsift...` import in a file, wherever it stands."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names
                      if node.module == "clipsift"]
    return [(line, m) for line, m in found if m == "clipsift" or m.startswith("clipsift.")]


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "static" not in p.parts)


def _target(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] != "__version__" else None


def test_every_package_has_a_layer():
    packages = {_package(p) for p in _sources()} - {None}
    assert packages <= set(LAYERS), f"give {sorted(packages - set(LAYERS))} a layer here"


def test_packages_import_only_lower_layers():
    wrong = []
    for path in _sources():
        src = _package(path)
        if src is None:
            continue
        for line, module in _imports(path):
            dst = _target(module)
            if dst is None or dst == src:
                continue
            if dst not in LAYERS or LAYERS[dst] >= LAYERS[src]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({src}, layer "
                             f"{LAYERS[src]}) imports {module} (layer {LAYERS.get(dst)})")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_no_import_circle_between_packages():
    graph: dict[str, set[str]] = {}
    for path in _sources():
        src = _package(path)
        if src is not None:
            deps = {_target(m) for _, m in _imports(path)} - {None, src}
            graph.setdefault(src, set()).update(d for d in deps if d is not None)

    def reach(start: str) -> set[str]:
        seen, todo = set(), list(graph.get(start, ()))
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(graph.get(node, ()))
        return seen

    circles = sorted(p for p in graph if p in reach(p))
    assert not circles, f"packages in an import circle: {circles}"


def test_only_index_opens_the_store():
    wrong = []
    for path in _sources():
        if _package(path) == "index":
            continue
        where = path.relative_to(PACKAGE.parent)
        for line, module in _imports(path):
            if module.startswith("clipsift.index") and module not in INDEX_DOORS:
                wrong.append(f"{where}:{line} imports {module}")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "store":
                wrong.append(f"{where}:{node.lineno} reads .store (use an Index method)")
    assert not wrong, "only Index talks to the store:\n" + "\n".join(wrong)


@pytest.mark.parametrize(("source", "imported", "allowed"), [
    ("inputs", "engines", False), ("index", "server", False), ("index", "sift", False),
    ("server", "cli", False), ("sift", "index", True), ("cli", "server", True),
])
def test_the_layer_table_says_what_the_rules_say(source, imported, allowed):
    assert (LAYERS[imported] < LAYERS[source]) is allowed
