"""tiling: the geospatial side of SAIG Geolocate.

Orthophotos to georeferenced chips on a metric grid (:mod:`tiling.grid`, :mod:`tiling.chips`,
:mod:`tiling.manifest`), the reference index (:mod:`tiling.index`, :mod:`tiling.search`), ground
photos (:mod:`tiling.photos`), ``locate`` and heatmaps (:mod:`tiling.locate`, :mod:`tiling.heatmap`),
and their CLI commands (:mod:`saig_cli.geo`). Heavy dependencies are imported by the modules, not here.
"""
