"""Photos as they come: real EXIF, magnetic headings, HEIC, panoramas (GPano or 2:1), field of view, limits, finding.

Real data where it matters: the real photos in ../shared/data/photos_gps and panoramas rendered by the
synthetic world. Every bad input must end in a PhotoError naming the file, never another exception.
"""
from __future__ import annotations

import datetime as dt
import io
import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.TiffImagePlugin import IFDRational
from tiling_fixtures import GROUND, photo

from tiling.exif import PLAUSIBLE_FOV_DEG
from tiling.gpano import gpano_xmp
from tiling.ground_input import GroundInput
from tiling.photos import MAX_PHOTO_PIXELS, PhotoError, collect_photos, read_photo


def exif_with(gps: dict | None = None, sub: dict | None = None, orientation: int | None = None) -> Image.Exif:
    ex = Image.Exif()
    if orientation is not None:
        ex[0x0112] = orientation
    if gps:
        ex[0x8825] = gps
    if sub:
        ex[0x8769] = sub
    return ex


# -- real photos --------------------------------------------------------------------------------------------

def test_helsinki_magnetic_heading_is_made_true_with_the_wmm_declination_at_its_place_and_date(shared_data):
    from pygeomag import GeoMag

    exif = read_photo(shared_data / "photos_gps" / "HMD_Nokia_8.3_5G.jpg").exif
    assert (exif.lat, exif.lon) == pytest.approx((60.1467, 24.9068), abs=1e-3)  # Helsinki
    assert exif.heading_ref == "M" and exif.heading_magnetic == pytest.approx(56.0)
    assert exif.date == "2022-08-14" and exif.date_source == "DateTimeOriginal"
    # the declination computed here independently: WMM2020 on 2022-08-14 (day 225 of 365)
    expected = GeoMag(coefficients_file="wmm/WMM_2020.COF").calculate(
        glat=exif.lat, glon=exif.lon, alt=0, time=2022 + 225 / 365).d
    assert 8 < expected < 12  # about 10 degrees east in Helsinki in 2022
    assert exif.declination_deg == pytest.approx(expected, abs=1e-6)
    assert exif.heading == pytest.approx(56.0 + expected, abs=1e-6)


def test_madrid_true_heading_unchanged_and_arezzo_positions(shared_data):
    folder = shared_data / "photos_gps"
    iphone = read_photo(folder / "iphone_hdr_NO.jpg").exif
    assert iphone.heading == pytest.approx(212.87, abs=0.01) and iphone.heading_ref == "T"
    assert iphone.heading_magnetic is None and iphone.declination_deg is None
    assert (iphone.lat, iphone.lon) == pytest.approx((40.44697, -3.72475), abs=1e-4)  # Madrid
    for name in ("DSCN0010.jpg", "DSCN0021.jpg", "DSCN0042.jpg"):
        arezzo = read_photo(folder / name).exif
        assert arezzo.heading is None and 43.46 < arezzo.lat < 43.47 and 11.87 < arezzo.lon < 11.89
        assert not arezzo.warnings
    lund = read_photo(folder / "lund_sequence" / "01.jpg")
    assert 55.6 < lund.exif.lat < 55.8 and 13.1 < lund.exif.lon < 13.3 and lund.size == (1024, 768)


def test_a_wide_phone_photo_with_a_focal_length_is_a_photo_not_a_panorama(shared_data):
    helsinki = read_photo(shared_data / "photos_gps" / "HMD_Nokia_8.3_5G.jpg")
    assert helsinki.size == (4608, 1976)  # 21:9, wider than 2:1
    assert helsinki.view.kind == "fov" and "focal length" in helsinki.view.reason
    assert any("--panorama" in n for n in helsinki.notes)


