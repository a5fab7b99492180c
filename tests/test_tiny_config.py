"""configs/tiny.yaml trains on generated pairs on CPU and ends far above chance."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from crossview_fixtures import write_pairs

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tiny_config_learns_generated_pairs_far_above_chance(tmp_path):
    pairs = write_pairs(tmp_path / "data", 400, seed=21)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "saig_core", "train", "--config", str(REPO / "configs" / "tiny.yaml"),
                           "--out", str(tmp_path / "run"), "--set", f"data.train={pairs}"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    chance = 1 / report["gallery_size"]
    assert report["gallery_size"] == 60
    assert report["best"]["R@1"] >= 15 * chance  # chance is 1/60; runs reach ~0.6
    assert report["best"]["R@10"] >= 0.6


def test_a_config_with_data_generate_makes_its_missing_pairs_first(tmp_path):
    from saig_cli.training import _generate_missing_pairs
    from saig_core.data.datasets import load_pairs_csv
    from saig_core.runtime.progress import Reporter
    from saig_core.training.config import load_config

    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"data.train={tmp_path / 'gen' / 'pairs.csv'}",
                                                       "data.generate={seeds: [31], pairs: 12, size_m: 300}"])
    _generate_missing_pairs(cfg, Reporter("none"))
    split = load_pairs_csv(tmp_path / "gen" / "pairs.csv")
    assert len(split) == 12 and split.latlon is not None and split.world == ["31"] * 12


def test_tiny_yaml_ships_with_generated_data_and_no_path_to_fill_in():
    from saig_core.training.config import load_config

    cfg = load_config(REPO / "configs" / "tiny.yaml")
    assert cfg.data.generate and cfg.data.train and cfg.data.train.endswith("build/tiny-data/pairs.csv")
