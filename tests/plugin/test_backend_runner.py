"""The backend subprocess: where it is found, its environment, JSON lines, cancel, and failures."""
from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest
from conftest import write_backend_without_schema

from qgis_saig_plugin import backend, process
from qgis_saig_plugin.backend import BackendCanceled, BackendError, BackendLocation, run_backend


def fake_backend(tmp_path: Path, body: str, name: str = "python") -> Path:
    """An executable standing in for the backend's Python (a shell script; arguments ignored)."""
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def no_setting():
    backend.set_configured_python("")
    yield
    backend.set_configured_python("")


def test_setting_wins_over_environment_and_runs_python_as_module(no_setting, monkeypatch):
    monkeypatch.setenv("SAIG_PYTHON", "/env/python")
    backend.set_configured_python("/configured/bin/python")
    found = backend.locate_backend()
    assert found.command == ("/configured/bin/python", "-m", "saig_core")
    assert "setting" in found.source


def test_saig_python_environment_variable_is_used_when_no_setting(no_setting, monkeypatch):
    monkeypatch.setenv("SAIG_PYTHON", "/env/venv/bin/saig")
    found = backend.locate_backend()
    assert found.command == ("/env/venv/bin/saig",)  # the venv's saig script runs directly
    assert "SAIG_PYTHON" in found.source


def test_checkout_recorded_at_install_is_used_when_nothing_else_is_set(no_setting, monkeypatch, tmp_path):
    monkeypatch.delenv("SAIG_PYTHON", raising=False)
    record = tmp_path / "backend.json"
    record.write_text('{"checkout": "/src/saig-geolocate"}')
    monkeypatch.setattr(backend, "BACKEND_JSON", record)
    found = backend.locate_backend()
    assert found.command == ("/src/saig-geolocate/.venv/bin/python", "-m", "saig_core")


def test_no_backend_anywhere_says_how_to_fix_it(no_setting, monkeypatch, tmp_path):
    monkeypatch.delenv("SAIG_PYTHON", raising=False)
    monkeypatch.setattr(backend, "BACKEND_JSON", tmp_path / "absent.json")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BackendError, match="No SAIG backend is configured.*SAIG_PYTHON"):
        backend.locate_backend()


def test_child_environment_drops_qgis_python_proj_and_gdal_variables():
    dirty = {"PATH": "/usr/bin", "HOME": "/home/u", "PYTHONPATH": "/usr/share/qgis/python",
             "PYTHONHOME": "/usr", "PROJ_LIB": "/usr/share/proj", "PROJ_DATA": "/usr/share/proj",
             "GDAL_DATA": "/usr/share/gdal", "LD_LIBRARY_PATH": "/usr/lib/qgis"}
    env = process.clean_environment(dirty)
    for name in ("PYTHONPATH", "PYTHONHOME", "PROJ_LIB", "PROJ_DATA", "GDAL_DATA", "LD_LIBRARY_PATH"):
        assert name not in env
    assert env["PATH"] == "/usr/bin" and env["HOME"] == "/home/u"
    assert env["PYTHONUNBUFFERED"] == "1"


def test_the_real_child_sees_the_cleaned_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", "/nonexistent/qgis/python")
    monkeypatch.setenv("GDAL_DATA", "/nonexistent/gdal")
    script = fake_backend(tmp_path, 'printf \'{"event": "result", "pythonpath": "%s", "gdal": "%s"}\\n\' '
                                     '"${PYTHONPATH-unset}" "${GDAL_DATA-unset}"')
    run = run_backend(["anything"], location=BackendLocation((str(script),), "test"))
    assert run.results == [{"event": "result", "pythonpath": "unset", "gdal": "unset"}]


def test_events_stream_in_order_and_non_json_lines_become_logs(tmp_path):
    script = fake_backend(tmp_path, "\n".join([
        """echo '{"event": "progress", "stage": "encode", "done": 1, "total": 2, "fraction": 0.5}'""",
        "echo 'plain text from a library'",
        """echo '{"event": "error", "file": "a.jpg", "message": "not an image"}'""",
        """echo '{"event": "result", "photo": "b.jpg"}'""",
        "echo 'a warning' >&2",
    ]))
    events, stderr = [], []
    run = run_backend(["locate"], location=BackendLocation((str(script),), "test"),
                      on_event=events.append, on_stderr=stderr.append)
    assert [e["event"] for e in events] == ["progress", "log", "error", "result"]
    assert events[1]["message"] == "plain text from a library"
    assert run.errors == [{"event": "error", "file": "a.jpg", "message": "not an image"}]
    assert run.returncode == 0 and stderr == ["a warning"]


