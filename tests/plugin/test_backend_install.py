"""Installing the backend: the torch build chosen for the machine, the Python found, failures, cancel, repair.

There is no NVIDIA GPU here: ``nvidia-smi`` is a stand-in script printing what the real one prints
for the GPUs and drivers named in each test (the only mock of these tests). The full install from
the plugin ZIP into an empty profile, with real pip, is in ``test_install_from_zip.py``.
"""
from __future__ import annotations

import json
import stat
import sys
import time
from pathlib import Path

import pytest

from qgis_saig_plugin import backend_install, torch_choice
from qgis_saig_plugin.backend_install import InstallCanceled, Installer, InstallError, InstallOptions


def script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def nvidia_smi(tmp_path: Path, csv_line: str, knows_compute_cap: bool = True) -> str:
    """A stand-in for nvidia-smi answering --query-gpu like the real one (older drivers refuse compute_cap)."""
    refuse = "" if knows_compute_cap else \
        'case "$1" in *compute_cap*) echo \'Field "compute_cap" is not a valid field to query.\'; exit 2;; esac\n'
    line = csv_line if knows_compute_cap else ", ".join(csv_line.split(", ")[:2])
    return str(script(tmp_path / "nvidia-smi", f"{refuse}echo '{line}'"))


def choice_for(tmp_path: Path, csv_line: str, platform: str = "linux", **kw) -> torch_choice.TorchChoice:
    gpus, note = torch_choice.query_gpus(nvidia_smi(tmp_path, csv_line, **kw))
    return torch_choice.choose_torch(gpus, note, platform)


def test_a_current_datacenter_gpu_gets_the_newest_cuda_build_its_driver_runs(tmp_path):
    choice = choice_for(tmp_path, "NVIDIA H200, 570.86.15, 9.0")
    assert choice.build == "cu128" and choice.index_url == "https://download.pytorch.org/whl/cu128"
    assert "NVIDIA H200 (driver 570.86.15, compute capability 9.0)" in choice.reason
    assert choice_for(tmp_path, "NVIDIA H200, 580.65.06, 9.0").build == "cu130"


def test_a_pascal_gpu_keeps_the_cuda_12_6_build_and_blackwell_needs_12_8(tmp_path):
    assert choice_for(tmp_path, "Tesla P100-PCIE-16GB, 535.104.05, 6.0").build == "cu126"
    assert choice_for(tmp_path, "NVIDIA GeForce RTX 5090, 575.51.02, 12.0").build == "cu128"


def test_a_driver_too_old_for_cuda_12_falls_back_to_cpu_and_says_why(tmp_path):
    choice = choice_for(tmp_path, "Tesla T4, 470.182.03, 7.5")
    assert choice.build == "cpu" and choice.index_url == "https://download.pytorch.org/whl/cpu"
    assert "470.182.03" in choice.reason and "too old" in choice.reason and ">= 525.60.13" in choice.reason


def test_windows_drivers_are_judged_by_their_own_minimums(tmp_path):
    assert choice_for(tmp_path, "NVIDIA RTX A4000, 527.41, 8.6", platform="win32").build == "cu128"
    assert choice_for(tmp_path, "NVIDIA RTX A4000, 527.10, 8.6", platform="win32").build == "cpu"


def test_an_nvidia_smi_without_compute_cap_is_asked_again_without_it(tmp_path):
    gpus, _ = torch_choice.query_gpus(nvidia_smi(tmp_path, "Tesla V100-SXM2-16GB, 535.54.03, 7.0",
                                                 knows_compute_cap=False))
    assert gpus == [torch_choice.Gpu("Tesla V100-SXM2-16GB", "535.54.03", None)]
    assert torch_choice.choose_torch(gpus, "").build == "cu126"  # unknown GPU generation: the widest-range build


