"""The SAIG dock driven through its widgets and signals, with real tasks and the real backend."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import (
    BACKEND_PYTHON,
    CHIP_M,
    ORTHO_CRS,
    STRIDE_M,
    SignalRecorder,
    wait_until,
    write_backend_that_stops_after_two_photos,
    write_backend_without_schema,
)
from qgis.core import (
    QgsColorRampShader,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsProject,
    QgsRasterLayer,
)
from qgis.gui import QgsMapCanvas, QgsMessageBar

from qgis_saig_plugin import backend
from qgis_saig_plugin.dock import SaigDock


@pytest.fixture
def dock():
    """A dock on a real map canvas and message bar; the project is emptied afterwards."""
    canvas = QgsMapCanvas()
    canvas.setDestinationCrs(QgsCoordinateReferenceSystem(ORTHO_CRS))
    canvas.resize(600, 400)
    bar = QgsMessageBar()
    selected: list = []
    widget = SaigDock(canvas, bar, lambda: list(selected))
    widget.selected = selected
    yield widget
    if widget.is_running():
        widget.cancel()
        wait_until(lambda: not widget.is_running(), 30, "the job to stop")
    QgsProject.instance().clear()
    backend.set_configured_python("")
    bar.clearWidgets()  # a message bar destroyed with items still shown crashes under pytest (sip)


def run_dock(dock, results_dir, timeout: float):
    """Click Run with results written to ``results_dir``; wait for run_finished and return (ok, text)."""
    dock.results_dir.setFilePath(str(results_dir))
    finished = SignalRecorder(dock.run_finished)
    dock.run_button.click()
    return finished.wait(timeout)


def backend_children(command: bytes = b"locate") -> list:
    """Process ids of running `python -m saig_core ... COMMAND` children of this process (the dock's own
    background questions, such as backend-info for the checkpoint's chip size, are not the run)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == os.getpid() and fields[0] != "Z" and b"saig_core" in cmdline and command in cmdline:
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def set_photos(dock: SaigDock, photos: list) -> None:
    dock.photos.setFilePath(" ".join(f'"{p}"' for p in photos))


def message_texts(dock: SaigDock) -> str:
    item = dock.message_bar.currentItem()
    return f"{item.title()} {item.text()}" if item is not None else ""


def test_prior_radius_is_only_editable_when_enabled(dock):
    assert not dock.prior_radius.isEnabled()
    dock.use_prior.setChecked(True)
    assert dock.prior_radius.isEnabled()


def test_run_without_photos_warns_and_starts_nothing(dock, world):
    dock.index_dir.setFilePath(str(world.index))
    dock.run_button.click()
    assert not dock.is_running()
    assert "photos" in message_texts(dock).lower()


def test_check_backend_reports_version_torch_and_device(dock, assets):
    dock.checkpoint.setFilePath(str(assets.checkpoint))
    checked = SignalRecorder(dock.backend_checked)
    dock.check_backend_button.click()
    ok, text = checked.wait(60)
    assert ok, text
    assert "torch 2." in text and "CPU" in text and "saig_micro" in text
    assert "torch 2." in dock.backend_status.text()


def test_the_photo_dialog_offers_the_photo_types_the_backend_reads(dock, backend_python):
    contract = backend.backend_contract()
    wait_until(lambda: dock.photos.filter().startswith("Photos ("), 30, "the backend's photo types")
    offered = dock.photos.filter()
    assert "*.webp" in offered and "*.JPG" in offered
    for suffix in contract["photo_suffixes"]:
        assert f"*{suffix} " in offered or f"*{suffix})" in offered


def test_a_backend_older_than_saig_schema_is_explained_in_the_backend_status(dock, tmp_path):
    dock.backend_python.setFilePath(str(write_backend_without_schema(tmp_path / "old" / "bin" / "python")))
    wait_until(lambda: "older than this plugin" in dock.backend_status.text(), 30, "the explanation")
    assert "Update saig-geolocate" in dock.backend_status.text()
    assert dock.photos.filter() == "All files (*)"


def test_check_backend_with_a_missing_python_explains_the_fix(dock, tmp_path):
    missing = str(tmp_path / "venv" / "bin" / "python")
    dock.backend_python.setFilePath(missing)
    assert backend.configured_python() == missing  # the field is the plugin setting
    checked = SignalRecorder(dock.backend_checked)
    dock.check_backend_button.click()
    ok, text = checked.wait(30)
    assert not ok and "does not exist" in text and missing in text
    assert "does not exist" in message_texts(dock)


def test_build_from_selected_rasters_builds_and_selects_the_index(dock, assets, tmp_path):
    layer = QgsRasterLayer(str(assets.ortho), "ortho")
    QgsProject.instance().addMapLayer(layer)
    dock.selected.append(layer)
    dock.checkpoint.setFilePath(str(assets.checkpoint))
    dock.chip_size.setValue(CHIP_M)
    dock.stride.setValue(STRIDE_M)
    dock.device.setCurrentIndex(2)
    target = tmp_path / "built index"
    dock.index_dir.setFilePath(str(target))
    built = SignalRecorder(dock.build_finished)
    dock.build_button.click()
    assert dock.is_running() and not dock.run_button.isEnabled() and dock.cancel_button.isEnabled()
    seen = []
    dock.job.feedback.info.connect(seen.append)
    ok, text = built.wait(120)
    assert ok, text
    assert any("encoding on CPU" in line for line in seen), seen  # the backend's device, shown while running
    assert dock.index_dir.filePath() == str(target) and target.is_dir()
    assert dock.progress.value() == 100 and dock.run_button.isEnabled()


def test_build_without_a_selected_raster_asks_for_one(dock, assets):
    dock.checkpoint.setFilePath(str(assets.checkpoint))
    dock.build_button.click()
    assert not dock.is_running() and "raster" in message_texts(dock).lower()


def test_run_adds_styled_results_fills_the_table_and_zooms(dock, world, tmp_path):
    dock.index_dir.setFilePath(str(world.index))
    set_photos(dock, world.photos)
    dock.top_k.setValue(3)
    dock.device.setCurrentIndex(2)
    dock.results_dir.setFilePath(str(tmp_path))
    finished = SignalRecorder(dock.run_finished)
    dock.run_button.click()
    assert dock.is_running()
    ok, text = finished.wait(120)
    assert ok, text

    layers = {layer.name(): layer for layer in QgsProject.instance().mapLayers().values()}
    candidates = layers["SAIG candidates"]
    assert candidates.featureCount() == 9 and candidates.crs().authid() == "EPSG:4326"
    assert candidates.renderer().type() == "graduatedSymbol" and candidates.renderer().classAttribute() == "rank"
    assert candidates.labelsEnabled()
    assert layers["SAIG EXIF positions"].featureCount() == 2
    heatmaps = [layer for name, layer in layers.items() if name.startswith("SAIG heatmap")]
    assert len(heatmaps) == 3
    for heatmap in heatmaps:
        renderer = heatmap.renderer()
        assert renderer.type() == "singlebandpseudocolor" and 0 < renderer.opacity() < 1
        assert renderer.shader().rasterShaderFunction().colorRampType() == QgsColorRampShader.Type.Interpolated
        assert heatmap.dataProvider().useSourceNoDataValue(1)
        assert heatmap.crs().authid() == ORTHO_CRS

    assert dock.table.rowCount() == 9
    assert dock.table.item(0, 1).text() == "1"
    assert not dock.table.item(0, 0).icon().isNull()  # photo thumbnail
    headers = [dock.table.horizontalHeaderItem(c).text() for c in range(dock.table.columnCount())]
    assert {"Heading (°)", "Confidence", "Refined lon", "Refined lat", "Uncertainty (m)"} <= set(headers)
    assert "Refined x" not in headers and "Refined y" not in headers  # grid coordinates stay in the layer
    confidence = headers.index("Confidence")
    assert all(0.0 <= float(dock.table.item(row, confidence).text()) <= 1.0 for row in range(9))
    to_canvas = QgsCoordinateTransform(candidates.crs(), dock.canvas.mapSettings().destinationCrs(),
                                       QgsProject.instance())

    def canvas_is_centred_on_row(row: int) -> bool:
        fid = dock.table.item(row, 0).data(0x0100)
        point = to_canvas.transform(candidates.getFeature(fid).geometry().asPoint())
        centre = dock.canvas.center()
        return abs(centre.x() - point.x()) < 1.0 and abs(centre.y() - point.y()) < 1.0

    assert canvas_is_centred_on_row(0)  # zoomed to the best candidate when done
    def visible_heatmaps() -> list:
        root = QgsProject.instance().layerTreeRoot()
        return [h.name() for h in heatmaps if root.findLayer(h.id()).isVisible()]

    first_photo = dock.table.item(0, 0).toolTip()
    assert visible_heatmaps() == [f"SAIG heatmap {os.path.basename(first_photo)}"]
    dock.table.selectRow(5)
    assert canvas_is_centred_on_row(5)
    assert candidates.selectedFeatureIds() == [dock.table.item(5, 0).data(0x0100)]
    assert visible_heatmaps() == [f"SAIG heatmap {os.path.basename(dock.table.item(5, 0).toolTip())}"]


def test_cancel_stops_the_backend_and_adds_nothing(dock, world, tmp_path):
    dock.index_dir.setFilePath(str(world.index))
    set_photos(dock, world.photos)
    dock.device.setCurrentIndex(2)
    dock.results_dir.setFilePath(str(tmp_path))
    finished = SignalRecorder(dock.run_finished)
    dock.run_button.click()
    wait_until(lambda: backend_children(), 60, "the backend process to start")
    running = backend_children()
    dock.cancel_button.click()
    ok, text = finished.wait(30)
    assert not ok and text == "canceled"
    assert not any(_alive(pid) for pid in running), "the backend survived Cancel"
    assert QgsProject.instance().count() == 0
    assert "Canceled" in message_texts(dock)
    assert dock.run_button.isEnabled() and not dock.cancel_button.isEnabled()
    assert os.listdir(tmp_path) == []  # not even the run's folder is left


def test_a_failing_run_shows_the_reason_and_adds_no_layer(dock, world, tmp_path):
    dock.index_dir.setFilePath(str(world.index))
    dock.checkpoint.setFilePath(str(world.other_checkpoint))
    set_photos(dock, world.photos[:1])
    dock.device.setCurrentIndex(2)
    ok, text = run_dock(dock, tmp_path, timeout=60)
    assert not ok and "fingerprint" in text.lower()
    assert "fingerprint" in message_texts(dock).lower()
    assert QgsProject.instance().count() == 0 and os.listdir(tmp_path) == []


def test_a_killed_backend_is_reported_as_probably_out_of_memory_and_adds_nothing(dock, world, tmp_path):
    fake = tmp_path / "bin" / "python"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n"
                    "echo '{\"event\": \"progress\", \"stage\": \"locate\", \"fraction\": 0.1}'\nkill -9 $$\n")
    fake.chmod(0o755)
    dock.backend_python.setFilePath(str(fake))
    dock.index_dir.setFilePath(str(world.index))
    set_photos(dock, world.photos[:1])
    results = tmp_path / "results"
    ok, text = run_dock(dock, results, timeout=60)
    assert not ok and "probably out of memory" in text
    assert "probably out of memory" in message_texts(dock)
    assert QgsProject.instance().count() == 0 and os.listdir(results) == []