def test_big_jpegs_are_decoded_reduced_to_what_the_model_needs(shared_data):
    madrid = read_photo(shared_data / "photos_gps" / "iphone_hdr_NO.jpg", GroundInput(GROUND))
    assert madrid.size == (3264, 2448)  # full size, as recorded
    w, h = madrid.image.size
    assert w >= GROUND[1] and h >= GROUND[0] and w * h <= 3264 * 2448 / 16  # DCT-reduced by 8 (at least 4)


# -- field of view -------------------------------------------------------------------------------------------

def test_fov_from_the_35mm_focal_length_uses_the_displayed_width(tmp_path):
    landscape = read_photo(photo(tmp_path / "l.jpg", size=(400, 300), exif=exif_with(sub={0xA405: 26})))
    portrait = read_photo(photo(tmp_path / "p.jpg", size=(300, 400), exif=exif_with(sub={0xA405: 26})))
    rotated = read_photo(photo(tmp_path / "r.jpg", size=(400, 300), exif=exif_with(sub={0xA405: 26}, orientation=6)))
    assert landscape.view.fov_deg == pytest.approx(67.4, abs=0.3)
    assert portrait.view.fov_deg == pytest.approx(53.1, abs=0.3)  # not 69 (the long side)
    assert rotated.size == (300, 400) and rotated.image.size[0] < rotated.image.size[1]
    assert rotated.view.fov_deg == pytest.approx(portrait.view.fov_deg)
    assert landscape.view.fov_source == "FocalLengthIn35mmFilm"
    three_two = read_photo(photo(tmp_path / "c.jpg", size=(360, 240), exif=exif_with(sub={0xA405: 18})))
    assert three_two.view.fov_deg == pytest.approx(90.0, abs=0.1)  # 36 mm wide frame, 18 mm: 2 atan(1)


def test_fov_from_focal_length_and_sensor_width_when_no_35mm_value(tmp_path):
    # a 6.4 mm-wide sensor (4000 px at 625 px/mm) behind a 4.0 mm lens: 2 atan(3.2 / 4) = 77.3 degrees
    sub = {0x920A: IFDRational(4, 1), 0xA20E: IFDRational(625, 1), 0xA20F: IFDRational(625, 1), 0xA210: 4,
           0xA002: 4000, 0xA003: 3000}
    p = read_photo(photo(tmp_path / "s.jpg", size=(400, 300), exif=exif_with(sub=sub)))
    assert p.view.fov_deg == pytest.approx(math.degrees(2 * math.atan(3.2 / 4.0)), abs=0.01)
    assert p.view.fov_source == "FocalLength + sensor width"
    turned = read_photo(photo(tmp_path / "t.jpg", size=(400, 300), exif=exif_with(sub=sub, orientation=8)))
    assert turned.view.fov_deg == pytest.approx(math.degrees(2 * math.atan(2.4 / 4.0)), abs=0.01)  # the 4.8 mm side


def test_absurd_focal_lengths_are_refused_with_a_warning(tmp_path):
    p = read_photo(photo(tmp_path / "f.jpg", exif=exif_with(sub={0xA405: 65535})))
    assert p.view.fov_source == "default" and p.view.fov_deg == 90.0
    assert any("outside" in w and str(PLAUSIBLE_FOV_DEG[0]).rstrip("0").rstrip(".") in w for w in p.exif.warnings)
    assert all(str(p.path) in w for w in p.exif.warnings)
    override = read_photo(p.path, fov_override=70.0)
    assert override.view.fov_deg == 70.0 and override.view.fov_source == "--fov-deg"


# -- GPS references and headings --------------------------------------------------------------------------

