"""A seeded procedural 2.5D world on a metric grid: terrain, roads, buildings, trees, fields, water.

Pure numpy (no GIS imports): the world is a set of rasters on a north-up grid of ``resolution_m``
pixels whose upper-left corner is ``(west, north)`` in the projected CRS ``crs`` (metres). Pixel
``(row, col)`` covers ``x in [west + col*res, west + (col+1)*res)`` and
``y in (north - (row+1)*res, north - row*res]``. :mod:`synthetic_world.io` turns the rasters into
GeoTIFFs; :mod:`synthetic_world.render` draws orthophotos and ground views from them.

Everything is a function of :class:`WorldConfig` (the seed included), so a world is reproducible
bit for bit. The layout is city-like on purpose: a randomly rotated road grid with irregular
blocks, a denser and taller "downtown" at a random place, and fields, forest and water further
out, so that different places look different from above and from the street.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

# Surface kinds stored in World.kind (uint8).
GROUND, ROAD, BUILDING, TREE, WATER, FIELD = range(6)

# Block types of the road grid.
URBAN, PARK, CROPS, FOREST, LAKE = range(5)

_ROOF_PALETTE = np.array([[150, 70, 55], [120, 60, 50], [95, 95, 100], [70, 70, 75], [160, 150, 140],
                          [110, 85, 70], [60, 90, 80], [185, 180, 170]], dtype=np.float32)
_FACADE_PALETTE = np.array([[215, 205, 185], [235, 230, 220], [170, 165, 160], [160, 85, 65],
                            [220, 190, 140], [190, 200, 205], [125, 120, 115], [200, 160, 130]],
                           dtype=np.float32)
_CROP_PALETTE = np.array([[120, 150, 60], [170, 160, 80], [200, 180, 110], [125, 100, 70],
                          [90, 130, 60], [150, 170, 90]], dtype=np.float32)


@dataclass(frozen=True)
class WorldConfig:
    """What defines a world. ``center_lon``/``center_lat`` (EPSG:4326) place its centre; the grid
    CRS is the UTM zone of that point unless ``crs`` names another projected CRS in metres."""

    seed: int = 0
    size_m: float = 2000.0
    resolution_m: float = 0.5
    center_lon: float = 11.0
    center_lat: float = 48.0
    crs: str | None = None

    def __post_init__(self) -> None:
        if self.size_m < 100 or self.size_m > 20000:
            raise ValueError(f"size_m must be within 100..20000 m, got {self.size_m}")
        if not 0.1 <= self.resolution_m <= 2.0:
            raise ValueError(f"resolution_m must be within 0.1..2 m, got {self.resolution_m}")
        if not (-180 <= self.center_lon <= 180 and -80 <= self.center_lat <= 84):
            raise ValueError(f"centre {self.center_lon}, {self.center_lat} is outside the UTM range")

    @property
    def pixels(self) -> int:
        """Grid side in pixels: ``size_m / resolution_m``, rounded."""
        return int(round(self.size_m / self.resolution_m))


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the WGS 84 UTM zone containing (lon, lat) in degrees."""
    zone = min(int((lon + 180.0) // 6.0) + 1, 60)
    return (32600 if lat >= 0 else 32700) + zone


@dataclass(frozen=True)
class Style:
    """Appearance varied by seed: sun, sky, haze and a global colour balance."""

    sun_azimuth_deg: float      # clockwise from north
    sun_elevation_deg: float
    sky_horizon: tuple[float, float, float]
    sky_zenith: tuple[float, float, float]
    haze: tuple[float, float, float]
    visibility_m: float
    white_balance: tuple[float, float, float]

    @property
    def sun_vector(self) -> np.ndarray:
        """Unit vector towards the sun in (east, north, up)."""
        az, el = math.radians(self.sun_azimuth_deg), math.radians(self.sun_elevation_deg)
        return np.array([math.sin(az) * math.cos(el), math.cos(az) * math.cos(el), math.sin(el)])


@dataclass(frozen=True)
class Building:
    """A rectangular building; centre in the grid CRS, ``angle_deg`` of its length axis
    counter-clockwise from east."""

    x: float
    y: float
    length_m: float
    width_m: float
    angle_deg: float
    height_m: float
    base_m: float
    roof_rgb: tuple[int, int, int]
    facade_rgb: tuple[int, int, int]
    gable: bool = False

    def corners(self) -> np.ndarray:
        """(4, 2) footprint corners (x, y) in the grid CRS."""
        a = math.radians(self.angle_deg)
        eu = np.array([math.cos(a), math.sin(a)]) * self.length_m / 2
        ev = np.array([-math.sin(a), math.cos(a)]) * self.width_m / 2
        c = np.array([self.x, self.y])
        return np.stack([c - eu - ev, c + eu - ev, c + eu + ev, c - eu + ev])


@dataclass
class World:
    """The rasters of one world (row 0 = north) and the objects they were drawn from."""

    config: WorldConfig
    crs: str
    west: float
    north: float
    terrain: np.ndarray        # (H, W) float32, ground elevation in metres
    dsm: np.ndarray            # (H, W) float32, top surface elevation in metres
    kind: np.ndarray           # (H, W) uint8, one of GROUND..FIELD
    albedo: np.ndarray         # (H, W, 3) uint8, colour seen from above (unlit)
    side: np.ndarray           # (H, W, 3) uint8, colour of vertical surfaces (facades, tree crowns)
    grid_angle_deg: float      # road grid rotation, counter-clockwise from east
    style: Style
    buildings: list[Building] = field(default_factory=list)

    @property
    def res(self) -> float:
        """Pixel size in metres (the config's ``resolution_m``)."""
        return self.config.resolution_m

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of the rasters."""
        return self.dsm.shape

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) in the grid CRS."""
        h, w = self.shape
        return (self.west, self.north - h * self.res, self.west + w * self.res, self.north)

    @property
    def geotransform(self) -> tuple[float, float, float, float, float, float]:
        """Affine coefficients (a, b, c, d, e, f): x = a*col + b*row + c, y = d*col + e*row + f."""
        return (self.res, 0.0, self.west, 0.0, -self.res, self.north)

    def to_pixel(self, x, y):
        """Grid-CRS coordinates -> fractional (col, row); pixel centres are at .5."""
        return (np.asarray(x) - self.west) / self.res, (self.north - np.asarray(y)) / self.res

    def to_world(self, col, row):
        """Fractional (col, row) -> grid-CRS (x, y)."""
        return self.west + np.asarray(col) * self.res, self.north - np.asarray(row) * self.res

    def ground_elevation(self, x: float, y: float) -> float:
        """Terrain elevation (m) under grid-CRS (x, y), clamped to the world's edge."""
        col, row = self.to_pixel(x, y)
        h, w = self.shape
        return float(self.terrain[int(np.clip(row, 0, h - 1)), int(np.clip(col, 0, w - 1))])

    def centre(self) -> tuple[float, float]:
        """(x, y) of the world's centre in the grid CRS."""
        w, s, e, n = self.bounds
        return ((w + e) / 2, (s + n) / 2)


def generate_world(config: WorldConfig, grid_crs: str, center_xy: tuple[float, float]) -> World:
    """Build the world of ``config`` centred on ``center_xy`` (grid CRS ``grid_crs``, metres).

    The caller projects the centre (see :func:`synthetic_world.io.make_world`); this function
    stays free of projection libraries. The upper-left corner is snapped to whole pixels.
    Every step draws from one random generator in a fixed order, so the world is reproducible
    bit for bit: reordering the steps changes every world.
    """
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0x5A16]))
    res = config.resolution_m
    n = config.pixels
    half = n * res / 2
    west = math.floor((center_xy[0] - half) / res) * res
    north = math.floor((center_xy[1] + half) / res) * res
    style = _style(rng)

    # Local metric coordinates of pixel centres relative to the world centre (east, north).
    lx = ((np.arange(n, dtype=np.float32) + 0.5) * res - half)[None, :]
    ly = (half - (np.arange(n, dtype=np.float32) + 0.5) * res)[:, None]

    terrain = _terrain(rng, n, res)
    grid, px = _road_grid(rng, lx, ly, half)
    urbanity, block_type = _block_layout(rng, grid, config.size_m)
    btype = block_type[px.iu, px.iv]
    kind, albedo = _paint_ground(rng, grid, px, btype, terrain)
    del px

    dsm = terrain.copy()
    side = np.empty_like(albedo)
    side[:] = albedo
    buildings = _place_buildings(rng, config, block_type, grid.u_lines, grid.u_width, grid.v_lines, grid.v_width,
                                 urbanity, grid.theta, terrain, half)
    for b in buildings:
        _draw_building(b, dsm, kind, albedo, side, lx, ly, res, half)
    _place_trees(rng, btype, kind, terrain, dsm, albedo, side, res)
    _texture(rng, albedo, side, style, n, res)
    world_buildings = [
        Building(x=b.x + west + half, y=b.y + north - half, length_m=b.length_m, width_m=b.width_m,
                 angle_deg=b.angle_deg, height_m=b.height_m, base_m=b.base_m, roof_rgb=b.roof_rgb,
                 facade_rgb=b.facade_rgb, gable=b.gable)
        for b in buildings
    ]
    return World(config=config, crs=grid_crs, west=west, north=north, terrain=terrain, dsm=dsm, kind=kind,
                 albedo=np.clip(albedo, 0, 255).astype(np.uint8), side=np.clip(side, 0, 255).astype(np.uint8),
                 grid_angle_deg=grid.theta, style=style, buildings=world_buildings)


