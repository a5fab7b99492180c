"""The SAIG Processing algorithms: tile orthophotos, build a reference index, geolocate photos.

Each one is a thin client of the backend CLI (see :mod:`backend`): it validates the inputs,
runs ``saig --progress json ...`` in a scratch folder, turns progress events into Processing
progress, checks cancel on every event, and writes outputs only once the backend has finished,
so a canceled or failed run leaves no partial file or layer. No ``iface``: they run headless in
``qgis_process`` exactly as from the toolbox, the batch interface or the SAIG dock.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsFeatureSink,
    QgsFields,
    QgsGeometry,
    QgsPointXY,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputMultipleLayers,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingUtils,
    QgsProviderRegistry,
    QgsRasterLayer,
    QgsVectorLayer,
    QgsWkbTypes,
)
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QCoreApplication

from . import styles
from .backend import (
    BackendCanceled,
    BackendError,
    BackendRun,
    backend_contract,
    format_errors,
    list_photos,
    missing_photos,
    run_backend,
)

DEVICES = ("auto", "cuda", "cpu")
DEVICE_LABELS = ("Auto (CUDA when available)", "CUDA (GPU)", "CPU")
#: How ``saig locate`` reads the photos: its own detection, ``--panorama`` or ``--photo``
INPUT_MODES = ("auto", "panorama", "photo")
INPUT_MODE_LABELS = ("Detected per photo (XMP GPano, else a 2:1 aspect)", "360° panoramas",
                     "Photos (limited field of view)")


def tr(text: str) -> str:
    """The text translated in the "SAIG" context."""
    return QCoreApplication.translate("SAIG", text)


class _Styler(QgsProcessingLayerPostProcessorInterface):
    """Styles an output that Processing loads into the project after a toolbox or batch run."""

    def __init__(self, style: Callable) -> None:
        super().__init__()
        self.style = style

    def postProcessLayer(self, layer, context, feedback) -> None:
        self.style(layer)


# The context owns (and deletes) its post-processors but Python must keep their Python side alive,
# or sip drops the subclass; finished ones (deleted by their context) are pruned on the next run.
_LIVE_STYLERS: list = []


def style_on_load(context: QgsProcessingContext, layer_id: str, name: str) -> None:
    """When Processing will load this output (toolbox, batch), style it like the dock does."""
    if not layer_id or not context.willLoadLayerOnCompletion(layer_id):
        return
    _LIVE_STYLERS[:] = [s for s in _LIVE_STYLERS if not sip.isdeleted(s)]
    styler = _Styler(getattr(styles, f"style_{name}"))
    _LIVE_STYLERS.append(styler)
    context.layerToLoadOnCompletionDetails(layer_id).setPostProcessor(styler)


class SaigAlgorithm(QgsProcessingAlgorithm):
    """Shared plumbing: running the backend with progress/cancel, raster inputs, scratch folders."""

    def group(self) -> str:
        """The toolbox group of every SAIG algorithm."""
        return tr("Cross-view geolocation")

    def groupId(self) -> str:
        """The id of the toolbox group (``crossview``)."""
        return "crossview"

    def createInstance(self):
        """A new instance of the same algorithm, as Processing requires for every run."""
        return type(self)()

    # -- helpers ----------------------------------------------------------------------------

    def raster_paths(self, parameters: dict, name: str, context: QgsProcessingContext) -> list[str]:
        """File paths of the raster layers of a multiple-layer parameter (file-based GDAL only)."""
        layers = self.parameterAsLayerList(parameters, name, context)
        if not layers:
            raise QgsProcessingException(tr("Choose at least one orthophoto raster layer."))
        paths = []
        for layer in layers:
            if not isinstance(layer, QgsRasterLayer) or layer.providerType() != "gdal":
                raise QgsProcessingException(tr("{} is not a file-based raster layer (GDAL); the backend reads "
                                                "GeoTIFF files.").format(layer.name()))
            path = QgsProviderRegistry.instance().decodeUri("gdal", layer.source()).get("path") or layer.source()
            if not os.path.isfile(path):
                raise QgsProcessingException(tr("{}: the raster file {} does not exist.").format(layer.name(), path))
            paths.append(path)
        return paths

    def check_file_output(self, parameters: dict, name: str, context: QgsProcessingContext) -> None:
        """Fail before the (long) backend run when a file output's folder does not exist."""
        if parameters.get(name) in (None, ""):
            return
        destination = self.parameterAsOutputLayer(parameters, name, context) or ""
        path = destination.split("|", 1)[0]
        if path and os.path.isabs(path) and not os.path.isdir(os.path.dirname(path)):
            raise QgsProcessingException(tr("Cannot write {}: the folder {} does not exist.").format(
                path, os.path.dirname(path)))

    def positive(self, parameters: dict, name: str, context: QgsProcessingContext, label: str) -> float:
        """A number parameter that must be greater than 0 (``label`` names it in the error)."""
        value = self.parameterAsDouble(parameters, name, context)
        if not value > 0:
            raise QgsProcessingException(tr("{} must be greater than 0 (got {}).").format(label, value))
        return value

    def device(self, parameters: dict, context: QgsProcessingContext) -> str:
        """The backend's ``--device`` value chosen in the DEVICE parameter."""
        return DEVICES[self.parameterAsEnum(parameters, "DEVICE", context)]

    def add_device_parameter(self) -> None:
        """The advanced DEVICE parameter (auto, CUDA, CPU)."""
        param = QgsProcessingParameterEnum("DEVICE", tr("Device"), options=list(DEVICE_LABELS), defaultValue=0)
        param.setFlags(param.flags() | QgsProcessingParameterDefinition.Flag.FlagAdvanced)
        self.addParameter(param)

    @staticmethod
    def contract(feedback: QgsProcessingFeedback) -> dict:
        """The backend's contract (``saig schema``, fetched once per backend): photo types, output columns."""
        try:
            return backend_contract(is_canceled=feedback.isCanceled)
        except BackendError as e:  # missing or older backend, canceled: a message, never a traceback
            raise QgsProcessingException(str(e)) from None

    @staticmethod
    def scratch_folder() -> str:
        """A new folder for the backend's own outputs, inside Processing's temporary folder."""
        return tempfile.mkdtemp(prefix="saig_", dir=QgsProcessingUtils.tempFolder())

    def backend(self, args: list, feedback: QgsProcessingFeedback, cwd: str,
                result_progress: Callable[[dict], float] | None = None, cancel_note: str = "",
                partial_ok: bool = False) -> BackendRun:
        """Run the backend; progress, logs and per-file errors go to ``feedback``.

        Progress is the current stage's fraction, or, when ``result_progress`` is given, its value
        for each result or error event (e.g. photos done / photos), the stage then only naming the step.
        Error events are not reported here: the caller reports them once (an exception when nothing
        succeeded, a summary otherwise).
        """
        feedback.pushCommandInfo("saig --progress json " + " ".join(_quote(a) for a in args))

        def on_event(event: dict) -> None:
            kind = event.get("event")
            if kind == "progress":
                if result_progress is None and event.get("fraction") is not None:
                    feedback.setProgress(100.0 * max(0.0, min(1.0, float(event["fraction"]))))
                if event.get("stage"):
                    feedback.setProgressText(str(event["stage"]))
            elif kind == "log":
                message = str(event.get("message", ""))
                if event.get("level") in ("warning", "error"):
                    feedback.pushWarning(message)
                else:
                    feedback.pushInfo(message)
            elif kind in ("result", "error") and result_progress is not None:
                feedback.setProgress(100.0 * result_progress(event))

        try:
            return run_backend(args, on_event=on_event, on_stderr=feedback.pushDebugInfo,
                               is_canceled=feedback.isCanceled, cwd=cwd, partial_ok=partial_ok)
        except BackendCanceled as e:
            raise QgsProcessingException(f"{e} {cancel_note}".strip()) from None
        except BackendError as e:  # killed, missing backend, bad input: a message, never a traceback
            raise QgsProcessingException(str(e)) from None


