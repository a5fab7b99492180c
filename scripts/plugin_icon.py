#!/usr/bin/env python3
"""Draw the plugin icon (qgis_saig_plugin/icon.png) with Qt: an aerial tile, a camera pin, a ranking ring.

Run with QGIS's Python (it has PyQt5): /usr/bin/python3 scripts/plugin_icon.py
"""
import sys
from pathlib import Path

from PyQt5.QtCore import QPointF, QRectF, Qt
from PyQt5.QtGui import QBrush, QColor, QGuiApplication, QImage, QPainter, QPainterPath, QPen

OUT = Path(__file__).resolve().parents[1] / "qgis_saig_plugin" / "icon.png"


def draw(size: int = 64) -> QImage:
    image = QImage(size, size, QImage.Format_ARGB32)
    image.fill(Qt.transparent)
    p = QPainter(image)
    p.setRenderHint(QPainter.Antialiasing)
    s = size / 64.0
    # aerial tile: a green square with field stripes and a road
    p.setPen(QPen(QColor("#1b4d2e"), 2 * s))
    p.setBrush(QColor("#5d9c59"))
    p.drawRoundedRect(QRectF(4 * s, 14 * s, 46 * s, 46 * s), 4 * s, 4 * s)
    p.setPen(Qt.NoPen)
    p.setBrush(QColor("#a7c957"))
    p.drawRect(QRectF(8 * s, 18 * s, 16 * s, 18 * s))
    p.setBrush(QColor("#dda15e"))
    p.drawRect(QRectF(28 * s, 40 * s, 18 * s, 16 * s))
    p.setPen(QPen(QColor("#f2e8cf"), 3 * s))
    p.drawLine(QPointF(6 * s, 46 * s), QPointF(48 * s, 24 * s))
    # ranking rings around the best match
    for radius, alpha in ((14, 90), (9, 160)):
        p.setPen(QPen(QColor(215, 25, 28, alpha), 2 * s))
        p.setBrush(Qt.NoBrush)
        p.drawEllipse(QPointF(27 * s, 37 * s), radius * s, radius * s)
    # location pin holding a camera
    pin = QPainterPath()
    cx, cy, r = 44 * s, 18 * s, 14 * s
    pin.moveTo(cx, cy + 26 * s)
    pin.cubicTo(cx - 6 * s, cy + 14 * s, cx - r, cy + 8 * s, cx - r, cy)
    pin.arcTo(QRectF(cx - r, cy - r, 2 * r, 2 * r), 180, -180)
    pin.cubicTo(cx + r, cy + 8 * s, cx + 6 * s, cy + 14 * s, cx, cy + 26 * s)
    p.setPen(QPen(QColor("#7f0000"), 1.5 * s))
    p.setBrush(QBrush(QColor("#d7191c")))
    p.drawPath(pin)
    p.setPen(Qt.NoPen)
    p.setBrush(QColor("white"))
    p.drawRoundedRect(QRectF(cx - 8 * s, cy - 5 * s, 16 * s, 11 * s), 2 * s, 2 * s)
    p.drawRect(QRectF(cx - 3 * s, cy - 8 * s, 6 * s, 3 * s))
    p.setBrush(QColor("#d7191c"))
    p.drawEllipse(QPointF(cx, cy + 0.5 * s), 3.5 * s, 3.5 * s)
    p.end()
    return image


if __name__ == "__main__":
    app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1] + ["-platform", "offscreen"])
    if not draw(64).save(str(OUT)):
        sys.exit(f"could not write {OUT}")
    print(OUT)
