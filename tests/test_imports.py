"""The package's layers import downwards only: a module never imports one of a layer above it
(read from the source with ast, imports inside functions included)."""
import ast
import os

import fewshot

PACKAGE = os.path.dirname(fewshot.__file__)
# lowest first; a unit is a top-level module or sub-package of fewshot
LAYERS = [
    {"errors"},
    {"options", "registry", "_io", "_malloc", "_l2l"},
    {"config", "emd", "data"},
    {"models"},
    {"viz"},
    {"engine"},
    {"api"},
    {"cli"},
    {"demo"},                               # make demo: runs the command lines
    {""},                                   # the package's __init__: the public face
]
RANK = {unit: k for k, layer in enumerate(LAYERS) for unit in layer}


def _imports():
    """(importing unit, imported unit, file, line) for every import of a fewshot module."""
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            parts = os.path.relpath(path, PACKAGE)[:-3].split(os.sep)
            package = parts[:-1] if name != "__init__.py" else parts[:-1]
            unit = parts[0] if parts[0] != "__init__" else ""
            for node in ast.walk(ast.parse(open(path).read())):
                targets = []
                if isinstance(node, ast.ImportFrom) and node.level:
                    base = package[:len(package) - node.level + 1]
                    module = base + (node.module.split(".") if node.module else [])
                    targets = [module] if node.module else [module + [a.name] for a in node.names]
                elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fewshot"):
                    targets = [node.module.split(".")[1:]]
                elif isinstance(node, ast.Import):
                    targets = [a.name.split(".")[1:] for a in node.names if a.name.startswith("fewshot")]
                for t in targets:
                    yield unit, (t[0] if t else ""), os.path.relpath(path, PACKAGE), node.lineno


def test_every_unit_has_a_layer():
    units = {u for u, *_ in _imports()} | {t for _, t, *_ in _imports()}
    assert units <= set(RANK), sorted(units - set(RANK))


def test_no_import_runs_upwards():
    upward = [f"{file}:{line}: {unit or 'fewshot'} imports {target or 'fewshot'}"
              for unit, target, file, line in _imports() if unit != target and RANK[target] >= RANK[unit]]
    assert not upward, upward
    found = {(u, t) for u, t, *_ in _imports()}
    assert ("engine", "models") in found and ("api", "engine") in found      # the walk sees imports