def test_missing_backend_is_a_clear_message_with_the_fix(tmp_path):
    missing = tmp_path / "no-venv" / "bin" / "python"
    with pytest.raises(BackendError) as err:
        run_backend(["backend-info", "--json"], location=BackendLocation((str(missing), "-m", "saig_core"), "test"))
    assert str(missing) in str(err.value) and "does not exist" in str(err.value)
    assert "SAIG_PYTHON" in str(err.value)


def test_python_without_the_project_installed_is_explained(tmp_path):
    with pytest.raises(BackendError, match="saig-geolocate is not installed"):
        run_backend(["backend-info", "--json"],
                    location=BackendLocation(("/usr/bin/python3", "-m", "saig_core"), "test"))


def test_killed_backend_is_reported_as_probably_out_of_memory(tmp_path):
    script = fake_backend(tmp_path, """echo '{"event": "progress", "stage": "encode", "fraction": 0.1}'\nkill -9 $$""")
    with pytest.raises(BackendError, match="killed.*probably out of memory"):
        run_backend(["index", "build"], location=BackendLocation((str(script),), "test"))


TWO_RESULTS = "\n".join([
    """echo '{"event": "result", "photo": "/p/a.jpg", "candidates": []}'""",
    """echo '{"event": "error", "file": "/p/b.jpg", "message": "not an image"}'""",
    """echo '{"event": "result", "photo": "/p/c.jpg", "candidates": []}'""",
])


@pytest.mark.parametrize("death, why", [("echo 'Traceback (most recent call last):' >&2\nexit 1", "exit code 1"),
                                        ("kill -9 $$", "killed"), ("kill -15 $$", "signal 15")])
def test_results_then_a_crash_or_a_signal_are_a_failure_never_a_success(tmp_path, death, why):
    script = fake_backend(tmp_path, TWO_RESULTS + "\n" + death)
    location = BackendLocation((str(script),), "test")
    with pytest.raises(BackendError, match=why):
        run_backend(["tile"], location=location)  # a caller that cannot account for missing work: an error
    run = run_backend(["locate"], location=location, partial_ok=True)  # one that can: the results and why
    assert [r["photo"] for r in run.results] == ["/p/a.jpg", "/p/c.jpg"] and not run.clean_exit
    assert why in run.exit_description()
    photos = ["/p/a.jpg", "/p/b.jpg", "/p/c.jpg", "/p/d.jpg", "/p/e.jpg"]
    assert backend.missing_photos(photos, run) == ["/p/d.jpg", "/p/e.jpg"]  # neither located nor reported


def test_the_photo_list_comes_from_the_backend_with_skipped_files_and_reasons(tmp_path, backend_python):
    (tmp_path / "trip" / "sub").mkdir(parents=True)
    for name in ("trip/a.jpg", "trip/sub/b.heic", "trip/sub/c.webp", "trip/readme.txt"):
        (tmp_path / name).write_bytes(b"")
    found = backend.list_photos([str(tmp_path / "trip")],
                                location=BackendLocation((str(backend_python), "-m", "saig_core"), "test"))
    assert found.photos == [str(tmp_path / "trip" / "a.jpg"), str(tmp_path / "trip" / "sub" / "b.heic"),
                            str(tmp_path / "trip" / "sub" / "c.webp")]  # recursive, HEIC and WebP included
    assert [path for path, _ in found.skipped] == [str(tmp_path / "trip" / "readme.txt")]
    assert "not a photo type" in found.skipped[0][1]


def test_a_backend_without_saig_photos_is_told_to_update(tmp_path):
    script = fake_backend(tmp_path, "echo \"saig: error: invalid choice: 'photos'\" >&2\nexit 2")
    with pytest.raises(BackendError, match="does not know 'saig photos'.*Update saig-geolocate"):
        backend.list_photos(["x"], location=BackendLocation((str(script),), "test"))


def test_windows_crash_codes_are_named_not_taken_for_signals():
    location = BackendLocation(("saig.exe",), "test")
    assert process.killed_by_signal(-1073741801) is None  # 0xC0000017 as a signed exit code
    assert "out of memory" in backend.describe_exit(0xC0000017, location, "")
    assert "out of memory" in backend.describe_exit(-1073741801, location, "")
    assert "access violation (exit code 0xc0000005)" in backend.describe_exit(0xC0000005, location, "")
    assert process.killed_by_signal(-9) == 9  # POSIX signals still read as before


