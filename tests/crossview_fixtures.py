"""Small generated cross-view data for training tests: correlated random patterns, written as images."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image


def pattern_pair(rng: np.random.Generator, ground_hw=(32, 128), aerial_hw=(64, 64), noise=12.0):
    """A random 4x4 grid of colours seen two ways: as a north-up aerial tile, and re-laid as a
    2x8 strip for the panorama (a fixed rearrangement of the same cells), both with pixel noise."""
    cells = rng.integers(0, 256, size=(16, 3)).astype(np.float64)
    aerial = cells.reshape(4, 4, 3).repeat(aerial_hw[0] // 4, 0).repeat(aerial_hw[1] // 4, 1)
    ground = cells.reshape(2, 8, 3).repeat(ground_hw[0] // 2, 0).repeat(ground_hw[1] // 8, 1)
    aerial = aerial + rng.normal(0, noise, aerial.shape)
    ground = ground + rng.normal(0, noise, ground.shape)
    return (np.clip(ground, 0, 255).astype(np.uint8), np.clip(aerial, 0, 255).astype(np.uint8))


def write_pairs(folder: Path, n: int, seed: int = 0, name: str = "pairs.csv", with_latlon: bool = True,
                ground_hw=(32, 128), aerial_hw=(64, 64)) -> Path:
    """Write ``n`` pattern pairs as PNGs and a pairs.csv (relative paths) into ``folder``."""
    folder = Path(folder)
    (folder / "ground").mkdir(parents=True, exist_ok=True)
    (folder / "aerial").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        g, a = pattern_pair(rng, ground_hw, aerial_hw)
        gp, ap = f"ground/{seed}_{i:05d}.png", f"aerial/{seed}_{i:05d}.png"
        Image.fromarray(g).save(folder / gp)
        Image.fromarray(a).save(folder / ap)
        row = {"ground_path": gp, "aerial_path": ap}
        if with_latlon:
            row.update(lat=f"{45 + i * 1e-4:.6f}", lon=f"{7 + i * 1e-4:.6f}")
        rows.append(row)
    path = folder / name
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _image(path: Path, size, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 255 - value, 7)).save(path)
    return path


def write_vigor(root: Path) -> None:
    """A two-city VIGOR tree (NewYork, Chicago): 5 satellites and 3 panoramas per city, all label files."""
    for city, base in (("NewYork", 40.7), ("Chicago", 41.8)):
        sats = [f"satellite_{base + k / 1000:.6f}_-73.{k:06d}.png" for k in range(5)]
        for s in sats:
            _image(root / city / "satellite" / s, (32, 32))
        d = root / "splits" / city
        d.mkdir(parents=True)
        (d / "satellite_list.txt").write_text("\n".join(sats) + "\n")
        lines = []
        for k in range(3):
            pano = f"pano{city}{k},{base + k / 1000 + 0.0001:.6f},-73.{k:06d},.jpg"
            _image(root / city / "panorama" / pano, (64, 32))
            order = [k, k + 1, k + 2, (k + 3) % 5]
            lines.append(" ".join([pano] + [f"{sats[j]} {1.5 * j:.2f} {-2.0 * j:.2f}" for j in order]))
        (d / "same_area_balanced_train.txt").write_text("\n".join(lines[:2]) + "\n")
        (d / "same_area_balanced_test.txt").write_text(lines[2] + "\n")
        (d / "pano_label_balanced.txt").write_text("\n".join(lines) + "\n")
