"""How SAIG results look on the map: candidates by rank, heatmaps as a pseudocolour ramp, EXIF positions.

Main thread only (these touch layers); used by the dock after a run.
"""
from __future__ import annotations

from qgis.core import (
    QgsColorRampShader,
    QgsGradientColorRamp,
    QgsGraduatedSymbolRenderer,
    QgsMarkerSymbol,
    QgsPalLayerSettings,
    QgsProperty,
    QgsRasterBandStats,
    QgsRasterLayer,
    QgsRasterShader,
    QgsRendererRange,
    QgsSingleBandPseudoColorRenderer,
    QgsStyle,
    QgsSymbolLayer,
    QgsTextBufferSettings,
    QgsTextFormat,
    QgsVectorLayer,
    QgsVectorLayerSimpleLabeling,
)
from qgis.PyQt.QtGui import QColor, QFont

#: (lowest rank, highest rank, label, colour, marker size in mm)
RANK_CLASSES = (
    (1, 1, "Best (rank 1)", "#d7191c", 5.0),
    (2, 3, "Rank 2-3", "#fdae61", 3.8),
    (4, 10, "Rank 4-10", "#ffffbf", 3.0),
    (11, 100000, "Rank > 10", "#abd9e9", 2.2),
)
HEATMAP_OPACITY = 0.5
HEATMAP_RAMP = "Magma"


def style_candidates(layer: QgsVectorLayer) -> None:
    """Graduated by rank (rank 1 biggest, red) and labelled with the rank."""
    ranges = []
    for low, high, label, colour, size in RANK_CLASSES:
        symbol = QgsMarkerSymbol.createSimple({
            "name": "circle", "color": colour, "size": str(size),
            "outline_color": "#202020", "outline_width": "0.4"})
        ranges.append(QgsRendererRange(low - 0.5, high + 0.5, symbol, label))
    renderer = QgsGraduatedSymbolRenderer("rank", ranges)
    layer.setRenderer(renderer)

    settings = QgsPalLayerSettings()
    settings.fieldName = "rank"
    settings.placement = QgsPalLayerSettings.Placement.AroundPoint
    settings.dist = 1.0
    text = QgsTextFormat()
    text.setFont(QFont("Sans Serif", 9, QFont.Weight.Bold))
    text.setSize(9)
    buffer = QgsTextBufferSettings()
    buffer.setEnabled(True)
    buffer.setSize(1.0)
    buffer.setColor(QColor("white"))
    text.setBuffer(buffer)
    settings.setFormat(text)
    layer.setLabeling(QgsVectorLayerSimpleLabeling(settings))
    layer.setLabelsEnabled(True)
    layer.triggerRepaint()


def style_exif(layer: QgsVectorLayer) -> None:
    """A blue arrow pointing along the EXIF heading (a plain marker when there is none)."""
    symbol = QgsMarkerSymbol.createSimple({
        "name": "arrow", "color": "#2b83ba", "size": "6", "outline_color": "white", "outline_width": "0.4"})
    symbol.symbolLayer(0).setDataDefinedProperty(
        QgsSymbolLayer.Property.PropertyAngle, QgsProperty.fromExpression('coalesce("heading", 0)'))
    layer.renderer().setSymbol(symbol)
    layer.triggerRepaint()


def _ramp():
    ramp = QgsStyle.defaultStyle().colorRamp(HEATMAP_RAMP)
    return ramp if ramp is not None else QgsGradientColorRamp(QColor("#000004"), QColor("#fcfdbf"))


def style_heatmap(layer: QgsRasterLayer, classes: int = 8) -> None:
    """Interpolated pseudocolour over the score range, nodata transparent, semi-transparent overall."""
    provider = layer.dataProvider()
    provider.setUseSourceNoDataValue(1, True)
    stats = provider.bandStatistics(1, QgsRasterBandStats.Stats.Min | QgsRasterBandStats.Stats.Max)
    low, high = stats.minimumValue, stats.maximumValue
    if not high > low:
        high = low + 1e-6
    ramp = _ramp()
    items = []
    for i in range(classes):
        t = i / (classes - 1)
        value = low + t * (high - low)
        items.append(QgsColorRampShader.ColorRampItem(value, ramp.color(t), f"{value:.3f}"))
    shader_fn = QgsColorRampShader(low, high)
    shader_fn.setColorRampType(QgsColorRampShader.Type.Interpolated)
    shader_fn.setSourceColorRamp(ramp.clone())
    shader_fn.setColorRampItemList(items)
    shader = QgsRasterShader()
    shader.setRasterShaderFunction(shader_fn)
    renderer = QgsSingleBandPseudoColorRenderer(provider, 1, shader)
    renderer.setClassificationMin(low)
    renderer.setClassificationMax(high)
    renderer.setOpacity(HEATMAP_OPACITY)
    layer.setRenderer(renderer)
    layer.triggerRepaint()