def _quote(arg) -> str:
    text = str(arg)
    return f'"{text}"' if (" " in text or not text) else text


class TileOrthophotoAlgorithm(SaigAlgorithm):
    """saig:tileorthophoto — the chip grid of one or more orthophotos as footprint polygons."""

    INPUT, CHIP_SIZE_M, STRIDE_M, OUTPUT = "INPUT", "CHIP_SIZE_M", "STRIDE_M", "OUTPUT"

    def name(self) -> str:
        """The algorithm id within the provider (``saig:tileorthophoto``)."""
        return "tileorthophoto"

    def displayName(self) -> str:
        """The name shown in the toolbox."""
        return tr("Tile orthophotos into chips")

    def shortHelpString(self) -> str:
        """The help shown beside the algorithm's dialog."""
        return tr(
            "Cuts georeferenced orthophotos into square aerial chips of a fixed ground size on a metric grid "
            "(the raster's CRS when projected in metres, otherwise a UTM zone) and writes one footprint polygon "
            "per chip with its id, source file, pixel window, centre (lon/lat and grid) and ground resolution.\n\n"
            "Chip size (m): side of a chip on the ground. Stride (m): distance between neighbouring chips "
            "(smaller than the chip size for overlapping chips).\n\n"
            "Runs the SAIG backend ('saig tile'); nothing is loaded into QGIS's own Python.")

    def initAlgorithm(self, config=None) -> None:
        """Declare the parameters and outputs."""
        self.addParameter(QgsProcessingParameterMultipleLayers(
            self.INPUT, tr("Orthophotos"), QgsProcessing.SourceType.TypeRaster))
        self.addParameter(QgsProcessingParameterNumber(
            self.CHIP_SIZE_M, tr("Chip size (m)"), QgsProcessingParameterNumber.Type.Double, 100.0, False, 0.01))
        self.addParameter(QgsProcessingParameterNumber(
            self.STRIDE_M, tr("Stride (m)"), QgsProcessingParameterNumber.Type.Double, 50.0, False, 0.01))
        self.addParameter(QgsProcessingParameterFeatureSink(
            self.OUTPUT, tr("Chip footprints"), QgsProcessing.SourceType.TypeVectorPolygon))
        self.addOutput(QgsProcessingOutputNumber("CHIP_COUNT", tr("Number of chips")))

    def processAlgorithm(self, parameters, context, feedback):
        """Validate the inputs, run the backend, then write the outputs."""
        rasters = self.raster_paths(parameters, self.INPUT, context)
        size = self.positive(parameters, self.CHIP_SIZE_M, context, tr("Chip size"))
        stride = self.positive(parameters, self.STRIDE_M, context, tr("Stride"))
        self.check_file_output(parameters, self.OUTPUT, context)
        scratch = self.scratch_folder()
        try:
            chips_path = os.path.join(scratch, "chips.gpkg")
            run = self.backend(["tile", *rasters, "--chip-size-m", size, "--stride-m", stride,
                                "--out", chips_path, "--json"], feedback, scratch)
            result = run.results[-1]
            layer_name = result.get("layer") or "chips"
            chips = QgsVectorLayer(f"{chips_path}|layername={layer_name}", "chips", "ogr")
            if not chips.isValid():
                raise QgsProcessingException(tr("The backend did not write the chip layer {}.").format(chips_path))
            sink, dest_id = self.parameterAsSink(parameters, self.OUTPUT, context, chips.fields(),
                                                 chips.wkbType(), chips.crs())
            if sink is None:
                raise QgsProcessingException(self.invalidSinkError(parameters, self.OUTPUT))
            count = 0
            for feature in chips.getFeatures():
                sink.addFeature(feature, QgsFeatureSink.Flag.FastInsert)
                count += 1
            feedback.pushInfo(tr("{} chips, grid CRS {}").format(count, result.get("crs") or chips.crs().authid()))
            return {self.OUTPUT: dest_id, "CHIP_COUNT": count}
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