def test_exit_137_from_a_wrapper_is_also_out_of_memory(tmp_path):
    script = fake_backend(tmp_path, "exit 137")
    with pytest.raises(BackendError, match="probably out of memory"):
        run_backend(["locate"], location=BackendLocation((str(script),), "test"))


def test_cancel_terminates_the_child_and_its_children_quickly(tmp_path):
    pid_file = tmp_path / "pid"
    script = fake_backend(tmp_path, f"""sleep 60 &\necho $! > {pid_file}\n"""
                                    """echo '{"event": "progress", "stage": "encode", "fraction": 0.01}'\nwait""")
    started = time.monotonic()
    seen = []
    with pytest.raises(BackendCanceled):
        run_backend(["index", "build"], location=BackendLocation((str(script),), "test"),
                    on_event=seen.append, is_canceled=lambda: bool(seen))
    assert time.monotonic() - started < 10
    grandchild = int(pid_file.read_text())
    time.sleep(0.2)
    assert not _alive(grandchild), "the backend's own child process survived the cancel"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return status.exists() and status.read_text().split()[2] != "Z"


def test_backend_info_reports_version_torch_and_device(backend_python, assets):
    info = backend.backend_info(BackendLocation((str(backend_python), "-m", "saig_core"), "test"),
                                checkpoint=str(assets.checkpoint), device="cpu")
    assert info["torch"].startswith("2.") and info["device"] == "cpu" and info["cuda"] is False
    assert info["version"]
    text = backend.describe_backend_info(info)
    assert "CPU" in text and info["torch"] in text and "saig_micro" in text


def test_a_cuda_backend_is_described_with_its_gpu():
    info = {"event": "result", "version": "0.1.0", "torch": "2.13.0+cu126", "device": "cuda",
            "device_name": "NVIDIA H100 80GB HBM3", "cuda": True,
            "model": {"preset": "saig_s", "pool": "smd", "descriptor_dim": 3072}}
    assert backend.describe_backend_info(info) == \
        "saig 0.1.0 · torch 2.13.0+cu126 · CUDA (NVIDIA H100 80GB HBM3) · model saig_s smd 3072-d"


CONTRACT = {"event": "result", "photo_suffixes": [".jpg", ".heic"], "devices": ["auto", "cpu"],
            "precisions": ["auto"], "index_kinds": ["auto"],
            "layers": {"candidates": {"photo": "str", "rank": "int"}, "photos": {"photo": "str"}},
            "candidate_result_fields": ["rank"]}


def test_the_contract_is_asked_once_per_backend_and_kept(tmp_path):
    calls = tmp_path / "calls"
    script = fake_backend(tmp_path, f"""echo "$*" >> {calls}\necho '{json.dumps(CONTRACT)}'""")
    location = BackendLocation((str(script),), "test")
    assert backend.cached_contract(location) is None
    first = backend.backend_contract(location)
    assert first["photo_suffixes"] == [".jpg", ".heic"] and first["candidate_result_fields"] == ["rank"]
    assert backend.backend_contract(location) is first and backend.cached_contract(location) is first
    assert calls.read_text().splitlines() == ["--progress json schema --json"]  # asked once


def test_a_backend_without_saig_schema_is_told_to_update_not_a_traceback(tmp_path):
    script = write_backend_without_schema(tmp_path / "old" / "python")
    location = BackendLocation((str(script), "-m", "saig_core"), "test")
    with pytest.raises(BackendError) as err:
        backend.backend_contract(location)
    message = str(err.value)
    assert "older than this plugin" in message and "saig schema" in message and str(script) in message
    assert "Update saig-geolocate" in message and "Traceback" not in message
    assert backend.cached_contract(location) is None  # asked again once it is updated


def test_an_answer_without_the_photo_types_is_refused(tmp_path):
    script = fake_backend(tmp_path, """echo '{"event": "result", "devices": ["cpu"]}'""")
    with pytest.raises(BackendError, match="without photo_suffixes, layers, candidate_result_fields"):
        backend.backend_contract(BackendLocation((str(script),), "test"))


def test_the_real_backend_reports_photo_types_and_candidate_fields(backend_python):
    contract = backend.backend_contract(BackendLocation((str(backend_python), "-m", "saig_core"), "test"))
    assert {".jpg", ".png", ".webp"} <= set(contract["photo_suffixes"])
    assert {"rank", "score", "lon", "lat"} <= set(contract["candidate_result_fields"])
    assert set(contract["candidate_result_fields"]) <= set(contract["layers"]["candidates"])
