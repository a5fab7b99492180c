"""Small generated orthophotos, photos and a tiny untrained model for the tiling tests."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.transform import Affine, from_origin

SAIG = Path(sys.executable).with_name("saig")
GROUND, AERIAL = (32, 128), (64, 64)
UTM33N = "EPSG:32633"
ORIGIN = (500_000.0, 5_000_100.0)  # upper-left corner, EPSG:32633 (about 45.15 N, 15 E)


def texture(h: int, w: int, bands: int = 3, seed: int = 0) -> np.ndarray:
    """Smooth random uint8 texture (bands, h, w), never pure black."""
    rng = np.random.default_rng(seed)
    small = rng.integers(20, 255, size=(bands, h // 8 + 2, w // 8 + 2)).astype(np.float32)
    big = small.repeat(8, 1).repeat(8, 2)[:, :h, :w]
    return np.clip(big + rng.normal(0, 8, big.shape), 1, 255).astype(np.uint8)


def write_raster(path: Path, data: np.ndarray, crs: str | None = UTM33N, transform: Affine | None = None,
                 nodata=None, colorinterp=None, **kw) -> Path:
    bands, h, w = data.shape
    transform = transform if transform is not None else from_origin(*ORIGIN, 0.5, 0.5)
    profile = dict(driver="GTiff", width=w, height=h, count=bands, dtype=data.dtype.name, **kw)
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if colorinterp:
            dst.colorinterp = colorinterp
    return path


def ortho(path: Path, h: int = 200, w: int = 200, seed: int = 0, **kw) -> Path:
    """A 0.5 m/px RGB orthophoto in UTM 33N (100 m x 100 m for 200 px)."""
    return write_raster(path, texture(h, w, 3, seed), **kw)


def micro_checkpoint(path: Path, seed: int = 0) -> Path:
    import torch

    from saig_core import build_model, save_checkpoint

    torch.manual_seed(seed)
    model = build_model("saig_micro", ground_size=GROUND, aerial_size=AERIAL)
    save_checkpoint(model, path)
    return path


def photo(path: Path, size=(160, 120), exif=None, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8))
    if exif is not None:
        img.save(path, exif=exif)
    else:
        img.save(path)
    return path


def run(*args, check: bool = True, timeout: int = 180):
    proc = subprocess.run([str(SAIG), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"saig {' '.join(map(str, args))} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]
