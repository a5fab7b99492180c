"""`saig train` / `saig eval` end to end as subprocesses, on generated pattern pairs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from crossview_fixtures import write_pairs

from saig_core import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
SAIG = [sys.executable, "-m", "saig_core"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

SMALL = {
    "model": {"preset": "saig_micro", "pool": "gap", "ground_size": [32, 128], "aerial_size": [64, 64]},
    "loss": {"name": "soft_margin_triplet"},
    "optim": {"lr": 1e-3, "asam": False, "grad_clip": 1.0},
    "train": {"epochs": 2, "batch_size": 8, "device": "cpu", "num_workers": 0, "eval_batch_size": 64,
              "tensorboard": True},
    "data": {"kind": "pairs_csv", "train": "data/pairs.csv", "val_fraction": 0.25},
}


def _config(tmp: Path, overrides: dict | None = None, n: int = 48) -> Path:
    if not (tmp / "data" / "pairs.csv").exists():
        write_pairs(tmp / "data", n, seed=3)
    cfg = {k: dict(v) for k, v in SMALL.items()}
    for section, values in (overrides or {}).items():
        cfg.setdefault(section, {}).update(values)
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*SAIG, *args], capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"saig {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def test_train_writes_checkpoints_metrics_and_a_final_json_report(tmp_path):
    cfg = _config(tmp_path)
    run = tmp_path / "run"
    proc = _run("train", "--config", str(cfg), "--out", str(run))
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(report) >= {"final", "best", "best_epoch", "gallery_size", "selected_on"}
    assert report["selected_on"] == "val" and report["gallery_size"] == 12  # 25 % of 48 held out
    assert set(report["final"]) == {"R@1", "R@5", "R@10", "R@1%"}
    assert 1 <= report["best_epoch"] <= 2
    for name in ("last.pt", "best.pt", "train_state.pt", "metrics.csv", "config.yaml"):
        assert (run / name).is_file(), name
    assert any((run / "tb").iterdir())
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step,train_loss,lr") and len(rows) == 3
    model = load_checkpoint(run / "best.pt")
    assert model.cfg.preset == "saig_micro" and model.cfg.ground_size == (32, 128)
    meta = torch.load(run / "best.pt", weights_only=True)["metadata"]
    assert meta["selected_on"] == "val" and meta["epoch"] == report["best_epoch"]
    assert meta["val_metrics"] == report["best"]
    assert meta["ground_input"]["fov_placement"] == "resize"


def test_eval_prints_metrics_of_a_checkpoint_on_the_config_s_split(tmp_path):
    cfg = _config(tmp_path, {"train": {"epochs": 1}})
    run = tmp_path / "run"
    train_report = json.loads(_run("train", "--config", str(cfg), "--out", str(run)).stdout.splitlines()[-1])
    out = json.loads(_run("eval", "--checkpoint", str(run / "best.pt"), "--config", str(cfg)).stdout.splitlines()[-1])
    assert out["split"] == "val" and out["gallery_size"] == 12
    assert out["metrics"] == pytest.approx(train_report["best"])


def test_train_refuses_to_overwrite_an_existing_run_and_names_bad_config_keys(tmp_path):
    cfg = _config(tmp_path, {"train": {"epochs": 1}})
    run = tmp_path / "run"
    _run("train", "--config", str(cfg), "--out", str(run))
    again = _run("train", "--config", str(cfg), "--out", str(run), check=False)
    assert again.returncode == 1 and "--resume" in again.stderr
    bad = _run("train", "--config", str(cfg), "--out", str(tmp_path / "r2"), "--set", "optim.learning_rate=1",
               check=False)
    assert bad.returncode == 1 and "learning_rate" in bad.stderr and "optim" in bad.stderr
    missing = _config(tmp_path, {"data": {"train": "nowhere.csv"}})
    err = _run("train", "--config", str(missing), "--out", str(tmp_path / "r3"), check=False)
    assert err.returncode == 1 and "nowhere.csv" in err.stderr and "Traceback" not in err.stderr


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_weights_as_an_uninterrupted_one(tmp_path):
    import signal
    import time

    cfg = _config(tmp_path, {"train": {"epochs": 3, "tensorboard": False}, "optim": {"asam": True, "rho": 0.5},
                             "augment": {"shift": True, "jitter": 0.2}})
    _run("train", "--config", str(cfg), "--out", str(tmp_path / "full"))
    run = tmp_path / "killed"
    proc = subprocess.Popen([*SAIG, "train", "--config", str(cfg), "--out", str(run)], env=ENV, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (run / "train_state.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # mid-run, as a pre-empted machine would
    proc.wait()
    done = torch.load(run / "train_state.pt", weights_only=True)["run"]["epoch"]
    assert 1 <= done < 3
    _run("train", "--config", str(cfg), "--out", str(run), "--resume")
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(run / "last.pt", weights_only=True)["state_dict"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k


def test_eval_on_a_vigor_recipe_reports_the_hit_rate_over_the_full_city_gallery(tmp_path):
    from crossview_fixtures import write_vigor

    from saig_core import build_model, save_checkpoint

    write_vigor(tmp_path / "VIGOR")
    save_checkpoint(build_model("saig_micro", "gap", (32, 128), (64, 64)), tmp_path / "m.pt")
    recipe = REPO / "configs" / "vigor_saig_d_smd_hardneg_asam.yaml"
    proc = _run("eval", "--checkpoint", str(tmp_path / "m.pt"), "--config", str(recipe), "--device", "cpu",
                "--set", f"data.root={tmp_path / 'VIGOR'}", "--set", "data.cities=[NewYork, Chicago]",
                "--set", "model.ground_size=[32, 128]", "--set", "model.aerial_size=[64, 64]",
                "--set", "train.num_workers=0")
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["split"] == "test" and out["queries"] == 2 and out["gallery_size"] == 10
    assert set(out["metrics"]) == {"R@1", "R@5", "R@10", "R@1%", "hit"}
    assert out["metrics"]["hit"] >= out["metrics"]["R@1"]
