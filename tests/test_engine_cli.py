"""The engine's commands through real subprocesses of the installed ``saig`` CLI."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from authors_reference import authors_state_dict

from saig_core import build_model, load_checkpoint, model_fingerprint, save_checkpoint

SAIG = Path(sys.executable).with_name("saig")
GROUND, AERIAL = (32, 128), (64, 64)


def run(*args, check=True):
    proc = subprocess.run([str(SAIG), *map(str, args)], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"saig {' '.join(map(str, args))} -> {proc.returncode}\n{proc.stderr}")
    return proc


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def authors_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "model_checkpoint.pth"
    torch.save({"model": authors_state_dict(depth=2, ground_tokens=16, aerial_tokens=16, smd=True),
                "epoch": 3, "best_acc": 42.0}, path)
    return path


def test_convert_official_writes_the_project_format_and_info_reads_it(authors_file, tmp_path):
    out = tmp_path / "converted.pt"
    proc = run("--progress", "json", "convert-official", authors_file, out, "--ground-size", "32x128",
               "--aerial-size", "64x64")
    result = json_lines(proc.stdout)[-1]
    original = load_checkpoint(authors_file, ground_size=GROUND, aerial_size=AERIAL)
    assert result["event"] == "result" and result["fingerprint"] == model_fingerprint(original)
    raw = torch.load(out, weights_only=True)
    assert raw["format"] == "saig-checkpoint" and raw["metadata"]["converted_from"] == "model_checkpoint.pth"

    info = json_lines(run("info", out, "--json").stdout)[-1]
    assert info["kind"] == "project" and info["config"]["pool"] == "smd" and info["descriptor_dim"] == 3072
    assert info["config"]["ground_size"] == list(GROUND) and info["fingerprint"] == result["fingerprint"]

    text = run("info", out).stdout
    assert "pool smd" in text and "3072-d" in text and result["fingerprint"] in text


def test_backend_info_reports_versions_device_and_model(tmp_path):
    path = save_checkpoint(build_model("saig_micro", ground_size=GROUND, aerial_size=AERIAL), tmp_path / "m.pt")
    lines = json_lines(run("backend-info", "--checkpoint", path, "--device", "cpu", "--json").stdout)
    assert len(lines) == 1
    info = lines[0]
    assert info["event"] == "result" and info["torch"] == torch.__version__
    assert {"version", "device", "device_name", "cuda", "model"} <= info.keys()
    assert info["device"] == "cpu" and info["cuda"] is False
    assert info["model"]["preset"] == "saig_micro" and info["model"]["fingerprint"] == model_fingerprint(
        load_checkpoint(path))
    assert json_lines(run("backend-info", "--json").stdout)[0]["model"] is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when CUDA is absent")
def test_backend_info_explains_a_missing_gpu_and_a_bad_checkpoint(tmp_path):
    proc = run("backend-info", "--device", "cuda", "--json", check=False)
    assert proc.returncode == 1 and "no CUDA GPU" in proc.stderr
    assert json_lines(proc.stdout)[-1]["event"] == "error"
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    proc = run("--progress", "json", "backend-info", "--checkpoint", bad, "--json", check=False)
    error = json_lines(proc.stdout)[-1]
    assert proc.returncode == 1 and error["event"] == "error" and "broken.pt" in error["message"]
    assert "Traceback" not in proc.stderr


def test_export_onnx_writes_both_branches_and_verifies_them(authors_file, tmp_path):
    pytest.importorskip("onnxruntime", reason="the 'onnx' extra is not installed")
    out = tmp_path / "onnx"
    proc = run("export-onnx", authors_file, out, "--ground-size", "32x128", "--aerial-size", "64x64", "--json")
    result = json_lines(proc.stdout)[-1]
    assert result["files"] == ["ground.onnx", "aerial.onnx"] and result["max_abs_diff"] < 1e-4
    assert {p.name for p in out.iterdir()} == {"ground.onnx", "aerial.onnx", "saig-onnx.json"}


def test_an_unsafe_checkpoint_is_refused_without_a_traceback(tmp_path):
    path = tmp_path / "evil.pth"
    path.write_bytes(_pickle_needing_code())
    proc = run("info", path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "refused" in proc.stderr and "argparse.Namespace" in proc.stderr


def _pickle_needing_code() -> bytes:
    """A torch file whose unpickling would import and run argparse.Namespace (any code, really)."""
    import argparse
    import io

    buf = io.BytesIO()
    torch.save({"model": {}, "args": argparse.Namespace(lr=1e-4)}, buf)
    return buf.getvalue()


def test_the_public_api_resolves_and_the_cli_module_does_not_import_torch():
    code = ("import sys, saig_core, saig_cli.engine; assert 'torch' not in sys.modules; "
            "[getattr(saig_core, n) for n in saig_core.__all__]; assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
