"""The geospatial commands: ``saig tile``, ``saig index build``, ``saig index info``, ``saig locate``.

Argument parsing and reporting only; the work is done by :mod:`tiling.tile`, :mod:`tiling.index`
and :mod:`tiling.locate`. Output follows the CLI contract of ``docs/cli-contract.md`` (JSON lines with
``--progress json`` / ``--json``; exit 0 ok, 1 error, 2 usage).
"""
from __future__ import annotations

import argparse

from saig_core.runtime.args import (
    add_device_arg,
    add_precision_arg,
    fov_degrees,
    fraction,
    image_size,
    int_range,
    make_parents,
    non_negative_int,
    output_dir,
    output_file,
    positive_finite_float,
    positive_int,
)
from saig_core.runtime.progress import Reporter
from tiling.search import INDEX_KINDS, ONDISK_MIN, describe_index_kinds

RASTERS_HELP = ("orthophotos: raster files (GeoTIFF, .vrt, ...), folders (searched recursively) or glob patterns; "
                "mosaicked as one surface (where they overlap, the first given wins per pixel)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``tile``, ``index build``/``info``, ``schema``, ``photos`` and ``locate`` to the ``saig`` subparsers."""
    p = sub.add_parser("tile", help="cut orthophotos into georeferenced chips; write the manifest (GeoPackage)")
    p.add_argument("rasters", nargs="+", metavar="ORTHO", help=RASTERS_HELP)
    _chip_args(p)
    p.add_argument("--aerial-size", type=image_size, default=(256, 256), metavar="HxW",
                   help="chip size in pixels (the model's aerial input; default 256x256)")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="processes reading chips (default: every core from 4 cores up, else this process)")
    p.add_argument("--out", required=True, type=output_file,
                   help="output GeoPackage (layer 'chips'; missing parent folders are created)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    p.set_defaults(func=cmd_tile)

    _register_index(sub)

    p = sub.add_parser("schema", help="what the geospatial commands accept and write (photo types, output columns)")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.set_defaults(func=cmd_schema)

    _register_photos(sub)
    p = sub.add_parser("locate", help="rank candidate locations of ground photos against an index")
    p.add_argument("photos", nargs="+", metavar="PHOTO_OR_DIR",
                   help="photos (JPEG, PNG, TIFF, WebP, HEIC/HEIF, AVIF, ...) or folders of them, searched recursively")
    p.add_argument("--index", required=True, metavar="INDEX_DIR")
    p.add_argument("--checkpoint", default=None,
                   help="model checkpoint (default: the one recorded in the index; must match its fingerprint)")
    p.add_argument("-k", type=positive_int, default=20, help="candidates per photo (default 20)")
    p.add_argument("--prior-radius-m", type=positive_finite_float, default=None,
                   help="only search chips within this distance of the photo's EXIF GPS position")
    p.add_argument("--fov-deg", type=fov_degrees, default=None,
                   help="horizontal field of view of photos in degrees, in (0, 360] (default: from EXIF -- the 35 mm "
                        "equivalent, else the focal length and sensor width -- else the checkpoint's training FoV, "
                        "else 90)")
    p.add_argument("--out", required=True, type=output_file,
                   help="output GeoPackage (layers 'candidates' and 'photos'; missing parent folders are created)")
    p.add_argument("--heatmap-dir", type=output_dir, default=None,
                   help="write one Float32 GeoTIFF heatmap per photo here (created when the first is written)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--panorama", dest="mode", action="store_const", const="panorama", default="auto",
                      help="read every photo as a 360-degree equirectangular panorama (default: from XMP GPano "
                           "metadata, else an aspect of about 2:1 or wider without a lens focal length)")
    kind.add_argument("--photo", dest="mode", action="store_const", const="photo",
                      help="read every photo as a limited field of view (never a panorama)")
    p.add_argument("--group", type=_group_rule, default=None, metavar="RULE",
                   help="also fuse photos taken together into one ranked list (and, with --heatmap-dir, one heatmap) "
                        "per group: 'folder' (one folder), 'time:SECONDS' (EXIF times within SECONDS of the previous "
                        "photo) or 'radius:METRES' (EXIF positions within METRES of the group's first photo; their "
                        "offsets are used). Each photo's own result is still reported; a group is reported as "
                        "'group:...'")
    p.add_argument("--no-heading", dest="ignore_heading", action="store_true",
                   help="ignore EXIF/GPano headings (e.g. an unreliable compass): an orientation-aware model then "
                        "searches every rotation and reports the best as the heading estimate")
    p.add_argument("--refine", type=non_negative_int, default=3, metavar="N",
                   help="re-score a fine grid around the N best distinct places with aerial views cut from the "
                        "index's orthophotos: refined position, uncertainty radius (default 3; 0: no refinement)")
    p.add_argument("--refine-step-m", type=positive_finite_float, default=None,
                   help="fine grid step in grid-CRS metres (default: the index's stride / 4)")
    add_device_arg(p)
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output GeoPackage (or an unfinished run of it)")
    p.add_argument("--resume", action="store_true",
                   help="finish an interrupted run of the same command: photos already located are not redone")
    p.add_argument("--json", action="store_true", help="print one JSON line per photo")
    p.set_defaults(func=cmd_locate)


def _register_photos(sub: argparse._SubParsersAction) -> None:
    """``saig photos``: what ``locate`` would take from the same arguments."""
    p = sub.add_parser("photos", help="the photos locate would process: folders searched recursively, skipped files "
                                      "with their reasons")
    p.add_argument("photos", nargs="+", metavar="PHOTO_OR_DIR", help="photos or folders of them, as given to locate")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.set_defaults(func=cmd_photos)


def _register_index(sub: argparse._SubParsersAction) -> None:
    """``saig index build`` and ``saig index info``."""
    idx = sub.add_parser("index", help="build or inspect a reference index of aerial chips")
    isub = idx.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    p = isub.add_parser("build", help="encode every chip of the orthophotos into a FAISS index folder")
    p.add_argument("rasters", nargs="+", metavar="ORTHO", help=RASTERS_HELP)
    p.add_argument("--checkpoint", required=True, help="model checkpoint (its aerial branch encodes the chips)")
    _chip_args(p, from_checkpoint=True)
    p.add_argument("--out", required=True, type=output_dir,
                   help="output index folder (appears only when complete; missing parent folders are created)")
    add_device_arg(p)
    add_precision_arg(p)
    p.add_argument("--batch-size", type=positive_int, default=32, help="chips per encoder batch (default 32)")
    p.add_argument("--read-workers", type=positive_int, default=1,
                   help="processes reading chips while this one encodes (default 1: a reading thread)")
    p.add_argument("--index-type", default="auto", choices=INDEX_KINDS, help=describe_index_kinds())
    p.add_argument("--storage", default="auto", choices=("auto", "memory", "disk"),
                   help="where a compressed index keeps its inverted lists: memory, or disk (memory-mapped lists and "
                        f"a GeoParquet manifest, for big indexes); auto = disk from {ONDISK_MIN:,} chips")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="encode on a Ray cluster (read tasks on CPU workers, encoding actors, one GPU each when there "
                        "are GPUs): its address (e.g. 10.0.0.1:6379), or none to start Ray on this machine; rasters, "
                        "checkpoint and output on storage every node sees; needs the 'ray' extra")
    p.add_argument("--shard-size", type=positive_int, default=1024,
                   help="chips per committed shard: how much work a killed build can lose (default 1024)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing index folder")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    p.set_defaults(func=cmd_index_build)

    p = isub.add_parser("info", help="print an index's metadata and verify its checksums")
    p.add_argument("index", metavar="INDEX_DIR")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.set_defaults(func=cmd_index_info)