def test_no_gpu_a_failing_nvidia_smi_or_macos_means_the_cpu_build(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    gpus, note = torch_choice.query_gpus()
    assert gpus == [] and "not found" in note
    assert torch_choice.choose_torch(gpus, note).build == "cpu"
    failing = script(tmp_path / "bin" / "nvidia-smi", "echo \"NVIDIA-SMI has failed because it couldn't "
                                                      "communicate with the NVIDIA driver.\"; exit 9")
    gpus, note = torch_choice.query_gpus(str(failing))
    assert gpus == [] and "couldn't communicate with the NVIDIA driver" in note
    mac = torch_choice.choose_torch([], "", platform="darwin")
    assert mac.build == "cpu" and mac.index_url is None  # PyPI's macOS wheels (CPU + MPS)


def test_install_options_override_the_automatic_choice_and_still_name_it(tmp_path):
    automatic = choice_for(tmp_path, "NVIDIA L4, 550.54.15, 8.9")
    custom = torch_choice.custom_choice("torch==2.13.0", "", automatic)
    assert custom.requirement == "torch==2.13.0" and custom.index_url is None and custom.build == "custom"
    assert "cu128" in custom.reason


def test_the_python_running_qgis_is_found_and_reported():
    command, facts, how = backend_install.find_python()
    assert tuple(facts["version"][:2]) >= (3, 10)
    assert Path(command[0]).exists() and how


def test_an_unsuitable_python_is_refused_with_what_was_tried(tmp_path):
    old = script(tmp_path / "python3.8", "echo '{\"version\": [3, 8, 10], \"executable\": \"x\", \"base\": \"x\", "
                                         "\"in_venv\": false}'")
    with pytest.raises(InstallError) as err:
        backend_install.find_python(str(old))
    assert str(old) in str(err.value) and "needs 3.10 or newer" in str(err.value)
    with pytest.raises(InstallError, match="cannot run"):
        backend_install.find_python(str(tmp_path / "no-such-python"))


def test_a_plugin_without_a_shipped_wheel_says_how_to_get_one(tmp_path):
    with pytest.raises(InstallError, match="make plugin-zip"):
        backend_install.shipped_wheel(tmp_path)


def installer(tmp_path: Path, **kw) -> Installer:
    wheel = tmp_path / "saig_geolocate-0.0.0-py3-none-any.whl"
    wheel.write_bytes(b"not a real wheel")
    return Installer(InstallOptions(home=tmp_path / "home", wheel=str(wheel), python=sys.executable,
                                    nvidia_smi=str(tmp_path / "no-nvidia-smi"), **kw))


def test_a_failing_step_is_an_error_naming_the_step_and_the_log_and_no_record_is_left(tmp_path):
    inst = installer(tmp_path, torch_requirement="torch==0.0.0.does.not.exist", no_index=True,
                     find_links=str(tmp_path / "empty-wheelhouse"))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "install.json").write_text('{"python": "/usr/bin/python3"}')  # an older install's record
    with pytest.raises(InstallError) as err:
        inst.run()
    message = str(err.value)
    assert "Installing torch (custom build) failed" in message and str(inst.log_path) in message
    assert backend_install.read_record(tmp_path / "home") is None  # not picked up half-done
    log = inst.log_path.read_text()
    assert "torch==0.0.0.does.not.exist" in log and "failed:" in log
    assert (tmp_path / "home" / "venv" / backend_install.MARKER).exists()


def test_cancel_stops_the_running_step_quickly(tmp_path):
    inst = installer(tmp_path)
    lines: list[str] = []
    inst.on_line = lines.append
    started = time.monotonic()
    slow = backend_install.Step("A slow step", [sys.executable, "-c", "import time; print('working', flush=True); "
                                                "time.sleep(60)"], 1.0)
    inst.is_canceled = lambda: "working" in lines
    inst.home.mkdir(parents=True)
    with pytest.raises(InstallCanceled):
        inst._run(slow)
    assert time.monotonic() - started < 10


def test_a_folder_the_installer_did_not_create_is_never_touched(tmp_path):
    inst = installer(tmp_path)
    foreign = inst.venv
    foreign.mkdir(parents=True)
    (foreign / "precious.txt").write_text("mine")
    with pytest.raises(InstallError, match="was not created by this installer"):
        inst.run()
    assert (foreign / "precious.txt").read_text() == "mine"


def test_the_record_is_read_only_when_its_python_exists(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "install.json").write_text(json.dumps({"python": sys.executable}))
    assert backend_install.read_record(home)["python"] == sys.executable
    (home / "install.json").write_text(json.dumps({"python": str(tmp_path / "gone" / "python")}))
    assert backend_install.read_record(home) is None


def test_the_windows_tree_kill_commands_end_the_whole_tree():
    from qgis_saig_plugin import process

    # the Windows branch cannot run here; its commands are the documented taskkill forms
    assert process.tree_kill_commands(4242, force=False) == ["taskkill", "/T", "/PID", "4242"]
    assert process.tree_kill_commands(4242, force=True) == ["taskkill", "/F", "/T", "/PID", "4242"]
    assert process.group_options("nt")["creationflags"] & 0x200  # CREATE_NEW_PROCESS_GROUP
    assert process.group_options("posix") == {"start_new_session": True}
