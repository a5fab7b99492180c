"""Which Qt attribute paths do not exist in PyQt6: run with a Python that has PyQt6 (the backend's .venv).

    python pyqt6_resolve.py < paths.json

stdin: a JSON list of [module, dotted_path], e.g. ["QtCore", "Qt.AlignmentFlag.AlignLeft"] or
["QtGui", "QAction"]; stdout: a JSON object {"pyqt6": VERSION, "missing": [[module, dotted_path, reason]]}.
Never imported by QGIS's Python: it only resolves names, it creates no QApplication.
"""
import importlib
import json
import sys


def resolve(module: str, path: str) -> str | None:
    """None when PyQt6.<module> has the dotted path, else why not."""
    try:
        obj = importlib.import_module(f"PyQt6.{module}")
    except ImportError as e:
        return f"PyQt6.{module} cannot be imported ({e})"
    walked = f"PyQt6.{module}"
    for part in path.split("."):
        if not hasattr(obj, part):
            return f"{walked} has no attribute {part!r}"
        obj = getattr(obj, part)
        walked += f".{part}"
    return None


def main() -> None:
    from PyQt6.QtCore import PYQT_VERSION_STR

    missing = []
    for module, path in json.load(sys.stdin):
        reason = resolve(module, path)
        if reason is not None:
            missing.append([module, path, reason])
    json.dump({"pyqt6": PYQT_VERSION_STR, "missing": missing}, sys.stdout)


if __name__ == "__main__":
    main()
