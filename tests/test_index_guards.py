"""What must match at inference is recorded and checked: the aerial footprint, the encoder, one writer."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch
from tiling_fixtures import json_lines, micro_checkpoint, ortho, run

from saig_core.errors import SaigError
from saig_core.runtime.progress import Reporter
from saig_core.weights.checkpoint import read_checkpoint, update_metadata, weights_fingerprint
from tiling import index as index_mod
from tiling.index import BuildOptions, build_index
from tiling.lock import lock_path

REPO_DEMO = "models/demo.pt"


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("guards")
    ckpt = micro_checkpoint(tmp / "micro.pt")
    with_footprint = micro_checkpoint(tmp / "micro20.pt")
    update_metadata(with_footprint, aerial_footprint_m=20.0)
    return tmp, ckpt, with_footprint, ortho(tmp / "ortho.tif")


def test_the_shipped_demo_model_records_its_64_m_footprint_and_ground_input():
    info = json_lines(run("backend-info", "--checkpoint", REPO_DEMO, "--device", "cpu", "--json").stdout)[-1]
    model = info["model"]
    assert model["aerial_footprint_m"] == 64.0
    assert model["ground_input"]["panorama"].startswith("equirectangular") and model["ground_input"]["fov_deg"]
    raw = read_checkpoint(REPO_DEMO)
    assert weights_fingerprint(raw["state_dict"]) == raw["metadata"]["weights_sha256"]


def test_backend_info_reports_null_for_a_checkpoint_that_records_nothing(material):
    _, ckpt, _, _ = material
    model = json_lines(run("backend-info", "--checkpoint", ckpt, "--device", "cpu", "--json").stdout)[-1]["model"]
    assert model["aerial_footprint_m"] is None and model["ground_input"] is None


def test_updating_metadata_keeps_the_weights_bit_identical(material, tmp_path):
    _, ckpt, _, _ = material
    before = read_checkpoint(ckpt)
    copy = tmp_path / "copy.pt"
    copy.write_bytes(ckpt.read_bytes())
    update_metadata(copy, aerial_footprint_m=72.96)
    after = read_checkpoint(copy)
    assert after["metadata"]["aerial_footprint_m"] == 72.96
    assert all(torch.equal(before["state_dict"][k], v) and before["state_dict"][k].dtype == v.dtype
               for k, v in after["state_dict"].items())
    assert after["metadata"]["weights_sha256"] == before["metadata"]["weights_sha256"]


def test_the_data_config_takes_a_positive_aerial_footprint():
    from saig_core.training.config import ConfigError, config_from_dict

    cfg = config_from_dict({"data": {"kind": "pairs_csv", "train": "p.csv", "aerial_footprint_m": 64}})
    assert cfg.data.aerial_footprint_m == 64 and cfg.to_dict()["data"]["aerial_footprint_m"] == 64
    with pytest.raises(ConfigError, match="aerial_footprint_m"):
        config_from_dict({"data": {"train": "p.csv", "aerial_footprint_m": -3}})


def test_index_build_defaults_the_chip_size_to_the_recorded_footprint(material, tmp_path):
    _, _, ckpt, tif = material
    out = tmp_path / "idx"
    proc = run("--progress", "json", "index", "build", tif, "--checkpoint", ckpt, "--out", out)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["chips"]["chip_size_m"] == 20.0 and meta["chips"]["stride_m"] == 5.0  # a quarter of the chip
    assert any("aerial footprint recorded" in e.get("message", "") for e in json_lines(proc.stdout))
    assert meta["encoder"]["device"] == "cpu" and meta["encoder"]["precision"] == "fp32"
    assert not lock_path(out).exists()


def test_index_build_warns_when_the_chip_size_is_far_from_the_footprint(material, tmp_path):
    _, _, ckpt, tif = material
    proc = run("--progress", "json", "index", "build", tif, "--checkpoint", ckpt, "--chip-size-m", 26,
               "--stride-m", 13, "--out", tmp_path / "far")
    warnings = [e["message"] for e in json_lines(proc.stdout) if e.get("level") == "warning"]
    assert any("differs by 30%" in w and "20 m aerial footprint" in w for w in warnings)
    near = run("--progress", "json", "index", "build", tif, "--checkpoint", ckpt, "--chip-size-m", 24,
               "--stride-m", 12, "--out", tmp_path / "near")
    assert not [e for e in json_lines(near.stdout) if e.get("level") == "warning"]


def test_index_build_without_a_chip_size_or_a_recorded_footprint_says_what_to_pass(material, tmp_path):
    _, ckpt, _, tif = material
    proc = run("index", "build", tif, "--checkpoint", ckpt, "--out", tmp_path / "idx", check=False)
    assert proc.returncode == 1 and "--chip-size-m" in proc.stderr and "Traceback" not in proc.stderr


def test_a_resume_refuses_to_mix_precisions(material, tmp_path, monkeypatch):
    _, ckpt, _, tif = material
    out = tmp_path / "idx"

    def crash(*_args, **_kw):
        raise KeyboardInterrupt  # killed after encoding: shards committed, nothing published

    monkeypatch.setattr(index_mod, "_finalise", crash)
    opts = BuildOptions(checkpoint=str(ckpt), device="cpu", precision="fp32", shard_chips=16)
    with pytest.raises(KeyboardInterrupt):
        build_index([str(tif)], 20, 10, out, opts, Reporter("none"))
    assert list((tmp_path / ".idx.partial" / "shards").glob("shard-*.npz"))
    monkeypatch.undo()
    bf16 = BuildOptions(checkpoint=str(ckpt), device="cpu", precision="bf16", shard_chips=16)
    with pytest.raises(SaigError, match="encoded on cpu at fp32.*at bf16.*--precision fp32"):
        build_index([str(tif)], 20, 10, out, bf16, Reporter("none"))
    assert not out.exists()
    build_index([str(tif)], 20, 10, out, opts, Reporter("none"))  # the same precision resumes
    assert json.loads((out / "metadata.json").read_text())["encoder"]["precision"] == "fp32"


def test_a_second_build_to_the_same_output_is_refused_naming_the_first(material, tmp_path):
    _, ckpt, _, tif = material
    out = tmp_path / "idx"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom tiling.lock import output_lock\n"
         f"with output_lock({str(out)!r}, 'saig index build'):\n    print('held', flush=True)\n    time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        proc = run("index", "build", tif, "--checkpoint", ckpt, "--chip-size-m", 20, "--out", out, check=False)
        assert proc.returncode == 1 and f"process {holder.pid}" in proc.stderr
        assert str(lock_path(out)) in proc.stderr and not out.exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_dead_process_is_taken_over(material, tmp_path):
    _, ckpt, _, tif = material
    out = tmp_path / "idx"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_path(out).write_text(json.dumps({"pid": dead.pid, "host": "here", "started": time.ctime()}))
    run("index", "build", tif, "--checkpoint", ckpt, "--chip-size-m", 20, "--out", out)
    assert (out / "metadata.json").is_file() and not lock_path(out).exists()