class BuildIndexAlgorithm(SaigAlgorithm):
    """saig:buildindex — encode every chip with the aerial branch into a reference index folder."""

    INPUT, CHECKPOINT, OUTPUT_DIR = "INPUT", "CHECKPOINT", "OUTPUT_DIR"
    CHIP_SIZE_M, STRIDE_M = "CHIP_SIZE_M", "STRIDE_M"

    def name(self) -> str:
        """The algorithm id within the provider (``saig:buildindex``)."""
        return "buildindex"

    def displayName(self) -> str:
        """The name shown in the toolbox."""
        return tr("Build reference index")

    def shortHelpString(self) -> str:
        """The help shown beside the algorithm's dialog."""
        return tr(
            "Cuts the orthophotos into chips (as 'Tile orthophotos into chips'), encodes every chip with the "
            "aerial branch of the SAIG checkpoint and writes a self-describing reference index folder "
            "(FAISS index, chip manifest, metadata with the model fingerprint, chip parameters, CRS and "
            "checksums).\n\n"
            "The index is what 'Geolocate photos' searches. Chip size: by default the ground footprint the "
            "checkpoint's aerial branch was trained on (recorded in the checkpoint); another size is allowed "
            "and warned about when it is more than 25 % off. The folder appears only once the build is "
            "complete; an interrupted build continues where it stopped when run again with the same output.\n\n"
            "Runs the SAIG backend ('saig index build'); set the device to CUDA to use a GPU.")

    def initAlgorithm(self, config=None) -> None:
        """Declare the parameters and outputs."""
        self.addParameter(QgsProcessingParameterMultipleLayers(
            self.INPUT, tr("Orthophotos"), QgsProcessing.SourceType.TypeRaster))
        self.addParameter(QgsProcessingParameterFile(
            self.CHECKPOINT, tr("SAIG checkpoint"), QgsProcessingParameterFile.Behavior.File,
            fileFilter=tr("Checkpoints (*.pt *.pth);;All files (*)")))
        self.addParameter(QgsProcessingParameterNumber(
            self.CHIP_SIZE_M, tr("Chip size (m) (default: the footprint the checkpoint was trained on)"),
            QgsProcessingParameterNumber.Type.Double, None, True, 0.01))
        self.addParameter(QgsProcessingParameterNumber(
            self.STRIDE_M, tr("Stride (m) (default: a quarter of the chip size)"),
            QgsProcessingParameterNumber.Type.Double, None, True, 0.01))
        self.add_device_parameter()
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT_DIR, tr("Index folder")))
        self.addOutput(QgsProcessingOutputNumber("CHIP_COUNT", tr("Number of indexed chips")))
        self.addOutput(QgsProcessingOutputString("FINGERPRINT", tr("Model fingerprint")))
        self.addOutput(QgsProcessingOutputString("CRS", tr("Chip grid CRS")))

    def processAlgorithm(self, parameters, context, feedback):
        """Validate the inputs, run the backend, then write the outputs."""
        rasters = self.raster_paths(parameters, self.INPUT, context)
        checkpoint = self.parameterAsFile(parameters, self.CHECKPOINT, context)
        if not checkpoint or not os.path.isfile(checkpoint):
            raise QgsProcessingException(tr("The checkpoint file {} does not exist.").format(checkpoint or "(none)"))
        chip_args = []  # unset: the backend takes the checkpoint's footprint (and warns about a size far from it)
        for name, flag, label in ((self.CHIP_SIZE_M, "--chip-size-m", tr("Chip size")),
                                  (self.STRIDE_M, "--stride-m", tr("Stride"))):
            if parameters.get(name) not in (None, ""):
                chip_args += [flag, self.positive(parameters, name, context, label)]
        out_dir = self.parameterAsFileOutput(parameters, self.OUTPUT_DIR, context)
        if not out_dir:
            raise QgsProcessingException(tr("Choose an index folder."))
        if os.path.isfile(out_dir) or (os.path.isdir(out_dir) and os.listdir(out_dir)):
            raise QgsProcessingException(tr("{} already exists and is not empty: choose a new index folder "
                                            "(or delete the old one).").format(out_dir))
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # an empty folder (e.g. made by the dialog): the backend creates it when complete
        scratch = self.scratch_folder()
        try:
            run = self.backend(["index", "build", *rasters, "--checkpoint", checkpoint, *chip_args,
                                "--out", out_dir, "--device", self.device(parameters, context),
                                "--json"], feedback, scratch, cancel_note=tr(
                                    "The chips encoded so far are kept in the hidden folder {}: run again with the "
                                    "same inputs and index folder to continue, or delete it.").format(
                                    os.path.join(os.path.dirname(out_dir), f".{os.path.basename(out_dir)}.partial")))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        result = run.results[-1]
        feedback.pushInfo(tr("Index {}: {} chips, CRS {}").format(out_dir, result.get("count"), result.get("crs")))
        return {self.OUTPUT_DIR: out_dir, "CHIP_COUNT": int(result.get("count") or 0),
                "FINGERPRINT": str(result.get("fingerprint") or ""), "CRS": str(result.get("crs") or "")}


