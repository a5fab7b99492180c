"""The synthetic world: deterministic per seed, georeferenced consistently, geometry as documented."""
from __future__ import annotations

import math

import numpy as np
import pytest
import rasterio
from rasterio import features
from shapely.geometry import Polygon

from saig_core.errors import SaigError
from synthetic_world import io
from synthetic_world.generate import PhotoPlan, synthesize_world
from synthetic_world.render import PanoramaSpec, PhotoSpec, Renderer
from synthetic_world.world import BUILDING, GROUND, Style, World, WorldConfig

SMALL = dict(size_m=320.0, resolution_m=0.5)


@pytest.fixture(scope="module")
def small_world_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("world7")
    config = WorldConfig(seed=7, **SMALL)
    synthesize_world(config, out, PhotoPlan(panoramas=3, fov_photos=2, margin_m=40.0))
    return out, config


def test_same_seed_gives_the_same_world_and_another_seed_does_not():
    a = io.make_world(WorldConfig(seed=3, **SMALL))
    b = io.make_world(WorldConfig(seed=3, **SMALL))
    c = io.make_world(WorldConfig(seed=4, **SMALL))
    for name in ("terrain", "dsm", "kind", "albedo", "side"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.buildings == b.buildings and a.style == b.style
    assert not np.array_equal(a.albedo, c.albedo)
    assert a.style != c.style


def test_same_seed_writes_identical_photos_and_truth(small_world_dir, tmp_path):
    first, config = small_world_dir
    synthesize_world(config, tmp_path, PhotoPlan(panoramas=3, fov_photos=2, margin_m=40.0))
    with pytest.raises(SaigError, match="--overwrite"):
        synthesize_world(config, tmp_path, PhotoPlan(panoramas=1, margin_m=40.0))
    assert (tmp_path / "truth.csv").read_bytes() == (first / "truth.csv").read_bytes()
    for row in io.read_truth(first / "truth.csv"):
        assert (tmp_path / row.file).read_bytes() == (first / row.file).read_bytes(), row.file
    with rasterio.open(first / "orthophoto.tif") as a, rasterio.open(tmp_path / "orthophoto.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())


def test_world_is_in_the_utm_zone_of_its_origin(small_world_dir):
    out, config = small_world_dir
    with rasterio.open(out / "orthophoto.tif") as src:
        assert src.crs.to_epsg() == 32632          # 11 E, 48 N
        assert src.res == (0.5, 0.5)
        assert src.count == 3 and src.dtypes == ("uint8",) * 3
        assert src.profile["tiled"] and src.compression is not None
        assert src.overviews(1), "the orthophoto has overviews"
        centre = src.xy(src.height // 2, src.width // 2)
    lon, lat = io.to_lonlat(io.make_world(config), centre[0], centre[1])
    assert abs(float(lon) - 11.0) < 1e-3 and abs(float(lat) - 48.0) < 1e-3


def test_orthophoto_georeferencing_puts_each_building_where_the_dsm_has_it(small_world_dir):
    out, config = small_world_dir
    world = io.make_world(config)
    w, s, e, n = world.bounds
    inside = [b for b in world.buildings
              if Polygon(b.corners()).buffer(3).within(Polygon([(w, s), (e, s), (e, n), (w, n)]))]
    assert len(inside) >= 5
    wb = np.asarray(world.style.white_balance)
    with rasterio.open(out / "orthophoto.tif") as ortho_src, rasterio.open(out / "dsm.tif") as dsm_src:
        assert ortho_src.crs == dsm_src.crs and ortho_src.transform == dsm_src.transform
        ortho, dsm = ortho_src.read(), dsm_src.read(1)
        for b in inside:
            footprint = Polygon(b.corners())
            core = features.geometry_mask([footprint.buffer(-1.0)], dsm.shape, dsm_src.transform, invert=True)
            ring = features.geometry_mask([footprint.buffer(3.0).difference(footprint.buffer(1.0))], dsm.shape,
                                          dsm_src.transform, invert=True)
            # The DSM is at roof height on the footprint and lower around it ...
            assert np.all(dsm[core] >= b.base_m + b.height_m - 1e-3), b
            assert np.median(dsm[ring]) < b.base_m + b.height_m - 2.0, b
            # ... and the orthophoto shows the roof's colour there (chromaticity, lighting removed).
            seen = ortho[:, core].reshape(3, -1).astype(float).mean(axis=1) / wb
            roof = np.asarray(b.roof_rgb, float)
            assert np.abs(seen / seen.sum() - roof / roof.sum()).max() < 0.03, b
        # A world coordinate maps to the same pixel in both rasters.
        x, y = inside[0].x, inside[0].y
        assert ortho_src.index(x, y) == dsm_src.index(x, y)
        assert next(dsm_src.sample([(x, y)]))[0] >= inside[0].base_m + inside[0].height_m - 1e-3


RED, BLUE = (255, 0, 0), (0, 0, 255)


def _flat_world(blocks: list[tuple[float, float, float, tuple]], size_m: float = 200.0) -> World:
    """A flat grey world spanning (0, 0)..(size, size) metres with square 20 m towers
    (x, y, height, facade colour)."""
    res = 0.5
    n = int(size_m / res)
    dsm = np.zeros((n, n), np.float32)
    kind = np.full((n, n), GROUND, np.uint8)
    side = np.full((n, n, 3), 120, np.uint8)
    for x, y, h, colour in blocks:
        c0, c1 = int((x - 10) / res), int((x + 10) / res)
        r0, r1 = int((size_m - y - 10) / res), int((size_m - y + 10) / res)
        dsm[r0:r1, c0:c1] = h
        kind[r0:r1, c0:c1] = BUILDING
        side[r0:r1, c0:c1] = colour
    albedo = np.full((n, n, 3), 120, np.uint8)
    style = Style(sun_azimuth_deg=180.0, sun_elevation_deg=45.0, sky_horizon=(200, 210, 230),
                  sky_zenith=(80, 120, 200), haze=(200, 210, 230), visibility_m=1e6, white_balance=(1, 1, 1))
    config = WorldConfig(seed=0, size_m=size_m, resolution_m=res)
    return World(config=config, crs="EPSG:32632", west=0.0, north=size_m, terrain=np.zeros_like(dsm), dsm=dsm,
                 kind=kind, albedo=albedo, side=side, grid_angle_deg=0.0, style=style)


def _is(img: np.ndarray, colour: tuple) -> np.ndarray:
    """Pixels of a facade of ``colour`` (lit or not: the dominant channel far above the others)."""
    c = int(np.argmax(colour))
    others = [k for k in range(3) if k != c]
    px = img.astype(int)
    return px[..., c] > px[..., others].max(axis=-1) + 60


def _columns_with(img: np.ndarray, colour: tuple, rows: slice) -> np.ndarray:
    """Columns where any pixel of the row band shows a facade of ``colour`` (windows leave gaps)."""
    return np.nonzero(_is(img[rows], colour).any(axis=0))[0]


def test_panorama_column_zero_looks_north_and_azimuth_grows_clockwise():
    spec = PanoramaSpec(height=64, width=256, elev_top_deg=30, elev_bottom_deg=-30)
    band = slice(10, 22)                                  # about +20 to +9 degrees of elevation
    north = Renderer(_flat_world([(100, 160, 30, RED)])).panorama(100, 100, 0.0, spec, np.random.default_rng(0))
    cols = _columns_with(north, RED, band)
    # The tower's near face (50 m away, 20 m wide) spans +-11.3 deg around north: both ends.
    assert cols.min() == 0 and cols.max() == 255
    assert np.all((cols <= 9) | (cols >= 246)) and 14 <= len(cols) <= 20, cols
    east = Renderer(_flat_world([(160, 100, 30, RED)])).panorama(100, 100, 0.0, spec, np.random.default_rng(0))
    cols = _columns_with(east, RED, band)
    assert cols.min() >= 55 and cols.max() <= 73 and abs(cols.mean() - 64) < 1.5, cols   # column W/4 = east
    south = Renderer(_flat_world([(100, 40, 30, RED)])).panorama(100, 100, 0.0, spec, np.random.default_rng(0))
    assert abs(_columns_with(south, RED, band).mean() - 128) < 1.5                    # column W/2 = south


def test_photo_looks_along_its_heading():
    spec = PhotoSpec(width=128, height=72, hfov_deg=90)
    r = Renderer(_flat_world([(160, 100, 30, RED)]))     # a tower east of the camera
    band = slice(10, 30)                                  # above the horizon (row 36)
    east = _columns_with(r.photo(100, 100, 90.0, spec, np.random.default_rng(0)), RED, band)
    assert len(east) > 20 and abs(east.mean() - 63.5) < 2
    assert len(_columns_with(r.photo(100, 100, 270.0, spec, np.random.default_rng(0)), RED, band)) == 0
    # Turned 30 deg left of the tower, the photo shows it right of centre: 64 + 64 tan(30 deg) = 101.
    right = _columns_with(r.photo(100, 100, 60.0, spec, np.random.default_rng(0)), RED, band)
    assert abs(right.mean() - 63.5 - 64 * math.tan(math.radians(30))) < 4


def test_nearer_buildings_hide_farther_ones():
    # A 12 m red tower 20 m north hides a 60 m blue one 70 m north, except above the red roof edge.
    world = _flat_world([(100, 130, 12, RED), (100, 180, 60, BLUE)])
    spec = PanoramaSpec(height=120, width=360, elev_top_deg=30, elev_bottom_deg=-30)
    pano = Renderer(world).panorama(100, 100, 0.0, spec, np.random.default_rng(0))

    def band(lo_deg, hi_deg):
        return slice(int((30 - hi_deg) * 2), int((30 - lo_deg) * 2))

    edge = math.degrees(math.atan2(12 - 2, 20))           # 26.6 deg
    assert _is(pano[band(5, edge - 1), 0:3], RED).any(axis=0).all()
    assert not _is(pano[band(5, edge - 1), 0:3], BLUE).any()
    assert _is(pano[band(edge + 1, 30), 0:3], BLUE).any(axis=0).all()
