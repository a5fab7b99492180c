"""The SAIG Processing algorithms, run in QGIS with the real backend on a small generated world."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import stat
import struct
import subprocess

import pytest
from conftest import (
    BACKEND_PYTHON,
    CHIP_M,
    ORTHO_CRS,
    ORTHO_ORIGIN,
    ORTHO_PIXELS,
    STRIDE_M,
    run_backend_cli,
    write_backend_that_stops_after_two_photos,
    write_backend_without_schema,
)
from qgis.core import (
    QgsApplication,
    QgsDistanceArea,
    QgsPointXY,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
    QgsWkbTypes,
)

from qgis_saig_plugin import backend

ORTHO_EXTENT = (ORTHO_ORIGIN[0], ORTHO_ORIGIN[1] - ORTHO_PIXELS, ORTHO_ORIGIN[0] + ORTHO_PIXELS, ORTHO_ORIGIN[1])


class RecordingFeedback(QgsProcessingFeedback):
    """Keeps what the algorithm reported; optionally cancels on the first progress update."""

    def __init__(self, cancel_on_progress: bool = False) -> None:
        super().__init__()
        self.errors: list[str] = []
        self.messages: list[str] = []
        if cancel_on_progress:
            self.progressChanged.connect(lambda _value: self.cancel())

    def reportError(self, error, fatalError=False):
        self.errors.append(error)

    def pushInfo(self, info):
        self.messages.append(info)

    def pushWarning(self, warning):
        self.messages.append(warning)

    def pushCommandInfo(self, info):
        self.messages.append(info)


def run_algorithm(algorithm_id: str, parameters: dict, feedback: RecordingFeedback | None = None):
    """Run one algorithm as Processing does; returns (ok, results, feedback)."""
    algorithm = QgsApplication.processingRegistry().createAlgorithmById(algorithm_id)
    assert algorithm is not None, algorithm_id
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    feedback = feedback or RecordingFeedback()
    results, ok = algorithm.run(parameters, context, feedback)
    return ok, results, feedback


def features(path: str) -> list:
    layer = QgsVectorLayer(path, "out", "ogr")
    assert layer.isValid(), path
    return list(layer.getFeatures())


def test_provider_offers_the_three_algorithms_with_help_and_exact_parameters():
    registry = QgsApplication.processingRegistry()
    expected = {
        "saig:tileorthophoto": ["INPUT", "CHIP_SIZE_M", "STRIDE_M", "OUTPUT"],
        "saig:buildindex": ["INPUT", "CHECKPOINT", "CHIP_SIZE_M", "STRIDE_M", "DEVICE", "OUTPUT_DIR"],
        "saig:geolocatephotos": ["PHOTOS", "INDEX", "CHECKPOINT", "TOP_K", "PRIOR_RADIUS_M", "DEVICE",
                                 "INPUT_MODE", "RUN_FILE", "RESUME", "OUTPUT", "EXIF_OUTPUT", "HEATMAP_DIR"],
    }
    assert registry.providerById("saig").name() == "SAIG"
    for algorithm_id, names in expected.items():
        algorithm = registry.algorithmById(algorithm_id)
        assert algorithm is not None, algorithm_id
        assert [p.name() for p in algorithm.parameterDefinitions()] == names
        assert len(algorithm.shortHelpString()) > 100
    geolocate = registry.algorithmById("saig:geolocatephotos")
    for name in ("CHECKPOINT", "PRIOR_RADIUS_M"):
        assert geolocate.parameterDefinition(name).flags() & geolocate.parameterDefinition(name).FlagOptional


def test_tileorthophoto_writes_the_chip_footprints_of_the_cli(assets, tmp_path):
    out = str(tmp_path / "chips.gpkg")
    ok, results, feedback = run_algorithm("saig:tileorthophoto", {
        "INPUT": [str(assets.ortho)], "CHIP_SIZE_M": CHIP_M, "STRIDE_M": STRIDE_M, "OUTPUT": out})
    assert ok, feedback.errors
    cli = json.loads(run_backend_cli("tile", str(assets.ortho), "--chip-size-m", str(CHIP_M), "--stride-m",
                                     str(STRIDE_M), "--out", str(tmp_path / "cli.gpkg"),
                                     "--json").stdout.splitlines()[-1])
    layer = QgsVectorLayer(results["OUTPUT"], "chips", "ogr")
    assert layer.crs().authid() == ORTHO_CRS == cli["crs"]
    assert QgsWkbTypes.geometryType(layer.wkbType()) == QgsWkbTypes.GeometryType.PolygonGeometry
    assert layer.featureCount() == results["CHIP_COUNT"] == cli["count"] > 0
    for f in layer.getFeatures():
        assert f.geometry().area() == pytest.approx(CHIP_M * CHIP_M)
        centre = f.geometry().centroid().asPoint()
        assert (centre.x(), centre.y()) == pytest.approx((f["x"], f["y"]))
        assert ORTHO_EXTENT[0] <= f["x"] <= ORTHO_EXTENT[2] and ORTHO_EXTENT[1] <= f["y"] <= ORTHO_EXTENT[3]
        assert f["source"] == str(assets.ortho)


def test_tileorthophoto_refuses_a_zero_stride_before_running_anything(assets, tmp_path):
    out = tmp_path / "chips.gpkg"
    ok, _, feedback = run_algorithm("saig:tileorthophoto", {
        "INPUT": [str(assets.ortho)], "CHIP_SIZE_M": CHIP_M, "STRIDE_M": 0, "OUTPUT": str(out)})
    assert not ok and not out.exists()
    assert any("Stride" in e for e in feedback.errors)


def test_buildindex_writes_an_index_folder_for_the_checkpoint(assets, tmp_path):
    out = tmp_path / "my index"
    ok, results, feedback = run_algorithm("saig:buildindex", {
        "INPUT": [str(assets.ortho)], "CHECKPOINT": str(assets.checkpoint), "CHIP_SIZE_M": CHIP_M,
        "STRIDE_M": STRIDE_M, "DEVICE": 2, "OUTPUT_DIR": str(out)})
    assert ok, feedback.errors
    assert results["OUTPUT_DIR"] == str(out) and results["CHIP_COUNT"] > 0 and results["CRS"] == ORTHO_CRS
    info = json.loads(run_backend_cli("index", "info", str(out), "--json").stdout.splitlines()[-1])
    assert info.get("count", results["CHIP_COUNT"]) == results["CHIP_COUNT"]
    model = json.loads(run_backend_cli("info", str(assets.checkpoint), "--json").stdout.splitlines()[-1])
    assert results["FINGERPRINT"] == model["fingerprint"]


def test_buildindex_chip_size_defaults_to_the_checkpoints_footprint_and_another_is_warned_about(assets, tmp_path):
    ok, results, feedback = run_algorithm("saig:buildindex", {
        "INPUT": [str(assets.ortho)], "CHECKPOINT": str(assets.checkpoint), "DEVICE": 2,
        "OUTPUT_DIR": str(tmp_path / "default")})
    assert ok, feedback.errors
    info = json.loads(run_backend_cli("index", "info", str(tmp_path / "default"), "--json").stdout.splitlines()[-1])
    assert info["chips"]["chip_size_m"] == CHIP_M and info["chips"]["stride_m"] == CHIP_M / 4
    assert any(f"chip size {CHIP_M:g} m: the aerial footprint recorded" in m for m in feedback.messages)
    ok, results, feedback = run_algorithm("saig:buildindex", {
        "INPUT": [str(assets.ortho)], "CHECKPOINT": str(assets.checkpoint), "CHIP_SIZE_M": 100.0, "STRIDE_M": 50.0,
        "DEVICE": 2, "OUTPUT_DIR": str(tmp_path / "bigger")})
    assert ok, feedback.errors  # allowed ...
    assert any("--chip-size-m 100 differs by 56%" in m for m in feedback.messages)  # ... with a warning


def _geolocate(world, tmp_path, **extra):
    params = {"PHOTOS": [str(world.photos[0].rsplit("/", 1)[0])], "INDEX": str(world.index), "TOP_K": 5,
              "DEVICE": 2, "OUTPUT": str(tmp_path / "candidates.gpkg")}
    params.update(extra)
    return run_algorithm("saig:geolocatephotos", params)


def test_geolocatephotos_ranks_candidates_for_every_photo_of_a_folder(world, tmp_path):
    heatmaps = tmp_path / "heatmaps"
    ok, results, feedback = _geolocate(world, tmp_path, EXIF_OUTPUT=str(tmp_path / "exif.gpkg"),
                                       HEATMAP_DIR=str(heatmaps))
    assert ok, feedback.errors
    assert results["PHOTOS_LOCATED"] == 3 and results["PHOTOS_FAILED"] == 0
    layer = QgsVectorLayer(results["OUTPUT"], "candidates", "ogr")
    assert layer.crs().authid() == "EPSG:4326"
    assert layer.featureCount() == 3 * 5
    by_photo: dict = {}
    for f in layer.getFeatures():
        by_photo.setdefault(f["photo"], []).append(f)
    assert sorted(by_photo) == sorted(world.photos)
    distance = QgsDistanceArea()
    distance.setEllipsoid("WGS84")
    for photo, rows in by_photo.items():
        rows.sort(key=lambda f: f["rank"])
        assert [f["rank"] for f in rows] == [1, 2, 3, 4, 5]
        scores = [f["score"] for f in rows]
        assert scores == sorted(scores, reverse=True)
        for f in rows:
            point = f.geometry().asPoint()
            assert (point.x(), point.y()) == pytest.approx((f["lon"], f["lat"]))
            assert ORTHO_EXTENT[0] <= f["x"] <= ORTHO_EXTENT[2] and ORTHO_EXTENT[1] <= f["y"] <= ORTHO_EXTENT[3]
            if photo in world.exif:
                lon, lat, _ = world.exif[photo]
                expected = distance.measureLine(QgsPointXY(lon, lat), point)
                assert f["distance_m"] == pytest.approx(expected, rel=0.01, abs=1.0)
            else:
                assert f["distance_m"] is None or str(f["distance_m"]) == "NULL"

    cli_out = tmp_path / "cli.gpkg"
    run_backend_cli("locate", os.path.dirname(world.photos[0]), "--index", str(world.index), "-k", "5",
                    "--device", "cpu", "--out", str(cli_out))
    cli = {(f["photo"], f["rank"]): (f["chip_id"], f["lon"], f["lat"])
           for f in features(f"{cli_out}|layername=candidates")}
    ours = {(f["photo"], f["rank"]): (f["chip_id"], f["lon"], f["lat"]) for f in layer.getFeatures()}
    assert ours == cli  # the same candidates as the command line's own GeoPackage

    exif = {f["photo"]: f for f in features(results["EXIF_OUTPUT"])}
    assert sorted(exif) == sorted(world.exif)
    for photo, (lon, lat, heading) in world.exif.items():
        assert (exif[photo]["lon"], exif[photo]["lat"]) == pytest.approx((lon, lat), abs=1e-5)
        assert exif[photo]["heading"] == pytest.approx(heading, abs=0.01)

    assert len(results["HEATMAPS"]) == 3 and all(p.startswith(str(heatmaps)) for p in results["HEATMAPS"])
    for path in results["HEATMAPS"]:
        stem = os.path.splitext(os.path.basename(path))[0]
        photo = next(p for p in world.photos if os.path.splitext(os.path.basename(p))[0] in stem)
        best = min(by_photo[photo], key=lambda f: f["rank"])
        assert_heatmap_peaks_at(path, best["x"], best["y"])


def test_geolocatephotos_takes_photo_types_and_candidate_fields_from_the_backend(world, backend_python, tmp_path,
                                                                                monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(world.photos[0], folder / "a.jpg")
    subprocess.run([str(backend_python), "-c", "import sys; from PIL import Image; "
                    "Image.open(sys.argv[1]).save(sys.argv[2])", world.photos[1], str(folder / "b.webp")],
                   check=True, timeout=120)
    (folder / "notes.txt").write_text("not a photo")
    asked = []
    real_run_backend = backend.run_backend

    def recording_run_backend(args, **kwargs):
        asked.append([str(a) for a in args])
        return real_run_backend(args, **kwargs)

    monkeypatch.setattr(backend, "_CONTRACTS", {})  # as in a session that has not asked this backend yet
    monkeypatch.setattr(backend, "run_backend", recording_run_backend)
    ok, results, feedback = _geolocate(world, tmp_path, PHOTOS=[str(folder)], TOP_K=2)
    assert ok, feedback.errors
    assert ["schema", "--json"] in asked  # the plugin asked the backend what it reads and writes
    contract = backend.backend_contract()
    assert ".webp" in contract["photo_suffixes"]
    assert results["PHOTOS_LOCATED"] == 2 and results["PHOTOS_FAILED"] == 0
    layer = QgsVectorLayer(results["OUTPUT"], "candidates", "ogr")
    assert {f["photo"] for f in layer.getFeatures()} == {str(folder / "a.jpg"), str(folder / "b.webp")}
    names = [n for n in layer.fields().names() if n != "fid"]
    assert names == ["photo", "photo_name", *contract["candidate_result_fields"], "heatmap"]
    assert asked.count(["schema", "--json"]) == 1
    ok, _, feedback = _geolocate(world, tmp_path, PHOTOS=[str(folder / "a.jpg")], TOP_K=1,
                                 OUTPUT=str(tmp_path / "again.gpkg"))
    assert ok, feedback.errors
    assert asked.count(["schema", "--json"]) == 1  # once per backend, not once per run


def test_a_backend_older_than_saig_schema_fails_with_a_clear_message(world, tmp_path, monkeypatch):
    monkeypatch.setenv("SAIG_PYTHON", str(write_backend_without_schema(tmp_path / "old" / "bin" / "python")))
    ok, _, feedback = _geolocate(world, tmp_path)
    assert not ok and not (tmp_path / "candidates.gpkg").exists()
    message = "\n".join(feedback.errors)
    assert "older than this plugin" in message and "Update saig-geolocate" in message, message
    assert "Traceback" not in message


def assert_heatmap_peaks_at(path: str, x: float, y: float) -> None:
    """The heatmap is on the chip grid (orthophoto CRS) and its maximum cell is centred on (x, y)."""
    from osgeo import gdal

    layer = QgsRasterLayer(path, "heatmap")
    assert layer.isValid() and layer.crs().authid() == ORTHO_CRS
    ds = gdal.Open(path)
    band = ds.GetRasterBand(1)
    assert band.DataType == gdal.GDT_Float32 and band.GetNoDataValue() is not None
    x0, dx, _, y0, _, dy = ds.GetGeoTransform()
    cols, rows = ds.RasterXSize, ds.RasterYSize
    values = struct.unpack(f"{cols * rows}f", band.ReadRaster(0, 0, cols, rows, buf_type=gdal.GDT_Float32))
    nodata = band.GetNoDataValue()
    valid = [(v, i) for i, v in enumerate(values) if not math.isnan(v) and v != nodata]
    assert valid, "heatmap has no valid cell"
    _, best = max(valid)
    cx, cy = x0 + (best % cols + 0.5) * dx, y0 + (best // cols + 0.5) * dy
    assert abs(cx - x) <= abs(dx) / 2 + 1e-6 and abs(cy - y) <= abs(dy) / 2 + 1e-6, (cx, cy, x, y)
    extent = layer.extent()
    assert extent.xMinimum() >= ORTHO_EXTENT[0] - CHIP_M and extent.xMaximum() <= ORTHO_EXTENT[2] + CHIP_M
    assert extent.yMinimum() >= ORTHO_EXTENT[1] - CHIP_M and extent.yMaximum() <= ORTHO_EXTENT[3] + CHIP_M


def test_toolbox_runs_load_candidates_and_heatmaps_styled_like_the_dock(world, tmp_path):
    from qgis.core import QgsProcessingOutputLayerDefinition

    algorithm = QgsApplication.processingRegistry().createAlgorithmById("saig:geolocatephotos")
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    feedback = RecordingFeedback()
    results, ok = algorithm.run({
        "PHOTOS": world.photos[:2], "INDEX": str(world.index), "TOP_K": 3, "DEVICE": 2,
        "OUTPUT": QgsProcessingOutputLayerDefinition(str(tmp_path / "c.gpkg"), QgsProject.instance()),
        "HEATMAP_DIR": str(tmp_path / "heatmaps")}, context, feedback)
    assert ok, feedback.errors
    to_load = context.layersToLoadOnCompletion()
    assert results["OUTPUT"] in to_load and all(h in to_load for h in results["HEATMAPS"])
    renderers = {}
    for source, details in to_load.items():  # what Processing does after a toolbox or batch run
        layer = QgsRasterLayer(source, details.name) if source.endswith(".tif") else QgsVectorLayer(source)
        details.postProcessor().postProcessLayer(layer, context, feedback)
        renderers[source] = layer.renderer().type()
    assert renderers[results["OUTPUT"]] == "graduatedSymbol"
    assert {renderers[h] for h in results["HEATMAPS"]} == {"singlebandpseudocolor"}


def test_geolocatephotos_with_a_prior_radius_keeps_candidates_near_the_exif_position(world, tmp_path):
    photo = world.photos[0]
    ok, results, feedback = _geolocate(world, tmp_path, PHOTOS=[photo], PRIOR_RADIUS_M=60.0, TOP_K=20)
    assert ok, feedback.errors
    rows = features(results["OUTPUT"])
    assert rows and all(f["photo"] == photo for f in rows)
    assert all(f["distance_m"] <= 60.0 + 1e-6 for f in rows)


def test_an_index_built_with_another_model_is_refused_with_no_output(world, tmp_path):
    ok, _, feedback = _geolocate(world, tmp_path, CHECKPOINT=str(world.other_checkpoint))
    assert not ok
    assert not (tmp_path / "candidates.gpkg").exists()
    assert any("fingerprint" in e.lower() for e in feedback.errors), feedback.errors


def test_an_unreadable_photo_alone_fails_with_its_name_and_no_output(world, tmp_path):
    ok, _, feedback = _geolocate(world, tmp_path, PHOTOS=[str(world.bad_photo)])
    assert not ok
    assert not (tmp_path / "candidates.gpkg").exists()
    assert any("broken.jpg" in e for e in feedback.errors), feedback.errors


def test_an_unreadable_photo_among_good_ones_is_reported_and_the_others_located(world, tmp_path):
    ok, results, feedback = _geolocate(world, tmp_path, PHOTOS=[str(world.bad_photo), world.photos[1]])
    assert ok, feedback.errors
    assert results["PHOTOS_LOCATED"] == 1 and results["PHOTOS_FAILED"] == 1
    assert {f["photo"] for f in features(results["OUTPUT"])} == {world.photos[1]}
    assert any("broken.jpg" in e for e in feedback.errors)


def test_cancel_during_geolocation_leaves_no_output(world, tmp_path):
    feedback = RecordingFeedback(cancel_on_progress=True)
    heatmaps = tmp_path / "heatmaps"
    params = {"PHOTOS": world.photos, "INDEX": str(world.index), "TOP_K": 5, "DEVICE": 2,
              "OUTPUT": str(tmp_path / "candidates.gpkg"), "HEATMAP_DIR": str(heatmaps)}
    ok, _, feedback = run_algorithm("saig:geolocatephotos", params, feedback)
    assert not ok and feedback.isCanceled()
    assert any("Canceled" in e for e in feedback.errors)
    assert not (tmp_path / "candidates.gpkg").exists() and not heatmaps.exists()


def test_cancel_during_index_build_leaves_no_index_folder(assets, tmp_path):
    out = tmp_path / "index"
    feedback = RecordingFeedback(cancel_on_progress=True)
    ok, _, feedback = run_algorithm("saig:buildindex", {
        "INPUT": [str(assets.ortho)], "CHECKPOINT": str(assets.checkpoint), "CHIP_SIZE_M": CHIP_M,
        "STRIDE_M": STRIDE_M, "DEVICE": 2, "OUTPUT_DIR": str(out)}, feedback)
    assert not ok and feedback.isCanceled() and not out.exists()
    assert any("Canceled" in e and "continue" in e for e in feedback.errors), feedback.errors


def test_an_output_in_a_missing_folder_fails_before_running_the_backend(world, tmp_path):
    ok, _, feedback = _geolocate(world, tmp_path, OUTPUT=str(tmp_path / "no" / "such" / "c.gpkg"))
    assert not ok and any("does not exist" in e and "such" in e for e in feedback.errors), feedback.errors
    assert not any(m.startswith("saig ") for m in feedback.messages)  # no backend command was run


def test_missing_index_folder_is_a_clear_error(assets, tmp_path):
    ok, _, feedback = run_algorithm("saig:geolocatephotos", {
        "PHOTOS": assets.photos[:1], "INDEX": str(tmp_path / "nowhere"), "OUTPUT": str(tmp_path / "c.gpkg")})
    assert not ok and any("nowhere" in e for e in feedback.errors)


def test_missing_backend_fails_with_the_fix_and_no_output(assets, tmp_path, monkeypatch):
    monkeypatch.setenv("SAIG_PYTHON", str(tmp_path / "gone" / "bin" / "python"))
    out = tmp_path / "chips.gpkg"
    ok, _, feedback = run_algorithm("saig:tileorthophoto", {
        "INPUT": [str(assets.ortho)], "CHIP_SIZE_M": CHIP_M, "STRIDE_M": STRIDE_M, "OUTPUT": str(out)})
    assert not ok and not out.exists()
    message = "\n".join(feedback.errors)
    assert "does not exist" in message and "SAIG_PYTHON" in message


@pytest.mark.parametrize("death, why", [("exit 1", "exit code 1"), ("kill -9 $$", "killed (signal 9)")])
def test_a_backend_that_stops_after_two_photos_is_a_partial_result_with_the_missing_photo(
        world, tmp_path, monkeypatch, death, why):
    stand_in = write_backend_that_stops_after_two_photos(tmp_path / "stops" / "bin" / "python", death)
    monkeypatch.setenv("SAIG_PYTHON", str(stand_in))
    monkeypatch.setattr(backend, "_CONTRACTS", {})
    ok, results, feedback = _geolocate(world, tmp_path, HEATMAP_DIR=str(tmp_path / "heatmaps"))
    assert ok, feedback.errors  # what was located is kept ...
    assert results["PHOTOS_LOCATED"] == 2 and results["PHOTOS_FAILED"] == 0
    assert results["PHOTOS_MISSING"] == 1  # ... and the photo the backend never reached is counted
    located = {f["photo"] for f in features(results["OUTPUT"])}
    assert located == set(world.photos[:2]) and len(results["HEATMAPS"]) == 2
    warning = "\n".join(feedback.errors)
    assert "Partial result: 1 of 3 photos" in warning and why in warning and world.photos[2] in warning
    assert not any("3 photos located" in m or "located 3" in m for m in feedback.messages)


def test_resume_with_a_run_geopackage_finishes_an_interrupted_run_without_redoing_photos(
        world, tmp_path, monkeypatch):
    run_file = str(tmp_path / "run" / "backend.gpkg")
    heatmaps = str(tmp_path / "heatmaps")
    monkeypatch.setenv("SAIG_PYTHON", str(write_backend_that_stops_after_two_photos(
        tmp_path / "stops" / "bin" / "python", "kill -9 $$")))
    monkeypatch.setattr(backend, "_CONTRACTS", {})
    ok, first, feedback = _geolocate(world, tmp_path, RUN_FILE=run_file, HEATMAP_DIR=heatmaps, INPUT_MODE=2)
    assert ok and first["PHOTOS_MISSING"] == 1, feedback.errors
    assert "--photo" in " ".join(feedback.messages)  # the input mode is passed through
    monkeypatch.setenv("SAIG_PYTHON", str(BACKEND_PYTHON))
    monkeypatch.setattr(backend, "_CONTRACTS", {})
    ok, done, feedback = _geolocate(world, tmp_path, RUN_FILE=run_file, HEATMAP_DIR=heatmaps, INPUT_MODE=2,
                                    RESUME=True, OUTPUT=str(tmp_path / "all.gpkg"))
    assert ok, feedback.errors
    assert "--resume" in " ".join(feedback.messages)
    assert done["PHOTOS_LOCATED"] == 3 and done["PHOTOS_MISSING"] == 0
    # the photos committed before the stop are not redone (the third may have been committed just before it)
    assert any(re.match(r"resuming: [23] photo\(s\) already located", m) for m in feedback.messages)
    assert sorted({f["photo"] for f in features(done["OUTPUT"])}) == sorted(world.photos)
    assert len(done["HEATMAPS"]) == 3 and all(os.path.isfile(p) for p in done["HEATMAPS"])


def test_photos_come_from_the_backend_so_folders_are_searched_recursively(world, tmp_path):
    nested = tmp_path / "trip" / "day1" / "morning"
    nested.mkdir(parents=True)
    shutil.copy(world.photos[0], nested / "a.jpg")
    shutil.copy(world.photos[1], tmp_path / "trip" / "b.jpg")
    (tmp_path / "trip" / "notes.txt").write_text("not a photo")
    ok, results, feedback = _geolocate(world, tmp_path, PHOTOS=[str(tmp_path / "trip")], TOP_K=1)
    assert ok, feedback.errors
    assert results["PHOTOS_LOCATED"] == 2 and results["PHOTOS_MISSING"] == 0
    assert any("notes.txt: skipped: not a photo type" in m for m in feedback.messages)


def test_candidates_keep_the_grid_crs_next_to_their_x_and_y(world, tmp_path):
    ok, results, feedback = _geolocate(world, tmp_path, PHOTOS=world.photos[:1], TOP_K=2)
    assert ok, feedback.errors
    rows = features(results["OUTPUT"])
    assert {f["grid_crs"] for f in rows} == {ORTHO_CRS}
    names = rows[0].fields().names()
    assert names.index("grid_crs") == names.index("y") + 1


def test_killed_backend_during_index_build_is_probably_out_of_memory(assets, tmp_path, monkeypatch):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\n"
                    "echo '{\"event\": \"progress\", \"stage\": \"encode\", \"fraction\": 0.2}'\nkill -9 $$\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("SAIG_PYTHON", str(fake))
    out = tmp_path / "index"
    ok, _, feedback = run_algorithm("saig:buildindex", {
        "INPUT": [str(assets.ortho)], "CHECKPOINT": str(assets.checkpoint), "CHIP_SIZE_M": CHIP_M,
        "STRIDE_M": STRIDE_M, "OUTPUT_DIR": str(out)})
    assert not ok and not out.exists()
    assert any("probably out of memory" in e for e in feedback.errors), feedback.errors
