"""``saig synth``: a synthetic world with geotagged photos and ground truth, or training pairs.

Argument parsing and reporting only; the work is done by :mod:`synthetic_world.generate`.
"""
from __future__ import annotations

import argparse
import time

from saig_core.runtime.args import (
    lonlat,
    non_negative_float,
    non_negative_int,
    output_dir,
    positive_finite_float,
    positive_int,
)
from saig_core.runtime.progress import Reporter


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``synth`` and ``demo`` to the ``saig`` subparsers."""
    p = sub.add_parser(
        "synth",
        help="generate a synthetic world (orthophoto, DSM, geotagged photos, truth.csv) or training pairs",
        description="Generate a seeded synthetic 2.5D world in a UTM zone: orthophoto.tif, dsm.tif, photos/*.jpg "
                    "with EXIF GPS and heading, truth.csv and world.json. With --pairs, write training pairs "
                    "(ground view + aerial chip, pairs.csv) from the worlds of the given seeds instead.",
    )
    p.add_argument("--seed", required=True, type=_seeds,
                   help="world seed; with --pairs a comma-separated list of seeds (e.g. 11,12,13)")
    p.add_argument("--size-m", type=positive_finite_float, default=2000.0, help="world side in metres (default 2000)")
    p.add_argument("--resolution-m", type=positive_finite_float, default=0.5,
                   help="ground sampling distance in metres (default 0.5)")
    p.add_argument("--origin", type=lonlat, default=(11.0, 48.0), metavar="LON,LAT",
                   help="the world's centre in EPSG:4326 degrees (default 11.0,48.0: UTM zone 32N; write "
                        "--origin=-70.5,-33.4 for negative values)")
    p.add_argument("--crs", default=None, help="grid CRS, projected in metres (default: the UTM zone of --origin)")
    p.add_argument("--out", required=True, type=output_dir, help="output folder")
    p.add_argument("--photos", type=non_negative_int, default=200, help="360° panoramas to shoot (default 200)")
    p.add_argument("--fov-photos", type=non_negative_int, default=0, help="90° photos at random headings (default 0)")
    p.add_argument("--group-photos", type=non_negative_int, default=0, metavar="N",
                   help="N groups of 4 spots within 40 m of each other (a street corner), each shot as a panorama "
                        "and as a 90° photo: groups/pano_gNNN/ and groups/photo_gNNN/, truth in groups/truth.csv")
    p.add_argument("--pairs", type=positive_int, default=None, metavar="N",
                   help="write N training pairs per world (north-aligned panorama + aerial chip) instead of a "
                        "world with photos")
    p.add_argument("--chip-size-m", type=positive_finite_float, default=64.0,
                   help="with --pairs: aerial chip side (default 64 m)")
    p.add_argument("--jitter-m", type=non_negative_float, default=6.0,
                   help="with --pairs: max offset of the chip centre from the camera per axis (default 6 m)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a world already in --out (its photos listed in truth.csv are removed first)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser(
        "demo",
        help="the whole product on a held-out synthetic world: synth, index build, locate, scored against truth",
        description="Generate a held-out synthetic world, build the reference index from its orthophoto, geolocate "
                    "its photos and score the candidates against truth.csv: writes OUT/report.json, the candidates "
                    "GeoPackage, heatmap GeoTIFFs and PNG overviews, and prints a table.",
    )
    p.add_argument("--out", default="demo_out", type=output_dir,
                   help="output folder (default demo_out); a later run replaces what an earlier demo wrote there, "
                        "and nothing else")
    p.add_argument("--checkpoint", default="models/demo.pt", help="model checkpoint (default models/demo.pt)")
    p.add_argument("--seed", type=non_negative_int, default=2026,
                   help="world seed (default 2026; training used 101-108 and 110-113, validation 109)")
    p.add_argument("--size-m", type=positive_finite_float, default=2000.0, help="world side in metres (default 2000)")
    p.add_argument("--photos", type=non_negative_int, default=200, help="360° panoramas (default 200)")
    p.add_argument("--fov-photos", type=non_negative_int, default=50, help="90° photos (default 50)")
    p.add_argument("--group-photos", type=non_negative_int, default=4,
                   help="groups of 4 spots within 40 m, each located as a panorama group and a photo group (default 4)")
    p.add_argument("--stride-m", type=positive_finite_float, default=16.0,
                   help="index chip stride in metres (default 16)")
    p.add_argument("--hit-radius-m", type=positive_finite_float, default=25.0,
                   help="a candidate within this distance of the true position is a hit (default 25 m)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON line")
    p.set_defaults(func=cmd_demo)


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed or a comma-separated list, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError("no seed given")
    if min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"seeds must not be negative, got {text!r}")
    return seeds



def cmd_synth(args: argparse.Namespace, reporter: Reporter) -> int:
    """``saig synth``: one world with photos and truth, or (``--pairs``) training pairs from several worlds."""
    from saig_core.errors import SaigError
    from synthetic_world.generate import PhotoPlan, synthesize_pairs, synthesize_world
    from synthetic_world.world import WorldConfig

    start = time.perf_counter()
    if args.pairs is not None:
        path = synthesize_pairs(args.seed, args.out, args.pairs, size_m=args.size_m, chip_size_m=args.chip_size_m,
                                jitter_m=args.jitter_m, reporter=reporter)
        seconds = time.perf_counter() - start
        reporter.log(f"wrote {len(args.seed) * args.pairs} pairs from seeds {args.seed} to {path} in {seconds:.0f} s")
        if args.json or reporter.json:
            reporter.emit("result", output=str(path), pairs=len(args.seed) * args.pairs, seeds=args.seed,
                          seconds=round(seconds, 2))
        return 0
    if len(args.seed) != 1:
        raise SaigError("a world takes one --seed (a list of seeds is for --pairs)")
    try:
        config = WorldConfig(seed=args.seed[0], size_m=args.size_m, resolution_m=args.resolution_m,
                             center_lon=args.origin[0], center_lat=args.origin[1], crs=args.crs)
    except ValueError as e:
        raise SaigError(str(e)) from None
    plan = PhotoPlan(panoramas=args.photos, fov_photos=args.fov_photos, groups=args.group_photos)
    summary = synthesize_world(config, args.out, plan,
                               reporter=reporter, overwrite=args.overwrite)
    seconds = time.perf_counter() - start
    reporter.log(f"wrote world seed {config.seed} ({summary['crs']}, {summary['buildings']} buildings, "
                 f"{args.photos} panoramas, {args.fov_photos} photos) to {args.out} in {seconds:.0f} s")
    if args.json or reporter.json:
        reporter.emit("result", output=str(args.out), crs=summary["crs"], bounds=summary["bounds"],
                      photos=args.photos + args.fov_photos, seconds=round(seconds, 2))
    return 0


def cmd_demo(args: argparse.Namespace, reporter: Reporter) -> int:
    """``saig demo``: synth, index build and locate on a held-out world, scored against its truth."""
    from pathlib import Path

    from synthetic_world.demo import DemoConfig, format_table, run_demo

    cfg = DemoConfig(out=Path(args.out), checkpoint=Path(args.checkpoint), seed=args.seed, size_m=args.size_m,
                     panoramas=args.photos, fov_photos=args.fov_photos, groups=args.group_photos,
                     stride_m=args.stride_m, hit_radius_m=args.hit_radius_m)
    report = run_demo(cfg, log=reporter.log)
    if args.json or reporter.json:
        reporter.emit("result", **report)
    else:
        print(format_table(report))
        print(f"wrote {cfg.out}/report.json, candidates.gpkg, heatmaps/ and overviews/")
    return 0
