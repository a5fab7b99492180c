"""Qt6 (QGIS 4) readiness from one code base: the plugin's source checked against PyQt6 itself.

Qt6 builds of QGIS load the plugin only with ``supportsQt6=yes``, and PyQt6 dropped the unscoped enums,
``exec_()``, ``QRegExp``, ``QDesktopWidget``, ``QFontMetrics.width()`` and moved ``QAction`` to QtGui.
Every Qt attribute path the plugin uses is resolved in a real PyQt6 (installed in the backend's
``.venv`` by the ``test`` extra; QGIS's own Python keeps PyQt5), and the same source runs here under
QGIS 3.22 with PyQt5 in every other plugin test.
"""
from __future__ import annotations

import configparser
import functools
import importlib
import json
import subprocess
from pathlib import Path

import pytest
from conftest import BACKEND_PYTHON, REPO
from qt6_scan import Scan, scan_package, scan_source, unscoped_qgis_enum

PACKAGE = REPO / "qgis_saig_plugin"
RESOLVER = Path(__file__).with_name("pyqt6_resolve.py")


def missing_in_pyqt6(paths) -> tuple[str, list]:
    """(PyQt6 version, [(module, path, reason)]) for the Qt attribute paths PyQt6 lacks."""
    request = sorted({(module, path) for module, path, _ in paths})
    proc = subprocess.run([str(BACKEND_PYTHON), str(RESOLVER)], input=json.dumps(request), capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "QT_QPA_PLATFORM": "offscreen"})
    if proc.returncode != 0:
        pytest.fail(f"PyQt6 is not usable in {BACKEND_PYTHON} (run `make venv`; the test extra installs it):\n"
                    f"{proc.stderr[-2000:]}")
    answer = json.loads(proc.stdout)
    return answer["pyqt6"], [tuple(m) for m in answer["missing"]]


def unscoped_qgis_enums(scan: Scan) -> list[str]:
    """'file:line: Class.Member (write Class.Enum.Member)' for every unscoped QGIS enum member used."""
    found = []
    for module, path, where in scan.qgis_paths:
        parts = path.split(".")
        owner = getattr(importlib.import_module(module), parts[0], None)
        for member in parts[1:]:
            if owner is None:
                break
            enum = unscoped_qgis_enum(owner, member)
            if enum is not None:
                found.append(f"{where}: {path} (write {owner.__name__}.{enum}.{member})")
            owner = getattr(owner, member, None)
    return found


@functools.lru_cache(maxsize=1)
def plugin_scan() -> Scan:
    return scan_package(PACKAGE)


def test_metadata_declares_qt6_support_and_keeps_qgis_322():
    meta = configparser.ConfigParser(interpolation=None)
    meta.read(REPO / "metadata.txt", encoding="utf-8")
    assert meta["general"]["supportsQt6"] == "yes"
    assert meta["general"]["qgisMinimumVersion"] == "3.22"


def test_every_qt_name_and_attribute_path_the_plugin_uses_exists_in_pyqt6():
    scan = plugin_scan()
    assert len(scan.qt_paths) > 40, "the scan found almost no Qt use: is it still reading the plugin?"
    version, missing = missing_in_pyqt6(scan.qt_paths)
    assert version.startswith("6.")
    where = {(m, p): w for m, p, w in scan.qt_paths}
    assert not missing, "\n".join(f"{where[(m, p)]}: {p} ({reason})" for m, p, reason in missing)


def test_the_plugin_has_no_qt5_only_idioms():
    assert not plugin_scan().findings, "\n".join(plugin_scan().findings)


def test_qgis_enums_are_written_fully_scoped():
    scan = plugin_scan()
    assert len(scan.qgis_paths) > 20
    assert not unscoped_qgis_enums(scan), "\n".join(unscoped_qgis_enums(scan))


QT5_ONLY_PLUGIN = '''
from PyQt5.QtCore import QTimer
from qgis.PyQt.QtCore import Qt, QVariant, QRegExp
from qgis.PyQt.QtGui import QFontMetrics
from qgis.PyQt.QtWidgets import QAction, QDialog, QDesktopWidget, QMessageBox
from qgis.gui import QgsFileWidget


def old(widget, combo, dialog):
    widget.setAlignment(Qt.AlignLeft)
    QMessageBox.question(widget, "t", "q", QMessageBox.Yes | QMessageBox.No)
    dialog.exec_()
    QFontMetrics(widget.font()).width("text")
    widget.fontMetrics().width("x")
    combo.activated[str].connect(print)
    QgsFileWidget().setStorageMode(QgsFileWidget.GetFile)
    return QVariant.String
'''

QT6_READY_PLUGIN = '''
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import QMessageBox
from qgis.gui import QgsFileWidget

try:
    from qgis.PyQt.QtGui import QAction
except ImportError:
    from qgis.PyQt.QtWidgets import QAction


def new(widget, dialog):
    widget.setAlignment(Qt.AlignmentFlag.AlignLeft)
    QMessageBox.question(widget, "t", "q", QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No)
    dialog.exec()
    QgsFileWidget().setStorageMode(QgsFileWidget.StorageMode.GetFile)
    return QAction("a")
'''


def test_the_scan_catches_qt5_only_code():
    scan = scan_source(QT5_ONLY_PLUGIN, "old.py")
    _, missing = missing_in_pyqt6(scan.qt_paths)
    assert {p for _, p, _ in missing} >= {"Qt.AlignLeft", "QMessageBox.Yes", "QMessageBox.No", "QVariant.String",
                                          "QAction", "QRegExp", "QDesktopWidget"}
    text = "\n".join(scan.findings)
    for idiom in ("import Qt through qgis.PyQt", "exec_()", "QRegExp", "QDesktopWidget", "horizontalAdvance",
                  "activated[str]"):
        assert idiom in text, idiom
    assert text.count("horizontalAdvance") == 2
    assert unscoped_qgis_enums(scan) == ["old.py:16: QgsFileWidget.GetFile (write QgsFileWidget.StorageMode.GetFile)"]


def test_the_scan_accepts_the_qt6_ready_forms():
    scan = scan_source(QT6_READY_PLUGIN, "new.py")
    _, missing = missing_in_pyqt6(scan.qt_paths)
    assert not missing and not scan.findings and not unscoped_qgis_enums(scan)
    assert ("QtGui", "QAction", "new.py:7") in scan.qt_paths  # the Qt6 home is checked, the Qt5 fallback is not
    assert ("QtWidgets", "QAction") not in {(module, path) for module, path, _ in scan.qt_paths}