#: ``saig schema`` column types -> field types of the memory provider (see :func:`make_fields`)
#: (length and precision 0: unlimited, as QgsField's defaults; the provider's own defaults would round doubles)
_FIELD_TYPES = {"str": "string(0)", "int": "integer(0)", "float": "double(0,0)"}
#: Display fields the candidates layer adds around the backend's per-candidate fields
_PHOTO_FIELDS, _HEATMAP_FIELD = ("photo", "photo_name"), "heatmap"
#: The EXIF positions layer's fields (the ``exif`` object of a ``locate --json`` result, per photo)
_EXIF_FIELDS = (("photo", "str"), ("photo_name", "str"), ("lon", "float"), ("lat", "float"),
                ("heading", "float"), ("heading_ref", "str"))


def make_fields(columns) -> QgsFields:
    """QgsFields from (name, contract type) pairs.

    Built through a memory layer's URI, which names types in words: QgsField's own type argument is
    a QVariant.Type in Qt5 builds of QGIS and a QMetaType.Type in Qt6 builds, so naming neither keeps
    one code base for both.
    """
    spec = "&".join(f"field={name}:{_FIELD_TYPES.get(kind, _FIELD_TYPES['str'])}" for name, kind in columns)
    return QgsVectorLayer(f"None?{spec}", "fields", "memory").fields()


