"""The dock's *Install backend* panel: runs :mod:`backend_install` in a background task.

Install (or repair, or upgrade) the backend the plugin manages: a venv in the QGIS profile folder with
the backend wheel shipped in the plugin ZIP and a torch build chosen for the machine. pip's output
streams into the panel's log (and ``install.log``), Cancel stops the running step's process tree, and
the install options (base Python, torch requirement or wheel, torch index, a wheel folder, offline)
are kept in the QGIS settings so a re-run uses them again.
"""
from __future__ import annotations

from qgis.core import QgsApplication, QgsSettings, QgsTask
from qgis.gui import QgsCollapsibleGroupBox, QgsFileWidget
from qgis.PyQt import sip
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from . import backend_install
from .backend import managed_home

SETTINGS_PREFIX = "saig/install/"
LOG_LINES = 2000  # the panel keeps the last lines; install.log keeps everything


class InstallTask(QgsTask):
    """Runs the installer off the main thread; never raises (a failure is kept in ``error``)."""

    line = pyqtSignal(str)

    def __init__(self, options: backend_install.InstallOptions) -> None:
        super().__init__("Install the SAIG backend", QgsTask.Flag.CanCancel)
        self.options = options
        self.record: dict | None = None
        self.error = ""
        self.log_path = ""

    def run(self) -> bool:
        """Install; True when every step succeeded and ``install.json`` was written."""
        installer = backend_install.Installer(self.options, on_line=self.line.emit,
                                              on_progress=lambda fraction, _title: self.setProgress(100 * fraction),
                                              is_canceled=self.isCanceled)
        self.log_path = str(installer.log_path)
        try:
            self.record = installer.run()
            return True
        except backend_install.InstallError as e:  # includes InstallCanceled
            self.error = str(e)
        except Exception as e:  # noqa: BLE001 -- a task must never raise; the message is shown instead
            self.error = f"The install stopped unexpectedly: {e!r}. Full log: {self.log_path}"
        return False


class InstallPanel(QWidget):
    """Install backend / Cancel, progress, the streamed log and the install options."""

    #: (ok, message) when an install ends (message: what was installed, or why it failed or stopped)
    install_finished = pyqtSignal(bool, str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.task: InstallTask | None = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.install_button = QPushButton("Install backend")
        self.install_button.setToolTip("Create (or repair, or upgrade) the backend environment in the QGIS profile "
                                       "folder: the SAIG backend shipped with the plugin and a torch build for this "
                                       "machine (CUDA when nvidia-smi reports a supported driver, else CPU).")
        self.cancel_button = QPushButton("Cancel install")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setVisible(False)  # shown from the first install on
        row.addWidget(self.install_button)
        row.addWidget(self.cancel_button)
        row.addWidget(self.progress, 1)
        row.addStretch(0)
        layout.addLayout(row)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(LOG_LINES)
        self.log.setPlaceholderText(f"The install's output appears here and in {managed_home()}/install.log")
        self.log.setVisible(False)
        layout.addWidget(self.log)
        layout.addWidget(self._build_options())
        if backend_install.read_record(managed_home()) is not None:
            self.install_button.setText("Repair / upgrade backend")  # installed before: running it again repairs
        self.install_button.clicked.connect(self.install)
        self.cancel_button.clicked.connect(self.cancel)
        self._restore()

    def _build_options(self) -> QgsCollapsibleGroupBox:
        box = QgsCollapsibleGroupBox("Install options")
        box.setCollapsed(True)
        form = QFormLayout(box)
        self.base_python = QgsFileWidget()
        self.base_python.setStorageMode(QgsFileWidget.StorageMode.GetFile)
        self.base_python.lineEdit().setPlaceholderText("found automatically (Python 3.10 or newer)")
        form.addRow("Python for the venv", self.base_python)
        self.torch_requirement = QLineEdit()
        self.torch_requirement.setPlaceholderText("automatic (CUDA or CPU build); or e.g. torch==2.13.0, a .whl file")
        form.addRow("torch", self.torch_requirement)
        self.torch_index = QLineEdit()
        self.torch_index.setPlaceholderText("automatic (download.pytorch.org for the chosen build)")
        form.addRow("torch index URL", self.torch_index)
        self.find_links = QgsFileWidget()
        self.find_links.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.find_links.lineEdit().setPlaceholderText("a folder (or URL) of wheels offered to pip")
        form.addRow("Wheel folder", self.find_links)
        self.offline = QCheckBox("Offline: no package index, only the wheel folder and the torch file")
        form.addRow(self.offline)
        self.home_label = QLabel(f"Installs into {managed_home()}")
        self.home_label.setWordWrap(True)
        form.addRow(self.home_label)
        return box

    def _restore(self) -> None:
        s = QgsSettings()
        self.base_python.setFilePath(s.value(SETTINGS_PREFIX + "python", "", type=str))
        self.torch_requirement.setText(s.value(SETTINGS_PREFIX + "torch", "", type=str))
        self.torch_index.setText(s.value(SETTINGS_PREFIX + "torch_index_url", "", type=str))
        self.find_links.setFilePath(s.value(SETTINGS_PREFIX + "find_links", "", type=str))
        self.offline.setChecked(s.value(SETTINGS_PREFIX + "no_index", False, type=bool))

    def options(self) -> backend_install.InstallOptions:
        """The install options as set in the panel (and saved for the next run)."""
        s = QgsSettings()
        values = {"python": self.base_python.filePath().strip(), "torch": self.torch_requirement.text().strip(),
                  "torch_index_url": self.torch_index.text().strip(), "find_links": self.find_links.filePath().strip()}
        for key, value in values.items():
            s.setValue(SETTINGS_PREFIX + key, value)
        s.setValue(SETTINGS_PREFIX + "no_index", self.offline.isChecked())
        return backend_install.InstallOptions(
            home=managed_home(), python=values["python"], torch_requirement=values["torch"],
            torch_index_url=values["torch_index_url"], find_links=values["find_links"],
            no_index=self.offline.isChecked())

    def is_installing(self) -> bool:
        """Whether an install is running."""
        return self.task is not None

    def install(self) -> None:
        """Start the install in a background task (a second click while one runs does nothing)."""
        if self.task is not None:
            return
        self.log.clear()
        self.log.setVisible(True)
        self.progress.setVisible(True)
        self.progress.setValue(0)
        task = InstallTask(self.options())
        task.line.connect(self.log.appendPlainText)
        task.progressChanged.connect(lambda value: self.progress.setValue(int(value)))
        task.taskCompleted.connect(lambda: self._finished(task, True))
        task.taskTerminated.connect(lambda: self._finished(task, False))
        self.task = task
        self.install_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        QgsApplication.taskManager().addTask(task)

    def cancel(self) -> None:
        """Stop the install: the running step's process tree is terminated."""
        if self.task is not None:
            self.log.appendPlainText("canceling…")
            self.task.cancel()

    def _finished(self, task: InstallTask, ok: bool) -> None:
        if sip.isdeleted(self) or task is not self.task:
            return  # the dock was closed (plugin unloaded) meanwhile
        self.task = None
        self.install_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if ok and task.record is not None:
            record = task.record
            self.progress.setValue(100)
            self.install_button.setText("Repair / upgrade backend")
            text = (f"installed saig {record.get('saig')}, torch {record.get('torch')} "
                    f"({record.get('torch_choice', {}).get('build', '?')} build) on {record.get('device_name')}; "
                    f"log: {record.get('log')}")
        else:
            text = task.error or "Canceled: the backend install was stopped."
        self.log.appendPlainText(text)
        self.install_finished.emit(ok and task.record is not None, text)