def _chip_args(p: argparse.ArgumentParser, from_checkpoint: bool = False) -> None:
    if from_checkpoint:
        p.add_argument("--chip-size-m", type=positive_finite_float, default=None,
                       help="chip ground size in metres (default: the aerial footprint the checkpoint records; a "
                            "size more than 25%% off it is warned about)")
        p.add_argument("--stride-m", type=positive_finite_float, default=None,
                       help="distance between chip origins in metres (default: a quarter of the chip size)")
    else:
        p.add_argument("--chip-size-m", type=positive_finite_float, required=True, help="chip ground size in metres")
        p.add_argument("--stride-m", type=positive_finite_float, required=True,
                       help="distance between chip origins in metres")
    p.add_argument("--min-valid", type=fraction, default=0.5,
                   help="skip chips with a smaller fraction of valid (not nodata/alpha/collar) pixels (default 0.5)")
    p.add_argument("--grid", choices=("auto", "xyz"), default="auto",
                   help="auto: the raster CRS when projected in metres, else UTM; xyz: web-mercator tiles")
    p.add_argument("--grid-crs", type=grid_crs, default=None,
                   help="force a projected metric grid CRS (e.g. EPSG:32633)")
    p.add_argument("--zoom", type=int_range(0, 24), default=None, help="XYZ zoom (default: closest to --chip-size-m)")


def grid_crs(text: str) -> str:
    """An argparse type: a CRS pyproj knows that is projected in metres (as the chip grid needs)."""
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    from tiling.grid import is_metric_projected

    try:
        crs = CRS.from_user_input(text)
    except CRSError:
        raise argparse.ArgumentTypeError(f"unknown CRS {text!r} (expected e.g. EPSG:32633, WKT or PROJ)") from None
    if not is_metric_projected(crs):
        raise argparse.ArgumentTypeError(f"{text} is not a projected CRS in metres (Mercators excluded)")
    return text


