"""Drawing a :class:`~synthetic_world.world.World`: orthophoto, 360° panoramas, limited-FoV photos.

Pure numpy. Conventions (all angles in degrees unless a name says radians):

* azimuth / heading: clockwise from grid north (the world's +y axis);
* panorama: equirectangular, column ``c`` of ``W`` covers azimuths
  ``[azimuth0 + 360*c/W, azimuth0 + 360*(c+1)/W)``: with ``azimuth0 = 0`` (north-aligned, the
  default) column 0 looks north, column ``W/4`` east, the centre column south; rows span elevation
  ``+elev_top`` (row 0) to ``elev_bottom``. Its *heading* in EXIF/truth is, as phones and Photo
  Sphere write it, the azimuth of the centre column: ``azimuth0 + 180``;
* photo: a pinhole camera, level, looking at ``heading``; horizontal field of view ``hfov_deg``.

Ground views are ray-marched through the height field: each image column is a vertical plane at
one azimuth; the DSM is sampled along it and the running maximum of the elevation angle gives, for
every pixel row, the first sample the ray hits (occlusion). What is hit decides the colour: a
facade (with window bands every 3 m), a tree crown, or a top surface (coloured like the
orthophoto, so both views agree); distance adds haze, rays that hit nothing see sky.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from synthetic_world.world import BUILDING, TREE, World


@dataclass(frozen=True)
class PanoramaSpec:
    """An equirectangular 360° view: image size, the elevation span of its rows, eye height, and how
    far (and in what steps) its rays are marched."""

    height: int = 128
    width: int = 512
    elev_top_deg: float = 30.0
    elev_bottom_deg: float = -30.0
    eye_height_m: float = 2.0
    max_range_m: float = 160.0
    step_m: float = 0.5


@dataclass(frozen=True)
class PhotoSpec:
    """A level 16:9 phone photo; 90° wide it spans about +-29° of elevation, like a panorama's rows."""

    width: int = 512
    height: int = 288
    hfov_deg: float = 90.0
    eye_height_m: float = 1.7
    max_range_m: float = 160.0
    step_m: float = 0.5

    @property
    def focal_35mm(self) -> int:
        """35 mm-equivalent focal length of this field of view, on the frame diagonal as CIPA DC-008 defines it
        (the photo's width is its share of the 43.27 mm diagonal: 37.7 mm for 16:9), as phones write it."""
        width_mm = math.hypot(36.0, 24.0) * self.width / math.hypot(self.width, self.height)
        return int(round(width_mm / 2 / math.tan(math.radians(self.hfov_deg) / 2)))


def orthophoto(world: World) -> np.ndarray:
    """(H, W, 3) uint8 true orthophoto: albedo x hill-shade x cast shadows of the seed's sun."""
    light = _sunlight(world)
    return np.clip(world.albedo.astype(np.float32) * light[..., None], 0, 255).astype(np.uint8)


def _sunlight(world: World) -> np.ndarray:
    """Per-pixel light factor: ambient + Lambert on the DSM's normals, darkened in cast shadow."""
    res = world.res
    dsm = world.dsm
    g_row, g_col = np.gradient(dsm, res)
    sun = world.style.sun_vector
    # Normal (-dz/dx, -dz/dy, 1) with dz/dy = -dz/drow (rows run south).
    lambert = (-g_col * sun[0] + g_row * sun[1] + sun[2]) / np.sqrt(g_col ** 2 + g_row ** 2 + 1.0)
    light = 0.4 + 0.6 * np.clip(lambert, 0, None) / sun[2]
    light *= np.where(_cast_shadow(world), np.float32(0.55), np.float32(1.0))
    return np.clip(light, 0.15, 1.5).astype(np.float32)


def _cast_shadow(world: World) -> np.ndarray:
    """Pixels that something taller hides from the sun (marching towards the sun over the DSM)."""
    dsm = world.dsm
    n_rows, n_cols = dsm.shape
    res = world.res
    az = math.radians(world.style.sun_azimuth_deg)
    tan_el = math.tan(math.radians(world.style.sun_elevation_deg))
    relief = float(np.percentile(dsm, 99.9) - dsm.min())
    reach = min(relief / tan_el, 150.0)
    dists = np.concatenate([np.arange(res, min(8.0, reach) + 1e-6, res), np.arange(9.0, reach + 1e-6, 1.0)])
    shadow = np.zeros(dsm.shape, bool)
    for d in dists:
        dc = int(round(d * math.sin(az) / res))
        dr = int(round(-d * math.cos(az) / res))
        if abs(dc) >= n_cols or abs(dr) >= n_rows:
            break
        dst = (slice(max(0, -dr), n_rows - max(0, dr)), slice(max(0, -dc), n_cols - max(0, dc)))
        src = (slice(max(0, dr), n_rows + min(0, dr)), slice(max(0, dc), n_cols + min(0, dc)))
        shadow[dst] |= dsm[src] > dsm[dst] + np.float32(d * tan_el + 0.2)
    return shadow


