"""Photo reading speed and memory, and the cost of committing a located photo; ONE JSON object on stdout.

Generates (once, in a temp dir) a 48-megapixel JPEG photo (8000x6000, EXIF orientation 6 and a
35 mm focal length) and a 2:1 equirectangular panorama JPEG (8192x4096, GPano XMP). Each is read
in its own child process, so every peak RSS is that process's own (``os.wait4``), in turns:

* ``full``: the fastest fair baseline for what locate needs -- Pillow decodes the whole image, applies
  the orientation, converts to RGB and resizes to the model's 128x512 ground input (what locate did
  before: decode at full size);
* ``read``: ``tiling.photos.read_photo`` + ``GroundInput.tensor`` (header first, one DCT-reduced
  decode, band cut and roll for the panorama);
* ``idle``: a child that imports the same modules and decodes nothing (the interpreter's own RSS).

Then ``commit``: ``ResultJournal.record`` of one photo with 20 candidates (JSON line, flush, fsync),
per photo, on the disk of the temp dir.

Goals: read time <= 0.5 x full; read peak RSS above idle <= 0.25 x full's; commit <= 10 ms per photo.

    python benchmarks/photos.py            # 3 repeats per case; writes benchmarks/results/photos.json
    python benchmarks/photos.py --quick    # 1 repeat
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import record  # noqa: E402 - after the path insert, as the other benchmarks do

CHILD = r"""
import sys, time
sys.path.insert(0, {repo!r})
from PIL import Image, ImageOps
from tiling.photos import read_photo
from tiling.ground_input import GroundInput
from saig_core.data.preprocess import image_to_tensor
import torch
mode, path = sys.argv[1], sys.argv[2]
ground = GroundInput((128, 512))
t = time.perf_counter()
if mode == "full":
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        x = image_to_tensor(im.convert("RGB"), ground.size)
elif mode == "read":
    x = ground.tensor(read_photo(path, ground))
print(time.perf_counter() - t)
"""


def make_inputs(folder: Path) -> dict[str, Path]:
    from PIL import Image

    from tiling.gpano import gpano_xmp

    rng = np.random.default_rng(0)
    small = rng.integers(20, 235, size=(60, 80, 3), dtype=np.uint8)
    photo = Image.fromarray(small).resize((8000, 6000), Image.Resampling.BICUBIC)
    ex = Image.Exif()
    ex[0x0112] = 6
    ex[0x8769] = {0xA405: 26}
    paths = {"photo_48mp": folder / "photo.jpg", "panorama_2to1": folder / "pano.jpg"}
    photo.save(paths["photo_48mp"], quality=90, exif=ex)
    pano = Image.fromarray(small).resize((8192, 4096), Image.Resampling.BICUBIC)
    pano.save(paths["panorama_2to1"], quality=90, xmp=gpano_xmp((8192, 4096), heading_deg=180.0))
    return paths


def run_child(mode: str, path: Path) -> tuple[float, float]:
    """(seconds of the read inside the child, the child's peak RSS in MB)."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD.format(repo=str(REPO)), mode, str(path)],
                            stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"child {mode} failed with status {status}")
    return float(out.strip() or 0.0), usage.ru_maxrss / 1024.0


def commit_ms(folder: Path, photos: int = 50) -> float:
    from tiling.results import ResultJournal

    journal = ResultJournal(folder / "bench.gpkg", {"bench": True}, resume=False, overwrite=True)
    cands = [{"photo": "p.jpg", "rank": r, "score": 0.5, "chip_id": f"r{r}c{r}", "faiss_id": r, "lon": 11.0,
              "lat": 48.0, "x": 1.0, "y": 2.0, "distance_m": 3.0, "grid_crs": "EPSG:32632"} for r in range(1, 21)]
    t = time.perf_counter()
    for i in range(photos):
        journal.record({"photo_key": f"/p/{i}.jpg", "photo": f"{i}.jpg"}, cands, {"photo": f"{i}.jpg"})
    elapsed = (time.perf_counter() - t) / photos * 1000
    journal.discard()
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one repeat per case")
    record.add_results_arg(ap)
    args = ap.parse_args()
    repeats = 1 if args.quick else 3
    mode = "quick" if args.quick else "full"
    run = record.Run("photos", "Photo reading and locate commits",
                     "python benchmarks/photos.py" + (" --quick" if args.quick else ""), mode)
    cases: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = make_inputs(folder)
        _, idle_rss = run_child("idle", paths["photo_48mp"])
        for name, path in paths.items():
            runs: dict[str, list[tuple[float, float]]] = {"full": [], "read": []}
            for _ in range(repeats):
                for mode in ("full", "read"):  # in turns, so load changes hit both
                    runs[mode].append(run_child(mode, path))
            case: dict = {"input": name}
            for mode, values in runs.items():
                case[f"{mode}_s"] = round(min(v[0] for v in values), 4)
                case[f"{mode}_peak_rss_mb"] = round(max(v[1] for v in values), 1)
                case[f"{mode}_rss_above_idle_mb"] = round(max(0.0, max(v[1] for v in values) - idle_rss), 1)
            case["time_ratio"] = round(case["read_s"] / case["full_s"], 3)
            case["rss_ratio"] = round(case["read_rss_above_idle_mb"] / max(case["full_rss_above_idle_mb"], 1e-6), 3)
            cases.append(case)
            run.goal(f"read time / full decode, {name}", case["time_ratio"], "<=", 0.5)
            run.goal(f"read RSS above idle / full decode's, {name}", case["rss_ratio"], "<=", 0.25)
        commit = round(commit_ms(folder), 3)
    run.goal("journal commit per photo (20 candidates, fsync)", commit, "<=", 10.0, "ms")
    run.note("Each read runs in its own child process; peak RSS from os.wait4. 'idle' is a child importing the "
             "same modules and decoding nothing.")
    run.write({"idle_rss_mb": round(idle_rss, 1), "commit_ms_per_photo": commit, "reads": cases}, args.results_dir)


if __name__ == "__main__":
    main()
