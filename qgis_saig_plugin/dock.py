"""The SAIG dock: pick an index (or build one), a checkpoint and photos; run; browse the candidates.

Every job is a Processing algorithm of the "SAIG" provider run through QgsProcessingAlgRunnerTask,
so the dock, the toolbox, batch jobs and qgis_process share one code path. Results are added to
the project only when a run succeeded (main thread); a canceled or failed run adds nothing.

The dock talks to QGIS through explicit collaborators (map canvas, message bar, a function giving
the layers selected in the Layers panel) rather than ``iface``, so it can be driven in tests.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsCoordinateTransform,
    QgsProcessingAlgRunnerTask,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingUtils,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsSettings,
    QgsTask,
    QgsVectorLayer,
)
from qgis.gui import QgsDockWidget, QgsDoubleSpinBox, QgsFileWidget, QgsMapCanvas, QgsMessageBar, QgsSpinBox
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QSize, Qt, pyqtSignal
from qgis.PyQt.QtGui import QIcon, QImageReader, QPixmap
from qgis.PyQt.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from . import styles
from .algorithms import DEVICE_LABELS, DEVICES, INPUT_MODE_LABELS
from .backend import (
    BackendError,
    backend_contract,
    backend_info,
    cached_contract,
    configured_python,
    describe_backend_info,
    locate_backend,
    managed_source,
    set_configured_python,
)
from .install_panel import InstallPanel

THUMB_SIZE = QSize(64, 48)
SETTINGS_PREFIX = "saig/dock/"
#: The table's fixed columns: (header, candidate field, format); the backend's other per-candidate
#: fields (heading, confidence, ... from ``saig schema``) follow them, see :func:`extra_table_fields`.
TABLE_COLUMNS = (("Photo", "photo_name", ""), ("Rank", "rank", "{:.0f}"), ("Score", "score", "{:.3f}"),
                 ("Dist. EXIF (m)", "distance_m", "{:.0f}"), ("Lon", "lon", "{:.6f}"), ("Lat", "lat", "{:.6f}"))
#: Candidate fields not shown as table columns (identifiers and grid coordinates stay in the layer)
HIDDEN_FIELDS = ("fid", "photo", "chip_id", "faiss_id", "x", "y", "refined_x", "refined_y", "grid_crs", "heatmap")
#: Rows per page of the results table: a run of hundreds of photos never fills a table of thousands of rows
PAGE_ROWS = 100
ALL_FILES = "All files (*)"


class _Feedback(QgsProcessingFeedback):
    """Processing feedback that keeps the errors (for the message bar) and relays the backend's
    log lines (e.g. "encoding on CUDA (...)") to the dock's status line; called from the task's thread."""

    info = pyqtSignal(str)

    def __init__(self) -> None:
        super().__init__()
        self.errors: list[str] = []

    def reportError(self, error: str, fatalError: bool = False) -> None:
        self.errors.append(error)
        super().reportError(error, fatalError)

    def pushInfo(self, info: str) -> None:
        self.info.emit(info)
        super().pushInfo(info)


@dataclass
class _Job:
    """A running algorithm: the objects that must stay alive until it finishes."""

    task: QgsProcessingAlgRunnerTask
    context: QgsProcessingContext
    feedback: _Feedback
    kind: str
    extra: dict = field(default_factory=dict)


class SaigDock(QgsDockWidget):
    """Dock widget "SAIG Geolocate"."""

    #: (ok, message) once a geolocation run has finished and its layers are in the project
    run_finished = pyqtSignal(bool, str)
    #: (ok, message) once an index build has finished
    build_finished = pyqtSignal(bool, str)
    #: (ok, message) once "Check backend" has an answer
    backend_checked = pyqtSignal(bool, str)
    #: (ok, message) once "Install backend" has ended
    backend_installed = pyqtSignal(bool, str)
    #: the checkpoint's aerial footprint in metres once read (None: it records none, or unreadable)
    model_defaults_read = pyqtSignal(object)

    def __init__(self, canvas: QgsMapCanvas, message_bar: QgsMessageBar,
                 selected_layers: Callable[[], list], parent: QWidget | None = None) -> None:
        super().__init__("SAIG Geolocate", parent)
        self.setObjectName("SaigGeolocateDock")
        self.canvas = canvas
        self.message_bar = message_bar
        self.selected_layers = selected_layers
        self.job: _Job | None = None
        self.info_task: QgsTask | None = None
        self.contract_task: QgsTask | None = None
        self._contract_backend = None
        self.candidates_layer: QgsVectorLayer | None = None
        self.exif_layer: QgsVectorLayer | None = None
        self.heatmap_layers: dict[str, QgsRasterLayer] = {}
        self.results_group = None
        self.heatmap_group = None
        self.rows: list[tuple] = []  # (photo, feature id, values) of every candidate, in table order
        self.table_fields: list[tuple[str, str, str]] = list(TABLE_COLUMNS)
        self.page = 0
        self._thumbs: dict[str, QIcon] = {}
        self.last_run: dict | None = None  # the parameters of the last geolocation, for Resume
        self.model_footprint_m: float | None = None  # the checkpoint's aerial footprint (backend-info)
        self.defaults_task: QgsTask | None = None
        self._build_ui()
        self._restore_settings()

    # -- UI ---------------------------------------------------------------------------------

    def _build_ui(self) -> None:
        """Settings (scrollable) above, Run and the results table below, split so the table keeps room."""
        settings = QWidget()
        layout = QVBoxLayout(settings)
        layout.addWidget(self._build_backend_box())
        layout.addWidget(self._build_reference_box())
        layout.addWidget(self._build_photos_box())
        layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(settings)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setMinimumWidth(settings.minimumSizeHint().width() + scroll.verticalScrollBar().sizeHint().width())
        results = QWidget()
        layout = QVBoxLayout(results)
        layout.addLayout(self._build_run_row())
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        layout.addWidget(self._build_table(), 1)
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(scroll)
        splitter.addWidget(results)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        self.setWidget(splitter)
        self._connect_widgets()

    def _build_backend_box(self) -> QGroupBox:
        """Backend: its Python, "Check backend" and what the check found."""
        box = QGroupBox("Backend")
        form = QFormLayout(box)
        self.backend_python = QgsFileWidget()
        self.backend_python.setStorageMode(QgsFileWidget.StorageMode.GetFile)
        self.backend_python.setDialogTitle("Python of the SAIG backend environment")
        self.backend_python.lineEdit().setShowClearButton(True)
        form.addRow("Python", self.backend_python)
        self.check_backend_button = QPushButton("Check backend")
        self.backend_status = QLabel("")
        self.backend_status.setWordWrap(True)
        self.backend_status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        row = QHBoxLayout()
        row.addWidget(self.check_backend_button)
        row.addWidget(self.backend_status, 1)
        form.addRow(row)
        self.install_panel = InstallPanel()
        form.addRow(self.install_panel)
        return box

    def _build_reference_box(self) -> QGroupBox:
        """Reference: the index folder, building one from selected rasters, the checkpoint."""
        box = QGroupBox("Reference")
        form = QFormLayout(box)
        self.index_dir = QgsFileWidget()
        self.index_dir.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.index_dir.setDialogTitle("Reference index folder")
        form.addRow("Index folder", self.index_dir)
        self.chip_size = _metres_box(100.0)
        self.stride = _metres_box(50.0)
        self.build_button = QPushButton("Build from selected rasters")
        self.build_button.setToolTip("Encode the raster layers selected in the Layers panel into a new index "
                                     "(the 'Build reference index' algorithm) and use it.")
        row = QHBoxLayout()
        row.addWidget(QLabel("Chip"))
        row.addWidget(self.chip_size)
        row.addWidget(QLabel("Stride"))
        row.addWidget(self.stride)
        form.addRow(row)
        self.chip_note = QLabel("")
        self.chip_note.setWordWrap(True)
        form.addRow(self.chip_note)
        form.addRow(self.build_button)
        self.checkpoint = QgsFileWidget()
        self.checkpoint.setStorageMode(QgsFileWidget.StorageMode.GetFile)
        self.checkpoint.setFilter("Checkpoints (*.pt *.pth);;All files (*)")
        self.checkpoint.setDialogTitle("SAIG checkpoint")
        self.checkpoint.lineEdit().setPlaceholderText("as recorded in the index")
        form.addRow("Checkpoint", self.checkpoint)
        return box

    def _build_photos_box(self) -> QGroupBox:
        """Photos: the photos (types from the backend's contract), top-k, device, prior, results folder."""
        box = QGroupBox("Photos")
        form = QFormLayout(box)
        self.photos = QgsFileWidget()
        self.photos.setStorageMode(QgsFileWidget.StorageMode.GetMultipleFiles)
        self.photos.setDialogTitle("Ground photos")
        self.photos.setToolTip("Photo files, or folders of photos (searched recursively by the backend)")
        self.add_folder_button = QPushButton("+ Folder")
        self.add_folder_button.setToolTip("Add a folder of photos: the backend takes every photo below it")
        row = QHBoxLayout()
        row.addWidget(self.photos, 1)
        row.addWidget(self.add_folder_button)
        form.addRow("Photos", row)
        self.top_k = QgsSpinBox()
        self.top_k.setRange(1, 1000)
        self.top_k.setClearValue(20)
        self.top_k.setValue(20)
        self.device = QComboBox()
        self.device.addItems(["Auto", "CUDA", "CPU"])
        self.device.setToolTip("\n".join(DEVICE_LABELS))
        row = QHBoxLayout()
        row.addWidget(self.top_k)
        row.addWidget(QLabel("Device"))
        row.addWidget(self.device, 1)
        form.addRow("Top-k", row)
        self.input_mode = QComboBox()
        self.input_mode.addItems(list(INPUT_MODE_LABELS))
        self.input_mode.setToolTip("How the backend reads the photos: its own detection per photo, or every photo "
                                   "as a 360° panorama (--panorama) or as a limited field of view (--photo).")
        form.addRow("Photos are", self.input_mode)
        self.use_prior = QCheckBox("Within")
        self.prior_radius = QgsDoubleSpinBox()
        self.prior_radius.setRange(1, 1e7)
        self.prior_radius.setDecimals(0)
        self.prior_radius.setSuffix(" m of EXIF position")
        self.prior_radius.setValue(1000)
        self.prior_radius.setEnabled(False)
        row = QHBoxLayout()
        row.addWidget(self.use_prior)
        row.addWidget(self.prior_radius, 1)
        form.addRow("Prior", row)
        self.results_dir = QgsFileWidget()
        self.results_dir.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.results_dir.lineEdit().setPlaceholderText("temporary")
        form.addRow("Save results in", self.results_dir)
        return box

    def _build_run_row(self) -> QHBoxLayout:
        """Run, Cancel and the progress bar."""
        row = QHBoxLayout()
        self.run_button = QPushButton("Run")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("Finish the last run where the backend stopped: the photos already located "
                                      "are not redone.")
        self.resume_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        row.addWidget(self.resume_button)
        row.addWidget(self.progress, 1)
        return row

    def _build_table(self) -> QWidget:
        """The candidates table (one row per photo and rank, with a thumbnail), shown a page at a time."""
        self.table = QTableWidget(0, len(TABLE_COLUMNS))
        self.table.setHorizontalHeaderLabels([header for header, _, _ in TABLE_COLUMNS])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setIconSize(THUMB_SIZE)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(THUMB_SIZE.height() + 4)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.prev_page = QPushButton("◀")
        self.next_page = QPushButton("▶")
        self.page_label = QLabel("")
        pager = QHBoxLayout()
        pager.addWidget(self.prev_page)
        pager.addWidget(self.page_label, 1)
        pager.addWidget(self.next_page)
        box = QWidget()
        layout = QVBoxLayout(box)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.table, 1)
        layout.addLayout(pager)
        self._update_pager()
        return box

    def _connect_widgets(self) -> None:
        self.check_backend_button.clicked.connect(self.check_backend)
        self.install_panel.install_finished.connect(self._installed)
        self.build_button.clicked.connect(self.build_index)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.resume_button.clicked.connect(self.resume)
        self.add_folder_button.clicked.connect(self._add_photo_folder)
        self.prev_page.clicked.connect(lambda: self.show_page(self.page - 1))
        self.next_page.clicked.connect(lambda: self.show_page(self.page + 1))
        self.use_prior.toggled.connect(self.prior_radius.setEnabled)
        self.table.itemSelectionChanged.connect(self._zoom_to_selected_row)
        self.backend_python.fileChanged.connect(self._backend_changed)
        self.checkpoint.fileChanged.connect(self.read_model_defaults)
        self.chip_size.valueChanged.connect(self._check_chip_size)

    def _restore_settings(self) -> None:
        s = QgsSettings()
        self.backend_python.setFilePath(configured_python())
        self._show_backend_placeholder()
        self._load_contract()
        self.index_dir.setFilePath(s.value(SETTINGS_PREFIX + "index", "", type=str))
        self.checkpoint.setFilePath(s.value(SETTINGS_PREFIX + "checkpoint", "", type=str))
        self.read_model_defaults()
        self.top_k.setValue(s.value(SETTINGS_PREFIX + "top_k", 20, type=int))
        self.device.setCurrentIndex(s.value(SETTINGS_PREFIX + "device", 0, type=int))

    def _save_settings(self) -> None:
        s = QgsSettings()
        s.setValue(SETTINGS_PREFIX + "index", self.index_dir.filePath())
        s.setValue(SETTINGS_PREFIX + "checkpoint", self.checkpoint.filePath())
        s.setValue(SETTINGS_PREFIX + "top_k", self.top_k.value())
        s.setValue(SETTINGS_PREFIX + "device", self.device.currentIndex())

    def _add_photo_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of photos", os.path.expanduser("~"))
        if folder:
            self.add_photos([folder])

    def add_photos(self, paths: list[str]) -> None:
        """Add files or folders to the photos field (kept in the order given, each once)."""
        current = [p for p in QgsFileWidget.splitFilePaths(self.photos.filePath()) if p]
        merged = list(dict.fromkeys([*current, *paths]))
        self.photos.setFilePath(" ".join(f'"{p}"' for p in merged))

    def _backend_changed(self, path: str) -> None:
        set_configured_python(path)
        self._show_backend_placeholder()
        self._load_contract()

    def _show_backend_placeholder(self) -> None:
        try:
            found = locate_backend()
            text = f"auto: {found.executable}"
        except BackendError:
            text = "not found: choose the backend's Python"
        self.backend_python.lineEdit().setPlaceholderText(text)

    def _load_contract(self) -> None:
        """Take the photo types from the backend's contract (``saig schema``): at once when it is known,
        else from a background task. A backend that cannot answer says why in the backend status."""
        self._contract_backend = None
        self.photos.setFilter(ALL_FILES)  # until this backend says which photo types it reads
        try:
            location = locate_backend()
        except BackendError:
            return  # the placeholder says so; a run reports it
        self._contract_backend = location
        known = cached_contract(location)
        if known is not None:
            self._apply_contract(known)
            return

        def work(task):
            return backend_contract(location)

        def done(exception, result=None):
            if sip.isdeleted(self) or self._contract_backend != location:
                return  # the dock is gone, or another backend was chosen meanwhile
            self.contract_task = None
            if exception is not None or result is None:
                self.backend_status.setText(str(exception) if exception is not None else "no answer to saig schema")
                return
            self._apply_contract(result)

        self.contract_task = QgsTask.fromFunction("Read what the SAIG backend accepts", work, on_finished=done)
        QgsApplication.taskManager().addTask(self.contract_task)

    def _apply_contract(self, contract: dict) -> None:
        self.photos.setFilter(photo_filter(contract["photo_suffixes"]))

    def _message(self, title: str, text: str, level=Qgis.MessageLevel.Info, duration: int = 8) -> None:
        self.status.setText(f"{title}: {text}" if text else title)
        self.message_bar.pushMessage(title, text, level, duration)

    # -- backend check ----------------------------------------------------------------------

    def check_backend(self) -> None:
        """Ask the backend for its version, torch, device and the checkpoint's model (background task)."""
        try:
            location = locate_backend()
        except BackendError as e:
            self.backend_status.setText(str(e))
            self._message("SAIG backend", str(e), Qgis.MessageLevel.Critical, 0)
            self.backend_checked.emit(False, str(e))
            return
        checkpoint = self.checkpoint.filePath()
        device = DEVICES[self.device.currentIndex()]
        self.backend_status.setText("checking…")
        self.check_backend_button.setEnabled(False)

        def work(task):
            return backend_info(location, checkpoint if os.path.isfile(checkpoint) else "", device)

        def done(exception, result=None):
            self.check_backend_button.setEnabled(True)
            self.info_task = None
            if exception is not None or result is None:
                text = str(exception) if exception is not None else "no answer"
                self.backend_status.setText(text)
                self._message("SAIG backend", text, Qgis.MessageLevel.Critical, 0)
                self.backend_checked.emit(False, text)
                return
            text = describe_backend_info(result)
            self.backend_status.setText(f"{text}\n{location.executable}")
            self._message("SAIG backend", text, Qgis.MessageLevel.Success)
            self.backend_checked.emit(True, text)

        self.info_task = QgsTask.fromFunction("Check SAIG backend", work, on_finished=done)
        QgsApplication.taskManager().addTask(self.info_task)

    def _installed(self, ok: bool, text: str) -> None:
        """After Install backend: say what was installed and which backend the plugin uses, then check it."""
        self.backend_installed.emit(ok, text)
        if not ok:
            level = Qgis.MessageLevel.Info if text.startswith("Canceled") else Qgis.MessageLevel.Critical
            self._message("SAIG backend install", text, level, 0)
            return
        self._show_backend_placeholder()
        try:
            used = locate_backend()
        except BackendError:
            used = None
        if used is not None and used.source != managed_source():
            text += f". The plugin still uses {used.executable} from {used.source}, which takes precedence."
        self._message("SAIG backend installed", text, Qgis.MessageLevel.Success)
        self._load_contract()
        self.check_backend()

    # -- defaults from the model ------------------------------------------------------------

    def read_model_defaults(self, checkpoint: str = "") -> None:
        """Chip size and stride from the checkpoint: the aerial footprint it was trained on (``backend-info``),
        stride a quarter of it, as ``index build`` defaults them. Asked in a background task."""
        checkpoint = checkpoint or self.checkpoint.filePath()
        self.model_footprint_m = None
        self._check_chip_size()
        if not os.path.isfile(checkpoint):
            return
        try:
            location = locate_backend()
        except BackendError:
            return

        def work(task):
            return backend_info(location, checkpoint, "cpu")

        def done(exception, result=None):
            if sip.isdeleted(self) or self.checkpoint.filePath() != checkpoint:
                return
            self.defaults_task = None
            model = (result or {}).get("model") if exception is None else None
            footprint = model.get("aerial_footprint_m") if isinstance(model, dict) else None
            if not footprint:
                self.chip_note.setText("" if exception is None else f"The checkpoint could not be read: {exception}")
                self.model_defaults_read.emit(None)
                return
            self.model_footprint_m = float(footprint)
            self.chip_size.setClearValue(self.model_footprint_m)
            self.stride.setClearValue(self.model_footprint_m / 4)
            self.chip_size.setValue(self.model_footprint_m)
            self.stride.setValue(self.model_footprint_m / 4)
            self._check_chip_size()
            self.model_defaults_read.emit(self.model_footprint_m)

        self.defaults_task = QgsTask.fromFunction("Read the SAIG checkpoint's chip size", work, on_finished=done)
        QgsApplication.taskManager().addTask(self.defaults_task)

    def _check_chip_size(self) -> None:
        """A chip size more than 25 % off the checkpoint's footprint is allowed, with a warning."""
        footprint, size = self.model_footprint_m, self.chip_size.value()
        if footprint is None:
            self.chip_note.setText("")
        elif abs(size / footprint - 1) > 0.25:
            self.chip_note.setText(f"⚠ The checkpoint was trained on {footprint:g} m chips: {size:g} m chips "
                                   "will match photos worse (allowed).")
        else:
            self.chip_note.setText(f"Chip size from the checkpoint: {footprint:g} m.")

    # -- running algorithms -----------------------------------------------------------------

    def _start(self, algorithm_id: str, parameters: dict, kind: str, **extra) -> bool:
        algorithm = QgsApplication.processingRegistry().createAlgorithmById(algorithm_id)
        if algorithm is None:
            self._message("SAIG", f"The Processing algorithm {algorithm_id} is not registered.",
                          Qgis.MessageLevel.Critical)
            return False
        context = QgsProcessingContext()
        context.setProject(QgsProject.instance())
        feedback = _Feedback()
        feedback.progressChanged.connect(lambda value: self.progress.setValue(int(value)))
        feedback.info.connect(self.status.setText)
        task = QgsProcessingAlgRunnerTask(algorithm, parameters, context, feedback)
        self.job = _Job(task, context, feedback, kind, extra)
        task.executed.connect(partial(self._executed, self.job))
        self._set_running(True)
        QgsApplication.taskManager().addTask(task)
        return True

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.build_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        if running:
            self.progress.setValue(0)

    def cancel(self) -> None:
        """Stop the running job: the backend is terminated, nothing is written or loaded."""
        if self.job is not None:
            self.status.setText("Canceling…")
            self.job.feedback.cancel()

    def is_running(self) -> bool:
        """Whether an algorithm started by the dock is still running."""
        return self.job is not None

    def _executed(self, job: _Job, ok: bool, results: dict) -> None:
        self.job = None
        self._set_running(False)
        signal = self.run_finished if job.kind == "locate" else self.build_finished
        if job.feedback.isCanceled():
            if job.extra.get("run_dir") and not job.extra.get("resumed"):
                shutil.rmtree(job.extra["run_dir"], ignore_errors=True)  # the folder this run made, nothing else
            self.progress.setValue(0)
            self._message("SAIG", "Canceled: nothing was written or added to the map.", Qgis.MessageLevel.Info)
            signal.emit(False, "canceled")
            return
        if not ok:
            if job.extra.get("run_dir"):
                _remove_if_empty(job.extra["run_dir"])
                self.resume_button.setEnabled(os.path.isdir(job.extra["run_dir"]))  # results were committed
            text = _last_error(job.feedback.errors) or "The algorithm failed (see the Processing log)."
            self.progress.setValue(0)
            self._message("SAIG failed", text, Qgis.MessageLevel.Critical, 0)
            signal.emit(False, text)
            return
        self.progress.setValue(100)
        if job.kind == "build":
            self.index_dir.setFilePath(results["OUTPUT_DIR"])
            self._save_settings()
            text = f"index {results['OUTPUT_DIR']} with {int(results.get('CHIP_COUNT') or 0)} chips"
            self._message("SAIG index built", text, Qgis.MessageLevel.Success)
            signal.emit(True, text)
            return
        self._located(job, results)

    def _located(self, job: _Job, results: dict) -> None:
        """A geolocation that produced results: load them; a partial run is a failure that can be resumed."""
        candidates = QgsVectorLayer(results["OUTPUT"], "SAIG candidates", "ogr")
        if not candidates.isValid():
            text = f"The candidates {results['OUTPUT']} could not be opened."
            self._message("SAIG failed", text, Qgis.MessageLevel.Critical, 0)
            self.run_finished.emit(False, text)
            return
        text = self.show_results(results)
        failed, missing = int(results.get("PHOTOS_FAILED") or 0), int(results.get("PHOTOS_MISSING") or 0)
        self.resume_button.setEnabled(missing > 0)
        if missing:
            text = (f"partial result: {text}; {missing} photo(s) not reached because the backend stopped early "
                    f"(Resume finishes the run). {_last_error(job.feedback.errors)}")
            self._message("SAIG failed", text, Qgis.MessageLevel.Critical, 0)
            self.run_finished.emit(False, text)
            return
        if failed:
            self._message("SAIG", f"{text}; {failed} photo(s) failed: {_last_error(job.feedback.errors)}",
                          Qgis.MessageLevel.Warning, 0)
        else:
            self._message("SAIG", text, Qgis.MessageLevel.Success)
        self.run_finished.emit(True, text)

    def build_index(self) -> None:
        """Build an index from the raster layers selected in the Layers panel, then use it."""
        rasters = [layer for layer in self.selected_layers() if isinstance(layer, QgsRasterLayer)]
        if not rasters:
            self._message("SAIG", "Select one or more orthophoto raster layers in the Layers panel first.",
                          Qgis.MessageLevel.Warning)
            return
        checkpoint = self.checkpoint.filePath()
        if not os.path.isfile(checkpoint):
            self._message("SAIG", "Choose the checkpoint to encode the index with.", Qgis.MessageLevel.Warning)
            return
        target = self.index_dir.filePath()
        if not target or (os.path.isdir(target) and os.listdir(target)):
            target = QFileDialog.getSaveFileName(self, "New index folder", target or os.path.expanduser("~"))[0]
            if not target:
                return
        params = {"INPUT": [layer.id() for layer in rasters], "CHECKPOINT": checkpoint,
                  "CHIP_SIZE_M": self.chip_size.value(), "STRIDE_M": self.stride.value(),
                  "DEVICE": self.device.currentIndex(), "OUTPUT_DIR": target}
        if self._start("saig:buildindex", params, "build"):
            self.status.setText(f"Building index from {len(rasters)} raster(s)…")

    def run(self) -> None:
        """Geolocate the chosen photos (background task); results are loaded when it succeeds."""
        photos = [p for p in QgsFileWidget.splitFilePaths(self.photos.filePath()) if p]
        index = self.index_dir.filePath()
        if not photos:
            self._message("SAIG", "Choose one or more photos.", Qgis.MessageLevel.Warning)
            return
        if not index or not os.path.isdir(index):
            self._message("SAIG", "Choose a reference index folder, or build one from raster layers.",
                          Qgis.MessageLevel.Warning)
            return
        self._save_settings()
        base = self.results_dir.filePath() or QgsProcessingUtils.tempFolder()
        os.makedirs(base, exist_ok=True)
        run_dir = tempfile.mkdtemp(prefix=time.strftime("saig_%Y%m%d_%H%M%S_"), dir=base)
        params = {
            "PHOTOS": photos, "INDEX": index, "CHECKPOINT": self.checkpoint.filePath() or None,
            "TOP_K": self.top_k.value(), "DEVICE": self.device.currentIndex(),
            "PRIOR_RADIUS_M": self.prior_radius.value() if self.use_prior.isChecked() else None,
            "INPUT_MODE": self.input_mode.currentIndex(),
            "RUN_FILE": os.path.join(run_dir, "backend-run.gpkg"), "RESUME": False,
            "HEATMAP_DIR": os.path.join(run_dir, "heatmaps"),
        }
        self.last_run = {"params": params, "run_dir": run_dir, "attempt": 1}
        self.resume_button.setEnabled(False)
        self._start_locate(resumed=False)

    def resume(self) -> None:
        """Run the last geolocation again with ``--resume``: photos it already located are not redone."""
        if self.last_run is None or self.is_running():
            return
        self.last_run["attempt"] += 1
        self.last_run["params"]["RESUME"] = True
        self.resume_button.setEnabled(False)
        self._start_locate(resumed=True)

    def _start_locate(self, resumed: bool) -> None:
        run = self.last_run
        assert run is not None
        suffix = "" if run["attempt"] == 1 else f"_{run['attempt']}"  # layers of an earlier attempt stay valid
        params = dict(run["params"], OUTPUT=os.path.join(run["run_dir"], f"candidates{suffix}.gpkg"),
                      EXIF_OUTPUT=os.path.join(run["run_dir"], f"exif_positions{suffix}.gpkg"))
        if self._start("saig:geolocatephotos", params, "locate", run_dir=run["run_dir"], resumed=resumed):
            verb = "Resuming" if resumed else "Geolocating"
            self.status.setText(f"{verb} {len(params['PHOTOS'])} photo(s) or folder(s)…")

    # -- results ----------------------------------------------------------------------------

    def show_results(self, results: dict) -> str:
        """Add a geolocation run's outputs to the project (styled), fill the table, zoom to the best.

        Heatmaps go into one collapsed sub-group where only the selected photo's is visible, so a run
        of hundreds of photos adds one group, not hundreds of visible rasters.
        """
        project = QgsProject.instance()
        group = project.layerTreeRoot().insertGroup(0, time.strftime("SAIG results %H:%M:%S"))
        candidates = QgsVectorLayer(results["OUTPUT"], "SAIG candidates", "ogr")
        styles.style_candidates(candidates)
        project.addMapLayer(candidates, False)
        group.addLayer(candidates)
        self.exif_layer = None
        if results.get("EXIF_OUTPUT"):
            exif = QgsVectorLayer(results["EXIF_OUTPUT"], "SAIG EXIF positions", "ogr")
            if exif.isValid() and exif.featureCount() > 0:
                styles.style_exif(exif)
                project.addMapLayer(exif, False)
                group.addLayer(exif)
                self.exif_layer = exif
        self.results_group = group
        self.candidates_layer = candidates
        self.rows = _candidate_rows(candidates)
        self._add_heatmaps(group, self.rows)
        self._set_table_columns(candidates)
        self._thumbs = {}
        self.show_page(0)
        self.zoom_to_best()
        photos = int(results.get("PHOTOS_LOCATED") or 0)
        return f"{photos} photo(s) located, {candidates.featureCount()} candidates"

    def _add_heatmaps(self, group, rows: list[tuple]) -> None:
        """One hidden, collapsed sub-group of heatmaps (the selected photo's is made visible)."""
        project = QgsProject.instance()
        self.heatmap_layers = {}
        heatmap_of: dict[str, str] = {}
        for photo, _, values in rows:
            if values.get("heatmap"):
                heatmap_of.setdefault(photo, str(values["heatmap"]))
        self.heatmap_group = group.addGroup(f"Heatmaps ({len(heatmap_of)})") if heatmap_of else None
        for photo, path in heatmap_of.items():
            layer = QgsRasterLayer(path, f"SAIG heatmap {os.path.basename(photo)}")
            if not layer.isValid():
                continue
            styles.style_heatmap(layer)
            project.addMapLayer(layer, False)
            self.heatmap_group.addLayer(layer).setItemVisibilityChecked(False)
            self.heatmap_layers[photo] = layer
        if self.heatmap_group is not None:
            self.heatmap_group.setExpanded(False)

    def _set_table_columns(self, layer: QgsVectorLayer) -> None:
        """The fixed columns, then the backend's other per-candidate fields (heading, confidence, ...)."""
        self.table_fields = [(header, name, fmt) for header, name, fmt in TABLE_COLUMNS]
        self.table_fields += [(column_header(name), name, "") for name in extra_table_fields(layer.fields().names())]
        self.table.setColumnCount(len(self.table_fields))
        self.table.setHorizontalHeaderLabels([header for header, _, _ in self.table_fields])

    def page_count(self) -> int:
        """Pages of the results table."""
        return max(1, -(-len(self.rows) // PAGE_ROWS))

    def show_page(self, page: int) -> None:
        """Fill the table with one page of candidates (thumbnails are made only for the rows shown)."""
        self.page = max(0, min(page, self.page_count() - 1))
        shown = self.rows[self.page * PAGE_ROWS:(self.page + 1) * PAGE_ROWS]
        self.table.blockSignals(True)
        self.table.clearSelection()
        self.table.setRowCount(len(shown))
        for row, (photo, fid, values) in enumerate(shown):
            if photo not in self._thumbs:
                self._thumbs[photo] = _thumbnail(photo)
            for col, (_, name, fmt) in enumerate(self.table_fields):
                item = QTableWidgetItem(_format(values.get(name), fmt))
                if col == 0:
                    item.setIcon(self._thumbs[photo])
                    item.setData(Qt.ItemDataRole.UserRole, fid)
                    item.setToolTip(photo)
                else:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(row, col, item)
        self.table.blockSignals(False)
        self._update_pager()

    def _update_pager(self) -> None:
        pages = self.page_count()
        self.page_label.setText(f"page {self.page + 1} of {pages} · {len(self.rows)} candidates" if self.rows else "")
        self.prev_page.setEnabled(self.page > 0)
        self.next_page.setEnabled(self.page + 1 < pages)

    def _zoom_to_selected_row(self) -> None:
        rows = self.table.selectionModel().selectedRows()
        if rows:
            item = self.table.item(rows[0].row(), 0)
            self.show_heatmap_of(item.toolTip())
            self.zoom_to_candidate(item.data(Qt.ItemDataRole.UserRole))

    def show_heatmap_of(self, photo: str) -> None:
        """Only the heatmap of this photo is visible (they overlap; the others stay in the group)."""
        if self.heatmap_group is not None:
            self.heatmap_group.setItemVisibilityChecked(photo in self.heatmap_layers)
        for other, layer in self.heatmap_layers.items():
            node = self.heatmap_group.findLayer(layer.id()) if self.heatmap_group is not None else None
            if node is not None:
                node.setItemVisibilityChecked(other == photo)

    def zoom_to_candidate(self, fid: int) -> None:
        """Centre the map on one candidate (keeping the scale), select it and flash it."""
        layer = self.candidates_layer
        if layer is None:
            return
        feature = layer.getFeature(fid)
        point = self._to_canvas().transform(feature.geometry().asPoint())
        self.canvas.setCenter(point)
        self.canvas.refresh()
        layer.selectByIds([fid])
        self.canvas.flashFeatureIds(layer, [fid])

    def zoom_to_best(self) -> None:
        """Show the first photo's candidates and centre on its best one (table row 0)."""
        layer = self.candidates_layer
        if layer is None or not self.rows:
            return
        first_photo = self.rows[0][0]
        extent = QgsRectangle()
        extent.setMinimal()
        xform = self._to_canvas()
        for photo, fid, _ in self.rows:
            if photo == first_photo:
                extent.combineExtentWith(xform.transform(layer.getFeature(fid).geometry().asPoint()))
        if not extent.isEmpty():
            extent.scale(1.3)
            self.canvas.setExtent(extent)
        self.show_heatmap_of(first_photo)
        self.table.selectRow(0)

    def _to_canvas(self) -> QgsCoordinateTransform:
        layer = self.candidates_layer
        destination = self.canvas.mapSettings().destinationCrs()
        if not destination.isValid():
            destination = QgsProject.instance().crs()
        if not destination.isValid():
            destination = layer.crs()
            self.canvas.setDestinationCrs(destination)
        return QgsCoordinateTransform(layer.crs(), destination, QgsProject.instance())


def _thumbnail(path: str) -> QIcon:
    """A small, aspect-preserving thumbnail read without decoding the whole photo at full size."""
    reader = QImageReader(path)
    reader.setAutoTransform(True)
    size = reader.size()
    if size.isValid():
        reader.setScaledSize(size.scaled(THUMB_SIZE, Qt.AspectRatioMode.KeepAspectRatio))
    image = reader.read()
    if image.isNull():
        return QIcon()
    return QIcon(QPixmap.fromImage(image))


def _candidate_rows(layer: QgsVectorLayer) -> list[tuple]:
    """(photo, feature id, attribute values) of every candidate, in layer order: all the table needs,
    kept as plain values so paging never reads the layer again."""
    names = layer.fields().names()
    rows = []
    for feature in layer.getFeatures():
        values = dict(zip(names, feature.attributes(), strict=True))
        rows.append((str(values.get("photo") or ""), feature.id(), values))
    return rows


def extra_table_fields(names: list[str]) -> list[str]:
    """The candidate fields shown after the fixed columns: whatever else the backend reports per candidate
    (its heading estimate, confidence, ...), so new backend columns appear without a plugin change."""
    fixed = {name for _, name, _ in TABLE_COLUMNS}
    return [name for name in names if name not in fixed and name not in HIDDEN_FIELDS and name != "photo_name"]


def column_header(name: str) -> str:
    """A table header for a backend field: ``heading_deg`` -> 'Heading (°)', ``refined_x_m`` -> 'Refined x (m)'."""
    for suffix, unit in (("_deg", " (°)"), ("_m", " (m)")):
        if name.endswith(suffix):
            return name[: -len(suffix)].replace("_", " ").capitalize() + unit
    return name.replace("_", " ").capitalize()


def _format(value, fmt: str) -> str:
    """A cell's text: empty for NULL, numbers by ``fmt`` (or as they are)."""
    if value is None or str(value) == "NULL":
        return ""
    if fmt:
        try:
            return fmt.format(float(value))
        except (TypeError, ValueError):
            return str(value)
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _remove_if_empty(folder: str) -> None:
    """Remove a run's folder when the run wrote nothing into it (canceled or failed)."""
    with contextlib.suppress(OSError):
        os.rmdir(folder)


def photo_filter(suffixes) -> str:
    """The file dialog filter for the photo types the backend reads, in lower and upper case."""
    patterns = [f"*{case(str(suffix))}" for suffix in suffixes for case in (str.lower, str.upper)]
    return f"Photos ({' '.join(dict.fromkeys(patterns))});;{ALL_FILES}"


def _last_error(errors: list[str]) -> str:
    meaningful = [e for e in errors if e.strip()]
    return meaningful[-1].strip() if meaningful else ""


def _metres_box(default: float) -> QgsDoubleSpinBox:
    """A ground-distance field in metres (chip size, stride) that clears to ``default``."""
    box = QgsDoubleSpinBox()
    box.setRange(0.5, 100000)
    box.setDecimals(1)
    box.setSuffix(" m")
    box.setClearValue(default)
    box.setValue(default)
    return box