def test_missing_hemisphere_references_leave_the_position_unknown(tmp_path):
    gps = {2: (45.0, 8.0, 30.0), 3: "E", 4: (15.0, 0.0, 1.0)}  # no GPSLatitudeRef
    exif = read_photo(photo(tmp_path / "n.jpg", exif=exif_with(gps=gps))).exif
    assert exif.lat is None and exif.lon is None and "GPSLatitudeRef" in exif.warnings[0]
    gps = {1: "N", 2: (45.0, 8.0, 30.0), 4: (15.0, 0.0, 1.0)}  # no GPSLongitudeRef
    exif = read_photo(photo(tmp_path / "e.jpg", exif=exif_with(gps=gps))).exif
    assert exif.lat is None and "GPSLongitudeRef" in exif.warnings[0]
    south_west = {1: "S", 2: (33.0, 24.0, 0.0), 3: "W", 4: (70.0, 30.0, 0.0)}
    exif = read_photo(photo(tmp_path / "sw.jpg", exif=exif_with(gps=south_west))).exif
    assert (exif.lat, exif.lon) == pytest.approx((-33.4, -70.5))


def test_a_magnetic_heading_without_a_position_is_not_used(tmp_path):
    exif = read_photo(photo(tmp_path / "m.jpg", exif=exif_with(gps={16: "M", 17: 90.0}))).exif
    assert exif.heading is None and exif.heading_magnetic == 90.0
    assert any("not converted" in w for w in exif.warnings)


def test_a_magnetic_heading_without_the_magnetic_model_package_is_a_warning(tmp_path, monkeypatch):
    import sys

    from tiling import declination

    declination._model.cache_clear()
    monkeypatch.setitem(sys.modules, "pygeomag", None)  # as if not installed
    gps = {1: "N", 2: (60.0, 0.0, 0.0), 3: "E", 4: (25.0, 0.0, 0.0), 16: "M", 17: 10.0}
    try:
        exif = read_photo(photo(tmp_path / "m.jpg", exif=exif_with(gps=gps))).exif
    finally:
        declination._model.cache_clear()
    assert exif.heading is None and exif.heading_magnetic == 10.0 and exif.lat == pytest.approx(60.0)
    assert any("pip install pygeomag" in w for w in exif.warnings)


def test_the_declination_date_falls_back_to_the_gps_date_then_the_file_time(tmp_path):
    gps = {1: "N", 2: (60.0, 0.0, 0.0), 3: "E", 4: (25.0, 0.0, 0.0), 16: "M", 17: 10.0, 29: "2016:03:01"}
    exif = read_photo(photo(tmp_path / "g.jpg", exif=exif_with(gps=gps))).exif
    assert exif.date == "2016-03-01" and exif.date_source == "GPSDateStamp"
    del gps[29]
    path = photo(tmp_path / "t.jpg", exif=exif_with(gps=gps))
    os.utime(path, (dt.datetime(2021, 6, 1).timestamp(),) * 2)
    exif = read_photo(path).exif
    assert exif.date == "2021-06-01" and exif.date_source == "file time"
    assert any("file time" in w for w in exif.warnings)


# -- panoramas -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def street(tmp_path_factory):
    """A renderer of a small synthetic world and a street position in it."""
    from synthetic_world.io import make_world
    from synthetic_world.render import Renderer
    from synthetic_world.world import WorldConfig, street_positions

    world = make_world(WorldConfig(seed=5, size_m=400))
    x, y = street_positions(world, 1, np.random.default_rng(0), margin_m=120)[0]
    return Renderer(world), float(x), float(y), tmp_path_factory.mktemp("panoramas")


def _save(path: Path, rgb: np.ndarray, xmp: bytes | None = None, exif: Image.Exif | None = None) -> Path:
    kwargs: dict = {"quality": 95}
    if xmp is not None:
        kwargs["xmp"] = xmp
    if exif is not None:
        kwargs["exif"] = exif
    Image.fromarray(rgb).save(path, **kwargs)
    return path


def _distance(a, b) -> float:
    return float((a - b).abs().mean())