@dataclass(frozen=True)
class _RoadGrid:
    """The rotated road grid in local metres: ``u`` runs along the first road family's normal, ``v``
    along the second's; ``*_lines`` are the roads' centre positions, ``*_width`` their widths."""

    theta: float               # rotation, degrees counter-clockwise from east
    u_lines: np.ndarray
    u_width: np.ndarray
    v_lines: np.ndarray
    v_width: np.ndarray


@dataclass(frozen=True)
class _GridPixels:
    """Every pixel in road-grid terms: its (u, v), the block (iu, iv) it lies in, its distances to the
    block's four bounding road lines and whether it is road."""

    u: np.ndarray
    v: np.ndarray
    iu: np.ndarray
    iv: np.ndarray
    du0: np.ndarray            # u distance to the block's lower u line
    du1: np.ndarray            # ... to its upper u line
    dv0: np.ndarray
    dv1: np.ndarray
    road: np.ndarray           # (H, W) bool


def _road_grid(rng: np.random.Generator, lx: np.ndarray, ly: np.ndarray, half: float) -> tuple[_RoadGrid, _GridPixels]:
    """A randomly rotated grid of two road families, with missing segments, and its pixel raster."""
    theta = rng.uniform(0, 90)
    ct, st = math.cos(math.radians(theta)), math.sin(math.radians(theta))
    u = lx * ct + ly * st            # along the first road family's normal
    v = -lx * st + ly * ct

    reach = half * 1.5
    u_lines, u_width = _road_lines(rng, reach)
    v_lines, v_width = _road_lines(rng, reach)
    iu = np.clip(np.searchsorted(u_lines, u) - 1, 0, len(u_lines) - 2).astype(np.int32)
    iv = np.clip(np.searchsorted(v_lines, v) - 1, 0, len(v_lines) - 2).astype(np.int32)
    # Missing road segments merge neighbouring blocks into irregular super-blocks.
    drop_u = rng.random((len(u_lines), len(v_lines))) < 0.18
    drop_v = rng.random((len(v_lines), len(u_lines))) < 0.18
    du0 = u - u_lines[iu]
    du1 = u_lines[iu + 1] - u
    dv0 = v - v_lines[iv]
    dv1 = v_lines[iv + 1] - v
    road_u = ((du0 < u_width[iu] / 2) & ~drop_u[iu, iv]) | ((du1 < u_width[iu + 1] / 2) & ~drop_u[iu + 1, iv])
    road_v = ((dv0 < v_width[iv] / 2) & ~drop_v[iv, iu]) | ((dv1 < v_width[iv + 1] / 2) & ~drop_v[iv + 1, iu])
    grid = _RoadGrid(theta=theta, u_lines=u_lines, u_width=u_width, v_lines=v_lines, v_width=v_width)
    return grid, _GridPixels(u=u, v=v, iu=iu, iv=iv, du0=du0, du1=du1, dv0=dv0, dv1=dv1, road=road_u | road_v)


