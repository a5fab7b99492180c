"""Magnetic declination from the World Magnetic Model (``pygeomag``): magnetic headings to true ones.

A phone compass measures a heading from magnetic north (EXIF ``GPSImgDirectionRef`` = ``M``); the
chip grid is north-up in true (grid) north. The declination D (degrees, east positive) at the
photo's position and date turns one into the other: ``true = magnetic + D``.

The WMM coefficient sets ship with ``pygeomag``: WMM2010, WMM2015v2, WMM2020 and WMM2025, each
valid for five years from its epoch. A date inside 2010..2030 uses its own set; a date outside is
extrapolated from the nearest set (2010 before, 2025 after) and says so, because the error grows by
roughly 0.1 degree a year outside a model's life span.
"""
from __future__ import annotations

import datetime as _dt
import functools
from dataclasses import dataclass

FIRST_MODEL_YEAR, LAST_MODEL_YEAR = 2010, 2029  # the years pygeomag's coefficient sets cover


@dataclass(frozen=True)
class Declination:
    """Declination at one place and date: degrees east of true north, the model used, and a note when the
    date lies outside every model's life span (an extrapolation)."""

    degrees: float
    model: str
    note: str | None = None


@functools.lru_cache(maxsize=8)
def _model(year: int):
    from pygeomag import GeoMag

    return GeoMag(base_year=year)


def decimal_year(when: _dt.date) -> float:
    """A date as a decimal year (2024-07-02 -> about 2024.5), as the WMM takes it."""
    start = _dt.date(when.year, 1, 1)
    days = (_dt.date(when.year + 1, 1, 1) - start).days
    return when.year + (when - start).days / days


def magnetic_declination(lat: float, lon: float, when: _dt.date) -> Declination:
    """The WMM declination at (lat, lon) in EPSG:4326 degrees, at sea level, on ``when``."""
    year = min(max(when.year, FIRST_MODEL_YEAR), LAST_MODEL_YEAR)
    model = _model(year)
    t = decimal_year(when)
    start, end = model.life_span
    outside = not start <= t <= end
    result = model.calculate(glat=float(lat), glon=float(lon), alt=0.0, time=t, allow_date_outside_lifespan=outside)
    note = (f"{when.isoformat()} is outside the life span of every World Magnetic Model here "
            f"({FIRST_MODEL_YEAR}-{LAST_MODEL_YEAR + 1}); extrapolated from {model.model}") if outside else None
    return Declination(float(result.d), str(model.model), note)


def true_heading(magnetic_deg: float, declination: Declination) -> float:
    """A magnetic heading turned true (degrees clockwise from true north, in [0, 360))."""
    return (magnetic_deg + declination.degrees) % 360.0