def test_a_2to1_panorama_is_a_full_sphere_cut_to_the_models_band(street):
    from synthetic_world.render import PanoramaSpec

    renderer, x, y, tmp = street
    ground = GroundInput((128, 512))  # no metadata: the +-30 degree band of the synthetic world
    band = renderer.panorama(x, y, 0.0, PanoramaSpec(128, 768, 30.0, -30.0))  # what the model was trained on
    strip = ground.tensor(read_photo(_save(tmp / "strip.jpg", band), ground))
    full = renderer.panorama(x, y, 0.0, PanoramaSpec(384, 768, 90.0, -90.0))
    sphere = read_photo(_save(tmp / "sphere.jpg", full, exif=exif_with(gps={16: "T", 17: 180.0})), ground)
    assert sphere.view.kind == "panorama" and sphere.view.reason == "aspect 2.00:1"
    assert sphere.view.panorama.elevation == (90.0, -90.0) and sphere.view.heading_known
    x_sphere = ground.tensor(sphere)
    squeezed = ground.tensor(read_photo(sphere.path, ground, mode="photo"))  # what a 90-degree reading gives
    assert _distance(x_sphere, strip) < 0.2 * _distance(squeezed, strip)
    turned = ground.tensor(read_photo(_save(tmp / "turned.jpg", full, exif=exif_with(gps={16: "T", 17: 270.0})),
                                      ground))
    assert _distance(turned, strip) > 3 * _distance(x_sphere, strip)  # a heading rolls it


def test_gpano_metadata_gives_the_crop_and_heading_of_a_panorama(street):
    from synthetic_world.render import PanoramaSpec

    renderer, x, y, tmp = street
    ground = GroundInput((128, 512))
    band = renderer.panorama(x, y, 0.0, PanoramaSpec(128, 768, 30.0, -30.0))
    strip = ground.tensor(read_photo(_save(tmp / "strip2.jpg", band), ground))
    # column 0 faces east; rows span +60..-45 degrees of a 768x384 sphere (rows 64..288)
    cropped = renderer.panorama(x, y, 90.0, PanoramaSpec(224, 768, 60.0, -45.0))
    xmp = gpano_xmp((768, 384), crop=(0, 64, 768, 224), heading_deg=270.0)
    pano = read_photo(_save(tmp / "gpano.jpg", cropped, xmp=xmp), ground)
    assert pano.view.kind == "panorama" and pano.view.reason == "GPano"
    assert pano.view.panorama.elevation == pytest.approx((60.0, -45.0))
    assert pano.view.panorama.azimuth0_deg == pytest.approx(90.0)
    assert pano.view.panorama.heading_source == "GPano PoseHeadingDegrees"
    north_aligned = ground.tensor(pano)
    control = ground.tensor(read_photo(_save(tmp / "nohead.jpg", cropped), ground, mode="panorama"))
    assert _distance(north_aligned, strip) < 0.2 * _distance(control, strip)


def test_a_panorama_without_a_heading_is_assumed_north_aligned_and_says_so(street):
    from synthetic_world.render import PanoramaSpec

    renderer, x, y, tmp = street
    full = renderer.panorama(x, y, 0.0, PanoramaSpec(192, 384, 90.0, -90.0))
    pano = read_photo(_save(tmp / "plain.jpg", full))
    assert pano.view.kind == "panorama" and not pano.view.heading_known
    assert pano.view.panorama.heading_source.startswith("none")


def test_partial_gpano_panoramas_are_limited_views_and_overrides_win(street, tmp_path):
    renderer, x, y, _ = street
    wide = renderer.panorama(x, y)[:, :256]  # 180 degrees of a 512-column sphere
    xmp = gpano_xmp((512, 256), crop=(0, 64, 256, 128))
    half = read_photo(_save(tmp_path / "half.jpg", wide, xmp=xmp))
    assert half.view.kind == "fov" and half.view.fov_deg == pytest.approx(180.0) and half.view.fov_source == "GPano"
    forced = read_photo(photo(tmp_path / "square.jpg", size=(200, 200)), mode="panorama")
    assert forced.view.kind == "panorama" and forced.view.reason == "--panorama"