def _block_layout(rng: np.random.Generator, grid: _RoadGrid, size_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Urbanity (1 at a random downtown, falling off with distance) and type of every block of the grid:
    urban near downtown, open land further out."""
    ct, st = math.cos(math.radians(grid.theta)), math.sin(math.radians(grid.theta))
    cu = 0.5 * (grid.u_lines[:-1] + grid.u_lines[1:])
    cv = 0.5 * (grid.v_lines[:-1] + grid.v_lines[1:])
    down = rng.uniform(-0.3, 0.3, 2) * size_m
    dist = np.hypot(cu[:, None] - (down[0] * ct + down[1] * st), cv[None, :] - (-down[0] * st + down[1] * ct))
    urbanity = np.exp(-(dist / (0.45 * size_m)) ** 2)
    return urbanity, _block_types(rng, urbanity)


def _paint_ground(rng: np.random.Generator, grid: _RoadGrid, px: _GridPixels, btype: np.ndarray,
                  terrain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Surface kind and unlit colour of the ground: grass, parks, forest floor, fields, lakes (which
    flatten ``terrain`` in place) and roads, before buildings and trees are drawn on top."""
    n = terrain.shape[0]
    kind = np.full((n, n), GROUND, np.uint8)
    albedo = np.empty((n, n, 3), np.float32)
    grass = np.array([95, 125, 60], np.float32) * rng.uniform(0.85, 1.15, 3)
    albedo[:] = grass
    for t, colour in ((PARK, grass * [0.9, 1.08, 0.9]), (FOREST, grass * [0.7, 0.85, 0.7])):
        albedo[btype == t] = colour
    _paint_fields(rng, px, btype, kind, albedo)
    _paint_lakes(rng, grid, px, btype, terrain, kind, albedo)
    _paint_roads(rng, grid, px, kind, albedo)
    return kind, albedo


def _paint_fields(rng: np.random.Generator, px: _GridPixels, btype: np.ndarray, kind: np.ndarray,
                  albedo: np.ndarray) -> None:
    """Fields: each crop block split into strips of crops, rows in the field's own direction."""
    crops = btype == CROPS
    if crops.any():
        strip = (np.floor(px.du0 / 40.0)).astype(np.int32)
        field_id = (px.iu * 7919 + px.iv * 104729 + strip * 31) % len(_CROP_PALETTE)
        crop_colour = _CROP_PALETTE[field_id] * rng.uniform(0.9, 1.1, 3)
        rows = 0.85 + 0.15 * np.cos((px.u if rng.random() < 0.5 else px.v) * (2 * math.pi / 3.0))
        albedo[crops] = (crop_colour * rows[..., None])[crops]
        kind[crops] = FIELD


def _paint_lakes(rng: np.random.Generator, grid: _RoadGrid, px: _GridPixels, btype: np.ndarray,
                 terrain: np.ndarray, kind: np.ndarray, albedo: np.ndarray) -> None:
    """Water: lakes fill their block (with a grass shore), flat at the block's lowest terrain."""
    lake = (btype == LAKE) & (px.du0 > 8) & (px.dv0 > 8)
    lake &= (grid.u_lines[px.iu + 1] - px.u > 8) & (grid.v_lines[px.iv + 1] - px.v > 8)
    if lake.any():
        labels = (px.iu * len(grid.v_lines) + px.iv)[lake]
        uniq = np.unique(labels)
        levels = np.asarray(ndimage.minimum(terrain[lake], labels, uniq), np.float32)
        terrain[lake] = levels[np.searchsorted(uniq, labels)] - 0.8
        albedo[lake] = np.array([50, 85, 105], np.float32) * rng.uniform(0.85, 1.15, 3)
        kind[lake] = WATER


def _paint_roads(rng: np.random.Generator, grid: _RoadGrid, px: _GridPixels, kind: np.ndarray,
                 albedo: np.ndarray) -> None:
    """Roads: asphalt, pale sidewalks at the edges, dashed centre lines on wide roads."""
    iu, iv, du0, du1, dv0, dv1, road = px.iu, px.iv, px.du0, px.du1, px.dv0, px.dv1, px.road
    u_width, v_width = grid.u_width, grid.v_width
    asphalt = np.array([85, 85, 88], np.float32) * rng.uniform(0.8, 1.2)
    albedo[road] = asphalt
    kind[road] = ROAD
    edge = road & ((np.abs(du0 - u_width[iu] / 2 + 1) < 1) | (np.abs(du1 - u_width[iu + 1] / 2 + 1) < 1) |
                   (np.abs(dv0 - v_width[iv] / 2 + 1) < 1) | (np.abs(dv1 - v_width[iv + 1] / 2 + 1) < 1))
    albedo[edge] = asphalt * 1.6
    centre_line = road & (((du0 < 0.15) & (u_width[iu] > 9)) | ((dv0 < 0.15) & (v_width[iv] > 9)))
    centre_line &= (np.floor((px.u + px.v) / 3.0) % 2 == 0)
    albedo[centre_line] = (235, 235, 225)


def _texture(rng: np.random.Generator, albedo: np.ndarray, side: np.ndarray, style: Style, n: int,
             res: float) -> None:
    """Texture (in place): fine grain and larger blotches on ``albedo``, so nothing is a flat colour;
    then the style's white balance on both colour rasters."""
    albedo *= _noise(rng, n, sigma=0.0, amplitude=0.06)[..., None]
    albedo *= _noise(rng, n, sigma=6.0 / res, amplitude=0.10)[..., None]
    albedo *= np.asarray(style.white_balance, np.float32)
    side *= np.asarray(style.white_balance, np.float32)


def _style(rng: np.random.Generator) -> Style:
    horizon = np.array([200, 215, 230]) * rng.uniform(0.85, 1.05, 3)
    zenith = np.array([70, 120, 200]) * rng.uniform(0.8, 1.15, 3)
    return Style(
        sun_azimuth_deg=float(rng.uniform(0, 360)),
        sun_elevation_deg=float(rng.uniform(25, 65)),
        sky_horizon=tuple(float(c) for c in np.clip(horizon, 0, 255)),
        sky_zenith=tuple(float(c) for c in np.clip(zenith, 0, 255)),
        haze=tuple(float(c) for c in np.clip(horizon * rng.uniform(0.9, 1.0), 0, 255)),
        visibility_m=float(rng.uniform(250, 700)),
        white_balance=tuple(float(c) for c in rng.uniform(0.9, 1.1, 3)),
    )


def _terrain(rng: np.random.Generator, n: int, res: float) -> np.ndarray:
    """Gentle hills: low-frequency noise of a few metres' relief, smooth at the pixel scale."""
    coarse = max(4, int(n * res / 250))
    base = rng.normal(size=(coarse + 3, coarse + 3))
    relief = rng.uniform(3, 18)
    field_ = ndimage.zoom(base, n / coarse, order=3, mode="nearest", grid_mode=True)
    field_ = field_[:n, :n].astype(np.float32)
    field_ -= field_.min()
    return field_ * np.float32(relief / max(float(field_.max()), 1e-6))


def _road_lines(rng: np.random.Generator, reach: float) -> tuple[np.ndarray, np.ndarray]:
    """Positions (spacing 50-130 m) and widths (6-14 m, a few wide avenues) of one road family."""
    pos = [-reach + rng.uniform(0, 60)]
    while pos[-1] < reach:
        pos.append(pos[-1] + rng.uniform(50, 130))
    width = rng.uniform(6, 10, len(pos))
    width[rng.random(len(pos)) < 0.15] = rng.uniform(12, 14)
    return np.asarray(pos, np.float32), width.astype(np.float32)


def _block_types(rng: np.random.Generator, urbanity: np.ndarray) -> np.ndarray:
    r = rng.random(urbanity.shape)
    p_urban = 0.15 + 0.8 * urbanity
    out = np.full(urbanity.shape, CROPS, np.int8)
    out[r < p_urban] = URBAN
    rest = rng.random(urbanity.shape)
    open_land = r >= p_urban
    out[open_land & (rest < 0.25)] = PARK
    out[open_land & (rest >= 0.25) & (rest < 0.45)] = FOREST
    out[open_land & (rest >= 0.45) & (rest < 0.55)] = LAKE
    return out


def _noise(rng: np.random.Generator, n: int, sigma: float, amplitude: float) -> np.ndarray:
    """A multiplicative noise field around 1 (white when sigma is 0, blotchy otherwise)."""
    if sigma <= 0:
        noise = rng.standard_normal((n, n), dtype=np.float32)
    else:
        step = max(1, int(sigma / 2))
        small = rng.standard_normal((n // step + 2, n // step + 2), dtype=np.float32)
        small = ndimage.gaussian_filter(small, sigma / step)
        small /= max(float(small.std()), 1e-6)
        noise = ndimage.zoom(small, step, order=1)[:n, :n]
    return 1.0 + amplitude * noise


def _place_buildings(rng, config, block_type, u_lines, u_width, v_lines, v_width, urbanity, theta,
                     terrain, half) -> list[Building]:
    """Rows of lots along both long sides of each urban block; heights skewed low, tall downtown.

    Building centres are returned in local coordinates (east/north of the world centre); the
    caller shifts them into the grid CRS.
    """
    ct, st = math.cos(math.radians(theta)), math.sin(math.radians(theta))
    n = terrain.shape[0]
    res = config.resolution_m
    out: list[Building] = []
    for i, j in zip(*np.nonzero(block_type == URBAN), strict=True):
        u0, u1 = u_lines[i] + u_width[i] / 2, u_lines[i + 1] - u_width[i + 1] / 2
        v0, v1 = v_lines[j] + v_width[j] / 2, v_lines[j + 1] - v_width[j + 1] / 2
        # Blocks entirely outside the world are skipped (the grid covers the rotated square).
        cu, cv = (u0 + u1) / 2, (v0 + v1) / 2
        cx, cy = cu * ct - cv * st, cu * st + cv * ct
        if abs(cx) > half + 80 or abs(cy) > half + 80:
            continue
        urb = float(urbanity[i, j])
        lot = rng.uniform(12, 30) * (1.3 if urb > 0.7 and rng.random() < 0.5 else 1.0)
        depth = v1 - v0
        rows = [(v0, 1.0), (v1, -1.0)] if depth > 34 else [(v0, 1.0)]
        for edge, sgn in rows:
            usable = depth / len(rows)
            k = 0
            while u0 + (k + 1) * lot <= u1 + 1e-3:
                if rng.random() < 0.85:
                    setback = rng.uniform(1.5, 6.0) * (0.4 if urb > 0.6 else 1.0)
                    along = lot * rng.uniform(0.55, 0.92)
                    across = min(rng.uniform(8, 22) * (1 + 0.6 * urb), usable - setback - 2)
                    if across >= 6:
                        bu = u0 + (k + 0.5) * lot + rng.uniform(-0.1, 0.1) * (lot - along)
                        bv = edge + sgn * (setback + across / 2)
                        height = 3.5 + rng.gamma(1.6, 2.5 + 9.0 * urb ** 2)
                        bx, by = bu * ct - bv * st, bu * st + bv * ct
                        col = int(np.clip((bx + half) / res, 0, n - 1))
                        row = int(np.clip((half - by) / res, 0, n - 1))
                        roof = _ROOF_PALETTE[rng.integers(len(_ROOF_PALETTE))] * rng.uniform(0.85, 1.15, 3)
                        facade = _FACADE_PALETTE[rng.integers(len(_FACADE_PALETTE))] * rng.uniform(0.85, 1.15, 3)
                        out.append(Building(
                            x=float(bx), y=float(by), length_m=float(along), width_m=float(across),
                            angle_deg=float(theta), height_m=float(min(height, 60.0)),
                            base_m=float(terrain[row, col]),
                            roof_rgb=tuple(int(c) for c in np.clip(roof, 0, 255)),
                            facade_rgb=tuple(int(c) for c in np.clip(facade, 0, 255)),
                            gable=bool(height < 15 and rng.random() < 0.4),
                        ))
                k += 1
    return out


def _draw_building(b: Building, dsm, kind, albedo, side, lx, ly, res, half) -> None:
    """Rasterise one building (local coordinates): flat roof with a darker parapet, or a gable."""
    corners = b.corners()
    n = dsm.shape[0]
    c0 = max(int((corners[:, 0].min() + half) / res) - 1, 0)
    c1 = min(int((corners[:, 0].max() + half) / res) + 2, n)
    r0 = max(int((half - corners[:, 1].max()) / res) - 1, 0)
    r1 = min(int((half - corners[:, 1].min()) / res) + 2, n)
    if c0 >= c1 or r0 >= r1:
        return
    a = math.radians(b.angle_deg)
    px = lx[0, c0:c1][None, :] - b.x
    py = ly[r0:r1, 0][:, None] - b.y
    s = px * math.cos(a) + py * math.sin(a)        # along the length
    t = -px * math.sin(a) + py * math.cos(a)       # across
    inside = (np.abs(s) < b.length_m / 2) & (np.abs(t) < b.width_m / 2)
    if not inside.any():
        return
    roof = np.asarray(b.roof_rgb, np.float32)
    top = np.full(inside.shape, b.base_m + b.height_m, np.float32)
    colour = np.broadcast_to(roof, inside.shape + (3,)).copy()
    if b.gable:
        # Ridge along the length; the roof rises 0.35 x half-width above the eaves.
        top += (b.width_m / 2 - np.abs(t)) * 0.7
    else:
        parapet = (np.abs(s) > b.length_m / 2 - 0.8) | (np.abs(t) > b.width_m / 2 - 0.8)
        colour[parapet] *= 0.75
        top[parapet] += 0.5
    d = dsm[r0:r1, c0:c1]
    inside &= top >= d            # where lots touch, the taller roof is what is seen
    d[inside] = top[inside]
    kind[r0:r1, c0:c1][inside] = BUILDING
    albedo[r0:r1, c0:c1][inside] = colour[inside]
    side[r0:r1, c0:c1][inside] = b.facade_rgb


def _place_trees(rng, btype, kind, terrain, dsm, albedo, side, res) -> None:
    """Dome-shaped trees: dense in forests, scattered in parks and yards, a few along fields."""
    n = dsm.shape[0]
    area = (n * res) ** 2
    m = int(area / 25.0)
    cols = rng.uniform(0, n, m)
    rows = rng.uniform(0, n, m)
    ci, ri = cols.astype(np.int64), rows.astype(np.int64)
    bt = btype[ri, ci]
    k = kind[ri, ci]
    p = np.select([bt == FOREST, bt == PARK, bt == URBAN, bt == CROPS], [0.75, 0.12, 0.05, 0.004], 0.0)
    p = np.where((k == ROAD) | (k == BUILDING) | (k == WATER), 0.0, p)
    keep = rng.random(m) < p
    cols, rows = cols[keep], rows[keep]
    radius = rng.uniform(2.0, 5.5, len(cols))
    height = rng.uniform(5.0, 12.0, len(cols))
    greens = np.array([[55, 95, 45], [70, 110, 50], [45, 80, 40], [85, 115, 55]], np.float32)
    shade = greens[rng.integers(len(greens), size=len(cols))] * rng.uniform(0.85, 1.15, (len(cols), 3))
    for c, r, rad, h, col in zip(cols, rows, radius, height, shade, strict=True):
        rp = rad / res
        c0, c1 = max(int(c - rp), 0), min(int(c + rp) + 2, n)
        r0, r1 = max(int(r - rp), 0), min(int(r + rp) + 2, n)
        yy, xx = np.mgrid[r0:r1, c0:c1]
        d2 = ((xx + 0.5 - c) ** 2 + (yy + 0.5 - r) ** 2) / (rp * rp)
        inside = d2 < 1.0
        if not inside.any() or (kind[r0:r1, c0:c1][inside] == ROAD).any():
            continue    # crowns never overhang roads: streets stay walkable and open
        base = terrain[int(r) if int(r) < n else n - 1, int(c) if int(c) < n else n - 1]
        crown = base + h * (0.45 + 0.55 * np.sqrt(np.clip(1.0 - d2, 0, 1)))
        win = dsm[r0:r1, c0:c1]
        higher = inside & (crown > win)
        win[higher] = crown[higher]
        kind[r0:r1, c0:c1][higher] = TREE
        lit = (0.8 + 0.3 * np.sqrt(np.clip(1.0 - d2, 0, 1)))[..., None]
        albedo[r0:r1, c0:c1][higher] = (col * lit)[higher]
        side[r0:r1, c0:c1][higher] = col * 0.85


def street_positions(world: World, count: int, rng: np.random.Generator, margin_m: float = 50.0,
                     kinds: tuple[int, ...] = (ROAD,)) -> np.ndarray:
    """(count, 2) grid-CRS (x, y) of random pixel centres of the given kinds (default: roads), at
    least ``margin_m`` inside the world's edge -- where a person with a camera would stand."""
    m = int(math.ceil(margin_m / world.res))
    h, w = world.shape
    inner = world.kind[m:h - m, m:w - m]
    rows, cols = np.nonzero(np.isin(inner, kinds))
    if len(rows) == 0:
        raise ValueError("the world has no place of the requested kinds inside its margin")
    pick = rng.choice(len(rows), size=count, replace=len(rows) < count)
    x, y = world.to_world(cols[pick] + m + 0.5, rows[pick] + m + 0.5)
    return np.stack([x, y], axis=1)
