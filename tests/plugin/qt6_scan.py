"""A static scan of plugin source for Qt6 (QGIS 4) readiness, shared by the Qt6 tests.

It collects, per source file:

* every Qt name imported through ``qgis.PyQt`` and every attribute path rooted at one
  (``Qt.AlignmentFlag.AlignLeft``, ``QAbstractItemView.SelectionBehavior.SelectRows`` ...), to be
  resolved against PyQt6 itself by ``pyqt6_resolve.py``;
* Qt5-only idioms that a name lookup cannot see: ``exec_()``, ``QRegExp``, ``QDesktopWidget``,
  ``QFontMetrics.width()``, overloaded-signal indexing (``activated[str]``), direct PyQt5/PyQt6
  imports (bypassing ``qgis.PyQt``);
* attribute paths rooted at QGIS classes (``qgis.core``/``qgis.gui``), so the running QGIS can tell
  unscoped enum members (``QgsFileWidget.GetFile``) from scoped ones (``QgsFileWidget.StorageMode.GetFile``):
  Qt6 builds of QGIS only have the scoped form.

A ``from qgis.PyQt.QtWidgets import QAction`` is accepted only as the ``except ImportError`` fallback
of a ``try`` that first imports the same name from its Qt6 home (``qgis.PyQt.QtGui``).
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

QT_PREFIX = "qgis.PyQt."
QGIS_MODULES = ("qgis.core", "qgis.gui")
QT5_ONLY_NAMES = {
    "QRegExp": "QRegExp is gone in Qt6: use QRegularExpression",
    "QRegExpValidator": "QRegExpValidator is gone in Qt6: use QRegularExpressionValidator",
    "QDesktopWidget": "QDesktopWidget is gone in Qt6: use QScreen (QGuiApplication.primaryScreen())",
}


@dataclass
class Scan:
    """What one or more files use: Qt paths to resolve in PyQt6, QGIS paths, and Qt5-only idioms."""

    qt_paths: list[tuple[str, str, str]] = field(default_factory=list)  # (module, dotted path, "file:line")
    qgis_paths: list[tuple[str, str, str]] = field(default_factory=list)  # (module, dotted path, "file:line")
    findings: list[str] = field(default_factory=list)  # "file:line: message"

    def extend(self, other: Scan) -> None:
        """Add another file's scan."""
        self.qt_paths += other.qt_paths
        self.qgis_paths += other.qgis_paths
        self.findings += other.findings


def _is_qt6_fallback(node: ast.ImportFrom, parents: dict) -> bool:
    """Whether this import is the ``except ImportError`` branch after a try importing the same names."""
    handler = parents.get(node)
    try_node = parents.get(handler)
    if not isinstance(handler, ast.ExceptHandler) or not isinstance(try_node, ast.Try):
        return False
    if not (isinstance(handler.type, ast.Name) and handler.type.id in ("ImportError", "ModuleNotFoundError")):
        return False
    names = {alias.name for alias in node.names}
    for stmt in try_node.body:
        if isinstance(stmt, ast.ImportFrom) and (stmt.module or "").startswith(QT_PREFIX) \
                and names <= {alias.name for alias in stmt.names}:
            return True
    return False


def _chain(node: ast.Attribute) -> tuple[str, list[str]] | None:
    """('Qt', ['AlignmentFlag', 'AlignLeft']) for ``Qt.AlignmentFlag.AlignLeft``; None unless rooted at a name."""
    attrs = []
    current: ast.expr = node
    while isinstance(current, ast.Attribute):
        attrs.append(current.attr)
        current = current.value
    if not isinstance(current, ast.Name):
        return None
    return current.id, attrs[::-1]