# -- formats and limits -------------------------------------------------------------------------------------

def test_heic_written_by_pillow_heif_is_read_with_its_exif(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    del pillow_heif
    rgb = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    gps = {1: "N", 2: (48.0, 8.0, 0.0), 3: "E", 4: (11.0, 30.0, 0.0), 16: "T", 17: 75.0}
    path = tmp_path / "IMG_0001.HEIC"
    Image.fromarray(rgb).save(path, format="HEIF", exif=exif_with(gps=gps, sub={0xA405: 26}).tobytes())
    p = read_photo(path)
    assert p.size == (400, 300) and p.image.mode == "RGB"
    assert (p.exif.lat, p.exif.lon) == pytest.approx((48.1333, 11.5), abs=1e-4) and p.exif.heading == 75.0
    assert p.view.fov_deg == pytest.approx(67.4, abs=0.3)
    assert collect_photos([tmp_path]) == [path]


def test_a_photo_over_the_pixel_limit_is_refused_before_decoding(tmp_path):
    side = int(math.sqrt(MAX_PHOTO_PIXELS)) + 100
    path = tmp_path / "huge.png"
    Image.new("1", (side, side)).save(path)  # a real PNG, 1 bit per pixel: small on disk
    with pytest.raises(PhotoError) as err:
        read_photo(path)
    assert str(path) in str(err.value) and "over the limit" in str(err.value)


def test_unreadable_photos_raise_errors_naming_the_file_and_the_real_reason(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(photo(tmp_path / "full.jpg", size=(400, 300)).read_bytes()[:600])
    loop = tmp_path / "loop.jpg"
    os.symlink(loop, loop)
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    cases = {text: "not an image", truncated: "truncated or corrupt", tmp_path / "missing.jpg": "no such file",
             loop: "symbolic link loop", folder: "is a folder"}
    for path, reason in cases.items():
        with pytest.raises(PhotoError) as err:
            read_photo(path)
        assert str(err.value).startswith(f"{path}: ") and reason in str(err.value)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to become another user")
def test_a_photo_that_cannot_be_read_says_permission_denied(tmp_path):
    import pwd

    path = photo(tmp_path / "secret.jpg")
    os.chmod(path, 0o600)
    os.chmod(tmp_path, 0o755)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child becomes 'nobody', who may not read the file
        os.close(read)
        message = "no error"
        try:
            os.setuid(pwd.getpwnam("nobody").pw_uid)
            read_photo(path)
        except PhotoError as e:
            message = str(e)
        except BaseException as e:  # noqa: BLE001 - reported to the parent as a failure
            message = f"unexpected {type(e).__name__}: {e}"
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        message = f.read()
    os.waitpid(pid, 0)
    assert message == f"{path}: permission denied"


def test_folders_are_searched_recursively_naming_every_skipped_file(tmp_path):
    (tmp_path / "a" / "deeper").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    one = photo(tmp_path / "a" / "IMG_0001.jpg")
    two = photo(tmp_path / "b" / "IMG_0001.jpg")
    deep = photo(tmp_path / "a" / "deeper" / "x.png")
    (tmp_path / "a" / "notes.txt").write_text("field notes")
    os.symlink(tmp_path, tmp_path / "a" / "back")  # a loop back to the top
    skipped: list = []
    found = collect_photos([tmp_path, one], skipped)
    assert found == [one, deep, two]  # sorted by name per folder; `one` given twice is located once
    reasons = {Path(p).name: r for p, r in skipped}
    assert "not a photo type" in reasons["notes.txt"] and "loop" in reasons["back"]


# -- corrupt EXIF: every input a clear message ---------------------------------------------------------------

def _jpeg_with_exif(exif: Image.Exif) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((48, 64, 3), 128, np.uint8)).save(buf, format="JPEG", exif=exif)
    return buf.getvalue()


def test_garbage_exif_values_are_ignored_with_warnings_naming_the_file(tmp_path):
    ex = exif_with(gps={1: "N", 2: (IFDRational(45, 0), 8.0, 30.5), 3: "E", 4: (15.0, 0.0, 1.0), 17: 999.0},
                   sub={0xA405: "long", 0x920A: IFDRational(1, 0), 0xA20E: -5.0})
    path = photo(tmp_path / "garbage.jpg", exif=ex)
    exif = read_photo(path).exif
    assert exif.lat is None and exif.heading is None and exif.as_json() is None
    assert exif.warnings and all(w.startswith(f"{path}: ") for w in exif.warnings)
    assert any("GPSImgDirection 999" in w for w in exif.warnings)


def test_fuzzed_exif_never_raises_anything_but_a_photo_error(tmp_path):
    gps = {1: "N", 2: (60.0, 8.0, 48.14), 3: "E", 4: (24.0, 54.0, 24.38), 16: "M", 17: 56.0, 29: "2022:08:14"}
    good = _jpeg_with_exif(exif_with(gps=gps, sub={0xA405: 26, 0x9003: "2022:08:14 14:12:31"}, orientation=6))
    start = good.index(b"Exif\x00\x00")
    end = start + int.from_bytes(good[start - 2:start], "big")
    rng = np.random.default_rng(2026)
    variants = [good[:n] for n in (start + 8, start + 40, end - 10, len(good) // 2)]  # truncated
    for _ in range(150):
        data = bytearray(good)
        for pos in rng.integers(start + 6, end - 2, size=int(rng.integers(1, 12))):
            data[pos] = int(rng.integers(0, 256))
        variants.append(bytes(data))
    huge = exif_with(gps={1: "N", 2: (1e300, 0.0, 0.0), 3: "X", 4: (2**31, 0, 0), 17: 1e308},
                     sub={0xA405: 2**31 - 1, 0x920A: 1e-300, 0xA20E: 1e300, 0x9003: "yesterday"}, orientation=99)
    variants.append(_jpeg_with_exif(huge))
    outcomes = {"read": 0, "refused": 0}
    for i, data in enumerate(variants):
        path = tmp_path / f"fuzz_{i:03d}.jpg"
        path.write_bytes(data)
        try:
            p = read_photo(path)
        except PhotoError as e:
            assert str(e).startswith(f"{path}: ")
            outcomes["refused"] += 1
        else:
            assert all(w.startswith(f"{path}: ") and "\n" not in w for w in p.exif.warnings)
            assert p.image.mode == "RGB"
            outcomes["read"] += 1
    assert outcomes["read"] > 50 and outcomes["refused"] > 0


@pytest.mark.parametrize("name, image", [
    ("grey16.png", lambda: Image.fromarray(np.arange(1200 * 1600, dtype=np.uint16).reshape(1200, 1600))),
    ("palette.png", lambda: Image.new("RGB", (1600, 1200), (10, 200, 30)).convert("P")),
    ("bilevel.tif", lambda: Image.new("1", (1600, 1200))),
    ("alpha.png", lambda: Image.new("RGBA", (1600, 1200), (10, 20, 30, 128))),
    ("cmyk.jpg", lambda: Image.new("CMYK", (1600, 1200), (10, 20, 30, 40))),
    ("photo.webp", lambda: Image.new("RGB", (1600, 1200))),
])
def test_pixel_formats_are_decoded_reduced_to_rgb(tmp_path, name, image):
    path = tmp_path / name
    image().save(path)
    p = read_photo(path, GroundInput(GROUND))
    assert p.image.mode == "RGB" and p.size == (1600, 1200) and p.image.size[0] < 1600


def test_float_images_are_refused_as_an_unsupported_pixel_format(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.zeros((120, 160), np.float32)).save(path)
    with pytest.raises(PhotoError, match=r"float\.tif: unsupported pixel format"):
        read_photo(path)
