"""The library modules a Python file runs, read from its imports (nothing is imported).

The workflow declares them as the code inputs of each stage (with the stage's program): an
edit to a module changes their checksum and reruns exactly the stages that run it. Read from
the imports, the list cannot drift from them.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

LIBRARY = __name__.split(".")[0]
"""The package whose modules are followed (this one); its sources lie in ``src/``."""


@functools.cache
def library_files(path: str, root: str) -> list[str]:
    """The library files (paths relative to ``root``, sorted) that the Python file ``path``
    (relative to ``root``) runs through its imports, transitively: each imported module's file
    and the ``__init__.py`` of every package above it, which importing the module runs too."""
    found, todo = set(), [path]
    while todo:
        for name in _library_imports(todo.pop(), root):
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):
                file = _module_file(tuple(parts[:depth]), root)
                if file and file not in found:
                    found.add(file)
                    todo.append(file)
    return sorted(found)


@functools.cache
def _module_file(parts: tuple[str, ...], root: str) -> str | None:
    """The file under src/ of the module named ``parts`` (relative to ``root``), or None: the
    name is not a module (but a name imported from one)."""
    stem = Path("src", *parts)
    for candidate in (stem.with_suffix(".py"), stem / "__init__.py"):
        if (Path(root) / candidate).is_file():
            return candidate.as_posix()
    return None


@functools.cache
def _library_imports(path: str, root: str) -> list[str]:
    """Dotted names that the file ``path`` imports from the library, anywhere in it (at its
    top or inside a function); of ``from x import y``, both x and x.y (y may be a module)."""
    tree = ast.parse((Path(root) / path).read_bytes(), path)
    package = Path(path).parent.relative_to("src").parts if path.startswith("src/") else ()
    names = []
    for node in _statements(tree.body):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) + 1 - node.level] if node.level else ()
            source = ".".join([*base, *([node.module] if node.module else [])])
            names += [source, *(f"{source}.{alias.name}" for alias in node.names)]
    return [name for name in names if name.split(".")[0] == LIBRARY]


def _statements(body):
    """Every statement of ``body`` and, inside them, of their blocks (imports are statements:
    no expression needs a visit)."""
    for node in body:
        yield node
        for block in ("body", "orelse", "finalbody", "handlers", "cases"):
            yield from _statements(getattr(node, block, ()))