def _is_font_metrics(node: ast.expr) -> bool:
    """``x.fontMetrics()`` or ``QFontMetrics(...)``/``QFontMetricsF(...)``."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if isinstance(func, ast.Attribute) and func.attr == "fontMetrics":
        return True
    return isinstance(func, ast.Name) and func.id in ("QFontMetrics", "QFontMetricsF")


def _imports(tree: ast.AST, parents: dict, where, scan: Scan) -> tuple[dict, dict]:
    """Qt names (name -> module) and QGIS names (name -> module) imported by a file; records import findings."""
    qt_names: dict[str, str] = {}
    qgis_names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ("PyQt5", "PyQt6"):
                    scan.findings.append(f"{where(node)}: import {alias.name}: import Qt through qgis.PyQt")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            module = node.module
            if module.split(".")[0] in ("PyQt5", "PyQt6"):
                scan.findings.append(f"{where(node)}: from {module} import ...: import Qt through qgis.PyQt")
            elif module.startswith(QT_PREFIX):
                qt_module = module[len(QT_PREFIX):]
                fallback = _is_qt6_fallback(node, parents)
                for alias in node.names:
                    qt_names.setdefault(alias.asname or alias.name, qt_module)
                    if not fallback:
                        scan.qt_paths.append((qt_module, alias.name, where(node)))
            elif module in QGIS_MODULES:
                for alias in node.names:
                    qgis_names[alias.asname or alias.name] = module
    return qt_names, qgis_names


def scan_source(source: str, filename: str) -> Scan:
    """Scan one file's source (see the module docstring)."""
    tree = ast.parse(source, filename)
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}

    def where(node: ast.AST) -> str:
        return f"{filename}:{getattr(node, 'lineno', '?')}"

    scan = Scan()
    qt_names, qgis_names = _imports(tree, parents, where, scan)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            if node.attr == "exec_":
                scan.findings.append(f"{where(node)}: exec_() is gone in PyQt6: use exec()")
            if node.attr == "width" and _is_font_metrics(node.value):
                scan.findings.append(f"{where(node)}: QFontMetrics.width() is gone in Qt6: use horizontalAdvance()")
            if isinstance(parents.get(node), ast.Attribute):
                continue  # not the outermost attribute of its chain
            chain = _chain(node)
            if chain is None:
                continue
            root, attrs = chain
            if root in qt_names:
                scan.qt_paths.append((qt_names[root], ".".join([root, *attrs]), where(node)))
            elif root in qgis_names:
                scan.qgis_paths.append((qgis_names[root], ".".join([root, *attrs]), where(node)))
        elif isinstance(node, ast.Name) and node.id in QT5_ONLY_NAMES:
            scan.findings.append(f"{where(node)}: {QT5_ONLY_NAMES[node.id]}")
        elif isinstance(node, ast.alias) and node.name in QT5_ONLY_NAMES:
            scan.findings.append(f"{filename}: imports {node.name}: {QT5_ONLY_NAMES[node.name]}")
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) \
                and isinstance(node.slice, ast.Name) and node.slice.id in ("str", "int", "bool", "float"):
            scan.findings.append(f"{where(node)}: {node.value.attr}[{node.slice.id}]: PyQt6 has no overloaded-signal "
                                 "indexing; connect the signal itself")
    return scan


def scan_package(folder: Path) -> Scan:
    """Scan every ``.py`` file of a package folder (recursively)."""
    scan = Scan()
    for path in sorted(folder.rglob("*.py")):
        scan.extend(scan_source(path.read_text(encoding="utf-8"), str(path.relative_to(folder.parent))))
    return scan


def unscoped_qgis_enum(owner: object, member: str) -> str | None:
    """The enum's name when ``owner.member`` is an enum value reached without its enum (``QgsFileWidget.GetFile``).

    Evaluated in the running QGIS: the value's type is an enum type that is itself an attribute of
    ``owner`` under another name than ``member``.
    """
    value = getattr(owner, member, None)
    if value is None or isinstance(value, type) or callable(value):
        return None
    enum_type = type(value)
    if enum_type in (int, bool, float, str):
        return None
    name = enum_type.__name__
    if name != member and getattr(owner, name, None) is enum_type:
        return name
    return None