def candidate_result_fields(contract: dict) -> list[tuple[str, str]]:
    """(name, type) of the per-candidate fields of a ``locate --json`` result, from the backend's contract."""
    types = contract["layers"]["candidates"]
    return [(name, str(types.get(name, "str"))) for name in contract["candidate_result_fields"]
            if name not in (*_PHOTO_FIELDS, _HEATMAP_FIELD)]


def candidate_fields(contract: dict) -> QgsFields:
    """Attributes of the 'SAIG candidates' layer (one point per photo and rank, EPSG:4326).

    The photo and its file name, the backend's per-candidate fields (``saig schema``), the photo's heatmap.
    """
    return make_fields([(name, "str") for name in _PHOTO_FIELDS] + candidate_result_fields(contract)
                       + [(_HEATMAP_FIELD, "str")])


def _attribute(value, kind: str):
    """A candidate's JSON value as an attribute of its contract type (None when missing)."""
    if kind == "str":
        return "" if value is None else str(value)
    number = _number(value)
    return int(number) if kind == "int" and number is not None else number


def exif_fields() -> QgsFields:
    """Attributes of the EXIF positions layer (one point per photo with GPS in its EXIF, EPSG:4326)."""
    return make_fields(_EXIF_FIELDS)


def _number(value) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


class GeolocatePhotosAlgorithm(SaigAlgorithm):
    """saig:geolocatephotos — ranked candidate locations (and heatmaps) of ground photos."""

    PHOTOS, INDEX, CHECKPOINT, TOP_K = "PHOTOS", "INDEX", "CHECKPOINT", "TOP_K"
    PRIOR_RADIUS_M, OUTPUT, EXIF_OUTPUT, HEATMAP_DIR = "PRIOR_RADIUS_M", "OUTPUT", "EXIF_OUTPUT", "HEATMAP_DIR"
    INPUT_MODE, RUN_FILE, RESUME = "INPUT_MODE", "RUN_FILE", "RESUME"

    def name(self) -> str:
        """The algorithm id within the provider (``saig:geolocatephotos``)."""
        return "geolocatephotos"

    def displayName(self) -> str:
        """The name shown in the toolbox."""
        return tr("Geolocate photos")

    def shortHelpString(self) -> str:
        """The help shown beside the algorithm's dialog."""
        return tr(
            "Where was this photo taken? Encodes each ground photo with the SAIG ground branch and searches the "
            "reference index for the most similar aerial chips.\n\n"
            "Photos: image files of any type the backend reads (HEIC, WebP, ... as 'saig schema' lists), or folders "
            "of them, searched recursively; the backend lists the photos it will process ('saig photos') and every "
            "other file is named in the log with the reason it is skipped. "
            "Index: a folder made by 'Build reference index'. "
            "Checkpoint: optional when the index records its checkpoint; a checkpoint of another model than "
            "the index's is refused. Top-k: candidates per photo. Prior radius: when set, only chips within this "
            "distance (m) of the photo's EXIF GPS position are searched.\n\n"
            "Output: one point per photo and rank (EPSG:4326) with photo, rank, score, chip id, lon/lat, grid "
            "x/y and distance (m) to the EXIF position. Optional: the EXIF positions as points, and one Float32 "
            "similarity heatmap GeoTIFF per photo on the chip grid (nodata where there is no chip).\n\n"
            "A photo that cannot be read is reported in the log and the others are still located. When the backend "
            "stops early (a crash, out of memory), what it located is returned with PHOTOS_MISSING = the photos it "
            "never reached, and a warning: it is a partial result.\n\n"
            "Advanced: Photos are = detected per photo (XMP GPano, else a 2:1 aspect), all 360° panoramas, or all "
            "limited field of view photos. Backend run GeoPackage: keep the backend's own results there; with "
            "Resume, an interrupted run of the same GeoPackage is finished without redoing located photos.")

    def initAlgorithm(self, config=None) -> None:
        """Declare the parameters and outputs."""
        self.addParameter(QgsProcessingParameterMultipleLayers(
            self.PHOTOS, tr("Photos (files or a folder)"), QgsProcessing.SourceType.TypeFile))
        self.addParameter(QgsProcessingParameterFile(
            self.INDEX, tr("Reference index folder"), QgsProcessingParameterFile.Behavior.Folder))
        self.addParameter(QgsProcessingParameterFile(
            self.CHECKPOINT, tr("SAIG checkpoint (optional when the index records one)"),
            QgsProcessingParameterFile.Behavior.File, fileFilter=tr("Checkpoints (*.pt *.pth);;All files (*)"),
            optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.TOP_K, tr("Candidates per photo (top-k)"), QgsProcessingParameterNumber.Type.Integer, 20, False, 1,
            1000))
        self.addParameter(QgsProcessingParameterNumber(
            self.PRIOR_RADIUS_M, tr("Search only within this radius of the EXIF position (m)"),
            QgsProcessingParameterNumber.Type.Double, None, True, 0.0))
        self.add_device_parameter()
        self._add_advanced(QgsProcessingParameterEnum(
            self.INPUT_MODE, tr("Photos are"), options=[tr(label) for label in INPUT_MODE_LABELS], defaultValue=0))
        self._add_advanced(QgsProcessingParameterFileDestination(
            self.RUN_FILE, tr("Backend run GeoPackage (keep it to resume an interrupted run)"),
            tr("GeoPackage (*.gpkg)"), optional=True, createByDefault=False))
        self._add_advanced(QgsProcessingParameterBoolean(
            self.RESUME, tr("Resume the interrupted run of this backend run GeoPackage"), False))
        self.addParameter(QgsProcessingParameterFeatureSink(
            self.OUTPUT, tr("Candidates"), QgsProcessing.SourceType.TypeVectorPoint))
        self.addParameter(QgsProcessingParameterFeatureSink(
            self.EXIF_OUTPUT, tr("EXIF positions"), QgsProcessing.SourceType.TypeVectorPoint, optional=True,
            createByDefault=False))
        self.addParameter(QgsProcessingParameterFolderDestination(
            self.HEATMAP_DIR, tr("Heatmap folder"), optional=True, createByDefault=False))
        self.addOutput(QgsProcessingOutputMultipleLayers("HEATMAPS", tr("Heatmaps")))
        self.addOutput(QgsProcessingOutputNumber("PHOTOS_LOCATED", tr("Photos located")))
        self.addOutput(QgsProcessingOutputNumber("PHOTOS_FAILED", tr("Photos that failed")))
        self.addOutput(QgsProcessingOutputNumber(
            "PHOTOS_MISSING", tr("Photos neither located nor reported (the backend stopped before them)")))

    def _add_advanced(self, param: QgsProcessingParameterDefinition) -> None:
        param.setFlags(param.flags() | QgsProcessingParameterDefinition.Flag.FlagAdvanced)
        self.addParameter(param)

    def _inputs(self, parameters, context, feedback) -> dict:
        """The checked inputs of a run, before the backend locates anything."""
        index = self.parameterAsFile(parameters, self.INDEX, context)
        if not index or not os.path.isdir(index):
            raise QgsProcessingException(tr("The index folder {} does not exist.").format(index or "(none)"))
        checkpoint = self.parameterAsFile(parameters, self.CHECKPOINT, context)
        if checkpoint and not os.path.isfile(checkpoint):
            raise QgsProcessingException(tr("The checkpoint file {} does not exist.").format(checkpoint))
        prior = None
        if parameters.get(self.PRIOR_RADIUS_M) not in (None, ""):
            prior = self.parameterAsDouble(parameters, self.PRIOR_RADIUS_M, context)
            if not prior > 0:
                raise QgsProcessingException(tr("The prior radius must be greater than 0 m (got {}).").format(prior))
        for output in (self.OUTPUT, self.EXIF_OUTPUT):
            self.check_file_output(parameters, output, context)
        heatmap_dir = ""
        if parameters.get(self.HEATMAP_DIR) not in (None, ""):
            heatmap_dir = self.parameterAsFileOutput(parameters, self.HEATMAP_DIR, context)
        run_file = ""
        if parameters.get(self.RUN_FILE) not in (None, ""):
            run_file = self.parameterAsFileOutput(parameters, self.RUN_FILE, context)
        resume = self.parameterAsBool(parameters, self.RESUME, context)
        if resume and not run_file:
            raise QgsProcessingException(tr("Resume needs the backend run GeoPackage of the interrupted run."))
        entries = [str(e) for e in self.parameterAsFileList(parameters, self.PHOTOS, context) if e]
        if not entries:
            raise QgsProcessingException(tr("Choose at least one photo (files or a folder)."))
        return {"entries": entries, "index": index, "checkpoint": checkpoint, "prior": prior,
                "heatmap_dir": heatmap_dir, "run_file": run_file, "resume": resume,
                "mode": INPUT_MODES[self.parameterAsEnum(parameters, self.INPUT_MODE, context)],
                "top_k": self.parameterAsInt(parameters, self.TOP_K, context),
                "device": self.device(parameters, context)}

    @staticmethod
    def _photo_list(entries: list[str], feedback: QgsProcessingFeedback) -> list[str]:
        """The photos the backend will process (``saig photos``); skipped files are named with their reasons."""
        try:
            found = list_photos(entries, is_canceled=feedback.isCanceled)
        except BackendError as e:
            raise QgsProcessingException(str(e)) from None
        for path, reason in found.skipped:
            feedback.pushWarning(tr("{}: skipped: {}").format(path, reason))
        if not found.photos:
            raise QgsProcessingException(tr("No photo found in {}.").format(", ".join(entries)))
        return found.photos

    @staticmethod
    def _locate_args(inputs: dict, out: str, heatmaps: str) -> list:
        args = ["locate", *inputs["entries"], "--index", inputs["index"], "-k", inputs["top_k"], "--out", out,
                "--device", inputs["device"], "--json"]
        if inputs["checkpoint"]:
            args += ["--checkpoint", inputs["checkpoint"]]
        if inputs["prior"] is not None:
            args += ["--prior-radius-m", inputs["prior"]]
        if heatmaps:
            args += ["--heatmap-dir", heatmaps]
        if inputs["mode"] != "auto":
            args.append(f"--{inputs['mode']}")
        if inputs["run_file"]:
            args.append("--resume" if inputs["resume"] else "--overwrite")
        return args

    def processAlgorithm(self, parameters, context, feedback):
        """Validate the inputs, list the photos, run the backend, then write the outputs."""
        inputs = self._inputs(parameters, context, feedback)
        contract = self.contract(feedback)
        photos = self._photo_list(inputs["entries"], feedback)
        heatmap_dir, run_file = inputs["heatmap_dir"], inputs["run_file"]
        scratch = self.scratch_folder()
        try:
            # With a run GeoPackage the backend's outputs stay where a resumed run finds them again.
            out = run_file or os.path.join(scratch, "results.gpkg")
            backend_heatmaps = (heatmap_dir if run_file else os.path.join(scratch, "heatmaps")) if heatmap_dir else ""
            done = {"photos": 0}

            def photos_done(event: dict) -> float | None:
                done["photos"] += 1
                return min(1.0, done["photos"] / len(photos))

            run = self.backend(self._locate_args(inputs, out, backend_heatmaps), feedback, scratch, photos_done,
                               partial_ok=True)
            photo_results = [r for r in run.results if "candidates" in r]
            if not photo_results:
                raise QgsProcessingException("\n".join(t for t in (format_errors(run.errors), run.exit_description())
                                                       if t) or tr("The backend located no photo."))
            heatmaps = self._heatmap_destinations(photo_results, heatmap_dir, moved=not run_file)
            outputs = self._write_outputs(parameters, context, contract, photo_results, heatmaps)
            if heatmaps and not run_file:
                os.makedirs(heatmap_dir, exist_ok=True)
                for src, dst in heatmaps.items():
                    shutil.move(src, dst)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        missing = self._report_failures(run, photos, feedback)
        outputs.update({"HEATMAPS": list(heatmaps.values()), "PHOTOS_LOCATED": len(photo_results),
                        "PHOTOS_FAILED": len(run.errors), "PHOTOS_MISSING": len(missing)})
        if heatmap_dir:
            outputs[self.HEATMAP_DIR] = heatmap_dir
        self._load_on_completion(context, outputs)
        return outputs

    @staticmethod
    def _report_failures(run: BackendRun, photos: list[str], feedback: QgsProcessingFeedback) -> list[str]:
        """Report photos that failed and, when the backend stopped early, the ones it never reached."""
        if run.errors:
            feedback.reportError(tr("{} of {} photos could not be located:\n{}").format(
                len(run.errors), len(photos), format_errors(run.errors)), False)
        missing = missing_photos(photos, run)
        if missing or (not run.clean_exit and not run.errors):
            shown = "\n".join(missing[:20]) + ("\n…" if len(missing) > 20 else "")
            feedback.reportError(tr("Partial result: {} of {} photos were neither located nor reported, because "
                                    "the backend stopped early. {}\n{}").format(
                                        len(missing), len(photos), run.exit_description(), shown).rstrip(), False)
        return missing

    def _load_on_completion(self, context: QgsProcessingContext, outputs: dict) -> None:
        style_on_load(context, outputs[self.OUTPUT], "candidates")
        style_on_load(context, outputs.get(self.EXIF_OUTPUT, ""), "exif")
        if context.project() is not None:
            for path in outputs["HEATMAPS"]:
                name = tr("SAIG heatmap {}").format(os.path.splitext(os.path.basename(path))[0])
                context.addLayerToLoadOnCompletion(path, QgsProcessingContext.LayerDetails(
                    name, context.project(), "HEATMAPS"))
                style_on_load(context, path, "heatmap")

    def _write_outputs(self, parameters, context, contract: dict, photo_results: list[dict],
                       heatmaps: dict) -> dict:
        wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
        fields, result_fields = candidate_fields(contract), candidate_result_fields(contract)
        sink, dest_id = self.parameterAsSink(parameters, self.OUTPUT, context, fields, QgsWkbTypes.Type.Point, wgs84)
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, self.OUTPUT))
        for result in photo_results:
            photo = str(result.get("photo", ""))
            heatmap = heatmaps.get(result.get("heatmap") or "", "")
            for c in result.get("candidates") or []:
                f = QgsFeature(fields)
                lon, lat = _number(c.get("lon")), _number(c.get("lat"))
                if lon is None or lat is None:
                    continue
                f.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(lon, lat)))
                f.setAttributes([photo, os.path.basename(photo),
                                 *(_attribute(c.get(name), kind) for name, kind in result_fields), heatmap])
                sink.addFeature(f, QgsFeatureSink.Flag.FastInsert)
        outputs = {self.OUTPUT: dest_id}
        exif_sink, exif_id = self.parameterAsSink(parameters, self.EXIF_OUTPUT, context, exif_fields(),
                                                  QgsWkbTypes.Type.Point, wgs84)
        if exif_sink is not None:
            for result in photo_results:
                exif = result.get("exif") or {}
                lon, lat = _number(exif.get("lon")), _number(exif.get("lat"))
                if lon is None or lat is None:
                    continue
                photo = str(result.get("photo", ""))
                f = QgsFeature(exif_fields())
                f.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(lon, lat)))
                f.setAttributes([photo, os.path.basename(photo), lon, lat, _number(exif.get("heading")),
                                 str(exif.get("heading_ref") or "")])
                exif_sink.addFeature(f, QgsFeatureSink.Flag.FastInsert)
            outputs[self.EXIF_OUTPUT] = exif_id
        return outputs

    @staticmethod
    def _heatmap_destinations(photo_results: list[dict], heatmap_dir: str, moved: bool) -> dict:
        """Backend heatmap -> its final path in the user's heatmap folder, per photo (the same path when the
        backend wrote into that folder itself)."""
        if not heatmap_dir:
            return {}
        return {r["heatmap"]: os.path.join(heatmap_dir, os.path.basename(r["heatmap"])) if moved else r["heatmap"]
                for r in photo_results if r.get("heatmap") and os.path.isfile(r["heatmap"])}
