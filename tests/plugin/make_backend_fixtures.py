"""Test fixtures that need the backend's libraries: run with the BACKEND's Python, never imported by QGIS.

    python make_backend_fixtures.py SPEC.json

SPEC: {"checkpoints": [{"path", "seed", "aerial_footprint_m"?}],
      "photos": [{"path", "seed", "size": [w, h], "gps": [lon, lat, heading]|null}]}
Writes tiny untrained saig_micro checkpoints (ground 32x128, aerial 64x64) and JPEG photos with EXIF GPS.
"""
import json
import random
import sys

from PIL import Image, ImageDraw, TiffImagePlugin


def dms(value: float) -> tuple:
    value = abs(value)
    d = int(value)
    m = int((value - d) * 60)
    s = (value - d - m / 60) * 3600
    return tuple(TiffImagePlugin.IFDRational(round(v * 1000), 1000) for v in (d, m, s))


def photo(path: str, seed: int, size: tuple, gps) -> None:
    rng = random.Random(seed)
    image = Image.new("RGB", tuple(size), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    draw = ImageDraw.Draw(image)
    for _ in range(40):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        r = rng.randrange(4, 20)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    exif = Image.Exif()
    if gps is not None:
        lon, lat, heading = gps
        exif[0x8825] = {
            1: "N" if lat >= 0 else "S", 2: dms(lat), 3: "E" if lon >= 0 else "W", 4: dms(lon),
            16: "T", 17: TiffImagePlugin.IFDRational(round(heading * 100), 100),
        }
    image.save(path, "JPEG", quality=90, exif=exif.tobytes())


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    if spec.get("checkpoints"):
        import torch

        from saig_core import build_model, save_checkpoint

        torch.set_num_threads(1)
        for ck in spec["checkpoints"]:
            torch.manual_seed(ck["seed"])
            model = build_model("saig_micro", ground_size=(32, 128), aerial_size=(64, 64))
            footprint = {"aerial_footprint_m": ck["aerial_footprint_m"]} if ck.get("aerial_footprint_m") else {}
            save_checkpoint(model, ck["path"], note="untrained test model", **footprint)
    for p in spec.get("photos", []):
        photo(p["path"], p["seed"], p["size"], p.get("gps"))


if __name__ == "__main__":
    main()
