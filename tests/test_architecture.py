"""The codebase's shape, as a specification: imports point down the layers, functions stay short.

Layers, top to bottom: ``saig_cli`` (the command line) → ``synthetic_world`` → ``tiling`` →
``saig_core`` (the engine, no GIS imports). The QGIS plugin stands apart: it runs the CLI as a
subprocess and imports none of them.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = {"saig_core": 0, "tiling": 1, "synthetic_world": 2, "saig_cli": 3}
PLUGIN = "qgis_saig_plugin"
GIS_LIBRARIES = {"rasterio", "pyproj", "geopandas", "shapely", "fiona", "pyogrio", "mercantile", "faiss", "osgeo"}
MAX_FUNCTION_LINES = 80


def product_modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, name: str, is_package: bool = False) -> set[str]:
    """Every module a source names: imports (relative ones resolved) and ``importlib`` strings."""
    found: set[str] = set()
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                found.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                found.add(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return found


def upward_imports(path: Path) -> list[str]:
    name = module_name(path)
    own = LAYERS[name.split(".")[0]]
    targets = imported_modules(path.read_text(), name, path.name == "__init__.py")
    return sorted(t for t in targets if LAYERS.get(t.split(".")[0], -1) > own)


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_imports_point_down_the_layers(package):
    offences = {module_name(p): up for p in product_modules(package) if (up := upward_imports(p))}
    assert not offences, f"upward imports (allowed: saig_cli → synthetic_world → tiling → saig_core): {offences}"


def test_the_engine_has_no_gis_imports():
    offences = {}
    for path in product_modules("saig_core"):
        gis = {m for m in imported_modules(path.read_text(), module_name(path)) if m.split(".")[0] in GIS_LIBRARIES}
        if gis:
            offences[module_name(path)] = sorted(gis)
    assert not offences


def test_the_plugin_imports_no_backend_package():
    offences = {}
    for path in product_modules(PLUGIN):
        backend = {m for m in imported_modules(path.read_text(), module_name(path))
                   if m.split(".")[0] in LAYERS or m.split(".")[0] in GIS_LIBRARIES | {"torch", "numpy"}}
        if backend:
            offences[module_name(path)] = sorted(backend)
    assert not offences


def test_the_import_walker_sees_every_form_of_import():
    source = ("import tiling.chips\nfrom saig_cli.main import main\nfrom ..geo import x\n"
              "import importlib\nimportlib.import_module('synthetic_world.demo')\n__import__('faiss')\n")
    assert imported_modules(source, "saig_cli.sub.module") == {
        "tiling.chips", "saig_cli.main", "saig_cli.geo", "importlib", "synthetic_world.demo", "faiss"}


def test_an_upward_import_is_caught(tmp_path, monkeypatch):
    fake = tmp_path / "saig_core" / "bad.py"
    fake.parent.mkdir()
    fake.write_text("def f():\n    from tiling.chips import ChipParams\n    return ChipParams\n")
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    assert upward_imports(fake) == ["tiling.chips"]


def long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    return [f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]


def test_no_product_function_is_longer_than_80_lines():
    offences = [f for package in [*LAYERS, PLUGIN] for p in product_modules(package) for f in long_functions(p)]
    assert not offences, "split these into named steps:\n" + "\n".join(offences)