class Renderer:
    """Renders views of one world; holds the orthophoto so ground surfaces match it exactly."""

    def __init__(self, world: World, ortho: np.ndarray | None = None) -> None:
        self.world = world
        self.ortho = orthophoto(world) if ortho is None else ortho
        a = math.radians(world.grid_angle_deg)
        self._axes = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]], np.float32)
        self._sun = world.style.sun_vector.astype(np.float32)

    # -- aerial ---------------------------------------------------------------------------------
    def aerial_chip(self, x: float, y: float, size_m: float) -> np.ndarray:
        """North-up orthophoto crop of ``size_m`` centred on grid-CRS (x, y), at the world's
        resolution (snapped to whole pixels); outside the world is black."""
        w = self.world
        px = int(round(size_m / w.res))
        col, row = w.to_pixel(x, y)
        c0, r0 = int(round(float(col) - px / 2)), int(round(float(row) - px / 2))
        out = np.zeros((px, px, 3), np.uint8)
        h, wd = w.shape
        rs, re = max(r0, 0), min(r0 + px, h)
        cs, ce = max(c0, 0), min(c0 + px, wd)
        if rs < re and cs < ce:
            out[rs - r0:re - r0, cs - c0:ce - c0] = self.ortho[rs:re, cs:ce]
        return out

    # -- ground views ---------------------------------------------------------------------------
    def panorama(self, x: float, y: float, azimuth0_deg: float = 0.0, spec: PanoramaSpec = PanoramaSpec(),
                 rng: np.random.Generator | None = None) -> np.ndarray:
        """(H, W, 3) uint8 equirectangular 360° view from grid-CRS (x, y) at eye height; column 0
        starts at ``azimuth0_deg`` (0 = north) and azimuth grows clockwise to the right."""
        az = np.radians(azimuth0_deg + 360.0 * np.arange(spec.width) / spec.width + 180.0 / spec.width)
        rows = (np.arange(spec.height) + 0.5) / spec.height
        elev = np.radians(spec.elev_top_deg + rows * (spec.elev_bottom_deg - spec.elev_top_deg))
        elev = np.broadcast_to(elev[:, None], (spec.height, spec.width))
        return self._view(x, y, az, elev, spec.eye_height_m, spec.max_range_m, spec.step_m, rng)

    def photo(self, x: float, y: float, heading_deg: float, spec: PhotoSpec = PhotoSpec(),
              rng: np.random.Generator | None = None) -> np.ndarray:
        """(H, W, 3) uint8 level pinhole photo from grid-CRS (x, y) looking at ``heading_deg``."""
        f = (spec.width / 2) / math.tan(math.radians(spec.hfov_deg) / 2)
        xc = np.arange(spec.width) + 0.5 - spec.width / 2
        yc = np.arange(spec.height) + 0.5 - spec.height / 2
        az = np.radians(heading_deg) + np.arctan2(xc, f)
        elev = np.arctan2(-yc[:, None], np.sqrt(f * f + xc[None, :] ** 2))
        return self._view(x, y, az, elev, spec.eye_height_m, spec.max_range_m, spec.step_m, rng)

    def _view(self, x, y, az, elev, eye_height, max_range, step, rng) -> np.ndarray:
        w = self.world
        rng = rng if rng is not None else np.random.default_rng(0)
        n_rows, n_cols = w.shape
        height, width = elev.shape
        radii = np.arange(step, max_range + 1e-6, step, dtype=np.float32)
        k_steps = len(radii)
        sa, ca = np.sin(az).astype(np.float32), np.cos(az).astype(np.float32)
        px = np.float32(x) + radii[:, None] * sa[None, :]          # (K, W) east
        py = np.float32(y) + radii[:, None] * ca[None, :]          # (K, W) north
        col = np.floor((px - w.west) / w.res).astype(np.int64)
        row = np.floor((w.north - py) / w.res).astype(np.int64)
        inside = (col >= 0) & (col < n_cols) & (row >= 0) & (row < n_rows)
        col_c, row_c = np.clip(col, 0, n_cols - 1), np.clip(row, 0, n_rows - 1)
        eye_z = np.float32(w.ground_elevation(x, y) + eye_height)
        top = w.dsm[row_c, col_c]
        angle = np.where(inside, np.arctan2(top - eye_z, radii[:, None]), np.float32(-4.0))
        horizon = np.maximum.accumulate(angle, axis=0)              # running max: occlusion

        # First sample whose running-max angle reaches each pixel's elevation, all columns at once:
        # offset each column's monotone sequence so the concatenation stays sorted.
        offs = 10.0 * np.arange(width)
        seq = (horizon.T.astype(np.float64) + offs[:, None]).ravel()
        k = np.searchsorted(seq, (elev + offs[None, :]).ravel(), side="left").reshape(height, width)
        k -= (np.arange(width) * k_steps)[None, :]
        hit = k < k_steps
        k = np.minimum(k, k_steps - 1)
        cols = np.broadcast_to(np.arange(width), (height, width))
        hr, hc = row_c[k, cols], col_c[k, cols]
        dist = radii[k]
        z_ray = eye_z + dist * np.tan(elev).astype(np.float32)
        kind = w.kind[hr, hc]
        below_top = z_ray < w.dsm[hr, hc] - 0.25

        colour = self.ortho[hr, hc].astype(np.float32)
        facade = hit & below_top & (kind == BUILDING)
        if facade.any():
            colour[facade] = self._facade(w, facade, hr, hc, z_ray, px[k, cols], py[k, cols], sa, ca)
        crown = hit & below_top & (kind == TREE)
        if crown.any():
            grain = rng.uniform(0.7, 1.1, int(crown.sum())).astype(np.float32)
            colour[crown] = w.side[hr[crown], hc[crown]].astype(np.float32) * grain[:, None] * 0.8

        haze = np.asarray(w.style.haze, np.float32)
        t = (1.0 - np.exp(-dist / w.style.visibility_m))[..., None]
        colour = colour * (1 - t) + haze * t
        sky = self._sky(az, elev, rng)
        far_ground = haze * 0.85
        colour = np.where(hit[..., None], colour, np.where((elev >= 0)[..., None], sky, far_ground))

        gain = rng.uniform(0.85, 1.15) * rng.uniform(0.95, 1.05, 3).astype(np.float32)
        colour = colour * gain + rng.normal(0, 3.0, colour.shape).astype(np.float32)
        return np.clip(colour, 0, 255).astype(np.uint8)

    def _facade(self, w: World, mask, hr, hc, z_ray, px, py, sa, ca) -> np.ndarray:
        """Facade colour at hits: the wall faces the ray along the grid axis it mostly travels on."""
        cols = np.nonzero(mask)[1]
        d = np.stack([sa[cols], ca[cols]], axis=1)                 # ray direction (east, north)
        along = d @ self._axes.T                                    # components on the grid axes
        use_u = np.abs(along[:, 0]) >= np.abs(along[:, 1])
        normal = np.where(use_u[:, None], -np.sign(along[:, [0]]) * self._axes[0],
                          -np.sign(along[:, [1]]) * self._axes[1])
        tangent = np.stack([-normal[:, 1], normal[:, 0]], axis=1)
        lit = 0.45 + 0.55 * np.clip(normal @ self._sun[:2], 0, None) / max(float(np.hypot(*self._sun[:2])), 1e-3)
        s = px[mask] * tangent[:, 0] + py[mask] * tangent[:, 1]
        z_rel = z_ray[mask] - w.terrain[hr[mask], hc[mask]]
        roof_gap = w.dsm[hr[mask], hc[mask]] - z_ray[mask]
        window = ((z_rel % 3.0) > 1.0) & ((z_rel % 3.0) < 2.2) & ((s % 3.2) > 0.8) & ((s % 3.2) < 2.4)
        window &= (roof_gap > 0.8) & (z_rel > 0.8)
        wall = w.side[hr[mask], hc[mask]].astype(np.float32) * lit[:, None]
        glass = np.array([55, 70, 85], np.float32) + 0.25 * np.asarray(w.style.sky_horizon, np.float32)
        return np.where(window[:, None], glass, wall)

    def _sky(self, az, elev, rng) -> np.ndarray:
        """Sky gradient from horizon to zenith, a glow around the sun and soft random clouds."""
        st = self.world.style
        t = np.clip(elev / (math.pi / 2), 0, 1) ** 0.6
        horizon, zenith = np.asarray(st.sky_horizon, np.float32), np.asarray(st.sky_zenith, np.float32)
        sky = horizon * (1 - t[..., None]) + zenith * t[..., None]
        sun = self._sun
        view = np.stack([np.sin(az)[None, :] * np.cos(elev), np.cos(az)[None, :] * np.cos(elev), np.sin(elev)], -1)
        glow = np.clip(view @ sun, 0, 1) ** 16
        sky = sky + 60.0 * glow[..., None]
        phase = rng.uniform(0, 2 * math.pi, 3)
        freq = rng.uniform(2, 6, 3)
        clouds = sum(np.sin(f * az[None, :] + p + 7 * elev) for f, p in zip(freq, phase, strict=True)) / 3.0
        cover = np.clip((clouds - rng.uniform(0.1, 0.6)) * 2.0, 0, 1) * (elev > 0.02)
        return sky * (1 - 0.6 * cover[..., None]) + 235.0 * 0.6 * cover[..., None]