@pytest.mark.parametrize("death, why", [("exit 1", "exit code 1"), ("kill -9 $$", "killed (signal 9)")])
def test_a_backend_that_stops_after_two_photos_is_a_failure_shown_with_what_was_located_and_resumable(
        dock, world, tmp_path, death, why):
    from qgis.core import Qgis

    dock.backend_python.setFilePath(str(write_backend_that_stops_after_two_photos(
        tmp_path / "stops" / "bin" / "python", death)))
    dock.index_dir.setFilePath(str(world.index))
    dock.checkpoint.setFilePath("")  # the index's own
    set_photos(dock, world.photos)
    dock.top_k.setValue(2)
    dock.device.setCurrentIndex(2)
    dock.results_dir.setFilePath(str(tmp_path / "results"))
    finished = SignalRecorder(dock.run_finished)
    dock.run_button.click()
    ok, text = finished.wait(120)
    assert not ok, text  # never a green "3 photos located"
    assert "partial result" in text and "1 photo(s) not reached" in text and why in text
    assert dock.message_bar.currentItem().level() == Qgis.MessageLevel.Critical
    assert dock.candidates_layer.featureCount() == 2 * 2  # what was located is on the map
    assert dock.resume_button.isEnabled()

    dock.backend_python.setFilePath(str(BACKEND_PYTHON))  # the real backend finishes the run
    seen = len(finished.calls)
    dock.resume_button.click()
    wait_until(lambda: len(finished.calls) > seen, 120, "the resumed run")
    ok, text = finished.calls[-1]
    assert ok, text
    assert text.startswith("3 photo(s) located")
    assert {f["photo"] for f in dock.candidates_layer.getFeatures()} == set(world.photos)
    assert not dock.resume_button.isEnabled()