def _params(args: argparse.Namespace, out_size: tuple[int, int]):
    from tiling.chips import ChipParams

    return ChipParams(args.chip_size_m, args.stride_m, out_size=out_size, min_valid=args.min_valid,
                      grid=args.grid, grid_crs=args.grid_crs, zoom=args.zoom)


def cmd_tile(args: argparse.Namespace, reporter: Reporter) -> int:
    """``saig tile``: cut the orthophotos into chips and write the manifest; exit 1 if any raster failed."""
    from tiling.tile import tile_rasters

    make_parents(args.out)
    result = tile_rasters(args.rasters, _params(args, args.aerial_size), args.out, reporter, overwrite=args.overwrite,
                          workers=args.workers)
    _report(args, reporter, f"wrote {result.count} chips ({result.crs}) to {result.output}",
            output=str(result.output), layer="chips", count=result.count, crs=result.crs)
    return 1 if result.failed else 0


def cmd_index_build(args: argparse.Namespace, reporter: Reporter) -> int:
    """``saig index build``: encode the orthophotos' chips into an index folder; exit 1 if any raster failed."""
    from tiling.index import BuildOptions, build_index

    make_parents(args.out)
    opts = BuildOptions(checkpoint=args.checkpoint, device=args.device, precision=args.precision,
                        batch_size=args.batch_size,
                        index_type=args.index_type, storage=args.storage, overwrite=args.overwrite,
                        shard_chips=args.shard_size, ray=args.ray, read_workers=args.read_workers)
    result = build_index(args.rasters, args.chip_size_m, args.stride_m, args.out, opts, reporter,
                         chip_kwargs=dict(min_valid=args.min_valid, grid=args.grid, grid_crs=args.grid_crs,
                                          zoom=args.zoom))
    _report(args, reporter, f"indexed {result.count} chips ({result.crs}) into {result.index}",
            index=str(result.index), count=result.count, crs=result.crs, fingerprint=result.fingerprint)
    return 1 if result.failed else 0


def _report(args: argparse.Namespace, reporter: Reporter, message: str, **result) -> None:
    """The command's result: one JSON ``result`` line for programs, else a sentence on stderr."""
    if args.json or reporter.json:
        reporter.emit("result", **result)
    else:
        reporter.log(message)


def cmd_index_info(args: argparse.Namespace, reporter: Reporter) -> int:
    """``saig index info``: an index folder's metadata, its checksums verified."""
    import json

    from tiling.index import index_info

    meta = index_info(args.index)
    if args.json or reporter.json:
        reporter.emit("result", **meta)
        return 0
    print(json.dumps(meta, indent=2))
    return 0


def cmd_schema(args: argparse.Namespace, reporter: Reporter) -> int:
    """``saig schema``: the contract of :func:`tiling.schema.contract`."""
    import json

    from tiling.schema import contract

    if args.json or reporter.json:
        reporter.emit("result", **contract())
    else:
        print(json.dumps(contract(), indent=2))
    return 0


def cmd_photos(args: argparse.Namespace, reporter: Reporter) -> int:
    """``saig photos``: the files :func:`tiling.photos.collect_photos` finds, as ``locate`` would take them."""
    import json

    from tiling.photos import collect_photos

    skipped: list = []
    photos = collect_photos(args.photos, skipped)
    answer = {"photos": [str(p) for p in photos],
              "skipped": [{"path": str(path), "reason": reason} for path, reason in skipped]}
    if args.json or reporter.json:
        reporter.emit("result", **answer)
    else:
        print(json.dumps(answer, indent=2))
    return 0


def _group_rule(text: str) -> str:
    from tiling.groups import parse_group_rule

    try:
        parse_group_rule(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def cmd_locate(args: argparse.Namespace, reporter: Reporter) -> int:
    """``saig locate``: rank candidate locations of the photos; exit 1 if any photo failed."""
    from tiling.locate import LocateOptions, locate_photos

    make_parents(args.out)
    opts = LocateOptions(index=args.index, checkpoint=args.checkpoint, k=args.k, prior_radius_m=args.prior_radius_m,
                         fov_deg=args.fov_deg, heatmap_dir=args.heatmap_dir, device=args.device,
                         overwrite=args.overwrite, json_lines=args.json or reporter.json, mode=args.mode,
                         resume=args.resume, ignore_heading=args.ignore_heading, group=args.group,
                         refine=args.refine, refine_step_m=args.refine_step_m)
    failed = locate_photos(args.photos, args.out, opts, reporter)
    return 1 if failed else 0