def test_chip_size_and_stride_default_to_the_checkpoints_footprint_and_another_size_is_warned(dock, assets):
    read = SignalRecorder(dock.model_defaults_read)
    dock.checkpoint.setFilePath(str(assets.checkpoint))
    assert read.wait(120) == (CHIP_M,)
    assert dock.chip_size.value() == CHIP_M and dock.stride.value() == CHIP_M / 4
    assert "from the checkpoint: 64 m" in dock.chip_note.text()
    dock.chip_size.setValue(100)
    assert "⚠" in dock.chip_note.text() and "trained on 64 m" in dock.chip_note.text()
    assert dock.build_button.isEnabled()  # a different choice stays possible
    dock.chip_size.clear()
    assert dock.chip_size.value() == CHIP_M  # clearing goes back to the checkpoint's footprint
    seen = len(read.calls)
    dock.checkpoint.setFilePath(str(assets.other_checkpoint))  # records no footprint
    wait_until(lambda: len(read.calls) > seen, 120, "the second checkpoint's defaults")
    assert read.calls[-1] == (None,)
    assert dock.chip_note.text() == ""


def test_a_folder_of_photos_is_located_recursively_through_the_dock(dock, world, tmp_path):
    import shutil

    trip = tmp_path / "trip"
    (trip / "day1" / "morning").mkdir(parents=True)
    shutil.copy(world.photos[0], trip / "day1" / "morning" / "a.jpg")
    shutil.copy(world.photos[1], trip / "b.jpg")
    (trip / "notes.txt").write_text("not a photo")
    dock.index_dir.setFilePath(str(world.index))
    dock.checkpoint.setFilePath("")
    dock.add_photos([str(trip)])
    dock.add_photos([str(trip)])  # once only
    assert dock.photos.filePath() == f'"{trip}"'
    dock.top_k.setValue(1)
    dock.device.setCurrentIndex(2)
    ok, text = run_dock(dock, tmp_path / "results", timeout=120)
    assert ok, text
    assert text.startswith("2 photo(s) located")
    assert {f["photo"] for f in dock.candidates_layer.getFeatures()} == {str(trip / "day1" / "morning" / "a.jpg"),
                                                                        str(trip / "b.jpg")}
