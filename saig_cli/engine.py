"""Engine commands: ``saig info``, ``convert-official``, ``export-onnx``, ``backend-info``.

Argument parsing and reporting only; the work is done by :mod:`saig_core`.
"""
from __future__ import annotations

import argparse
import json

from saig_core.runtime.args import add_device_arg, add_size_args, output_dir, output_file
from saig_core.runtime.progress import Reporter


def register(sub: argparse._SubParsersAction) -> None:
    """Add the engine commands to the ``saig`` subparsers."""
    p = sub.add_parser("info", help="print a checkpoint's config, parameter count and fingerprint")
    p.add_argument("checkpoint", help="project, authors' or ImageNet checkpoint file")
    add_size_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert-official", help="convert an authors' checkpoint to the project format")
    p.add_argument("src", help="the authors' model_checkpoint.pth (or an ImageNet backbone file)")
    p.add_argument("dst", type=output_file, help="output .pt in the project format")
    add_size_args(p)
    p.add_argument("--half", action="store_true", help="store float16 weights (half the size)")
    p.set_defaults(func=cmd_convert_official)

    p = sub.add_parser("export-onnx", help="export both branches as ONNX graphs (ground.onnx, aerial.onnx)")
    p.add_argument("checkpoint", help="project, authors' or ImageNet checkpoint file")
    p.add_argument("out_dir", type=output_dir, help="output folder (created; existing graphs are replaced)")
    add_size_args(p)
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip comparing ONNX Runtime's descriptors with PyTorch's")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    p.set_defaults(func=cmd_export_onnx)

    p = sub.add_parser("backend-info", help="report the engine: version, torch, device (and a checkpoint's model)")
    p.add_argument("--checkpoint", default=None, help="also load this checkpoint and describe its model")
    add_device_arg(p)
    add_size_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.set_defaults(func=cmd_backend_info)


def cmd_info(args: argparse.Namespace, reporter: Reporter) -> int:
    """``saig info``: a checkpoint's model config, parameter count, fingerprint and metadata."""
    from saig_core.weights.checkpoint import checkpoint_info

    info = checkpoint_info(args.checkpoint, ground_size=args.ground_size, aerial_size=args.aerial_size)
    if args.json or reporter.json:
        reporter.emit("result", **info)
        return 0
    cfg = info["config"]
    bb = cfg["backbone"]
    print(f"checkpoint   {info['path']} ({info['kind']})")
    print(f"model        {cfg['preset']}: depth {bb['depth']}, dim {bb['dim']}, heads {bb['heads']}, "
          f"stem {bb['stem_channels']}, pool {cfg['pool']}")
    print(f"inputs       ground {cfg['ground_size'][0]}x{cfg['ground_size'][1]}, "
          f"aerial {cfg['aerial_size'][0]}x{cfg['aerial_size'][1]}")
    print(f"descriptor   {info['descriptor_dim']}-d")
    print(f"parameters   {info['parameters']:,}")
    print(f"fingerprint  {info['fingerprint']}")
    for k, v in info["metadata"].items():
        if k != "weights_sha256":
            print(f"  {k}: {json.dumps(v) if not isinstance(v, str) else v}")
    return 0


def cmd_convert_official(args: argparse.Namespace, reporter: Reporter) -> int:
    """``saig convert-official``: rewrite an authors' checkpoint in the project format."""
    from saig_core.weights.checkpoint import checkpoint_info, convert_official

    out = convert_official(args.src, args.dst, ground_size=args.ground_size, aerial_size=args.aerial_size,
                           half=args.half)
    info = checkpoint_info(out)
    reporter.log(f"wrote {out}: {info['config']['preset']} {info['config']['pool']}, "
                 f"{info['parameters']:,} parameters, fingerprint {info['fingerprint'][:16]}")
    if reporter.json:
        reporter.emit("result", path=str(out), fingerprint=info["fingerprint"])
    return 0


def cmd_export_onnx(args: argparse.Namespace, reporter: Reporter) -> int:
    """``saig export-onnx``: both branches as ONNX graphs, checked against PyTorch unless ``--no-verify``."""
    from pathlib import Path

    from saig_core.weights.checkpoint import load_checkpoint
    from saig_core.weights.onnx_export import export_onnx, verify_export

    model = load_checkpoint(args.checkpoint, ground_size=args.ground_size, aerial_size=args.aerial_size)
    manifest = export_onnx(model, args.out_dir, checkpoint=Path(args.checkpoint).name)
    result = {"output": args.out_dir, "files": [b["file"] for b in manifest["branches"].values()],
              "fingerprint": manifest["fingerprint"], "descriptor_dim": manifest["descriptor_dim"]}
    if args.verify:
        result["max_abs_diff"] = verify_export(model, args.out_dir)
        reporter.log(f"ONNX Runtime matches PyTorch (max |difference| {result['max_abs_diff']:.2e})")
    if args.json or reporter.json:
        reporter.emit("result", **result)
    else:
        reporter.log(f"wrote {', '.join(result['files'])} and saig-onnx.json to {args.out_dir}")
    return 0


def cmd_backend_info(args: argparse.Namespace, reporter: Reporter) -> int:
    """``saig backend-info``: engine version, torch, device and precision (and a checkpoint's model)."""
    from saig_core.runtime.backend import backend_info

    info = backend_info(args.device, args.checkpoint, ground_size=args.ground_size, aerial_size=args.aerial_size)
    if args.json or reporter.json:
        reporter.emit("result", **info)
        return 0
    print(f"saig         {info['version']}")
    print(f"torch        {info['torch']} (CUDA {'yes' if info['cuda'] else 'no'})")
    print(f"device       {info['device']}: {info['device_name']}, precision {info['precision']}")
    print(f"onnxruntime  {info['onnxruntime'] or 'not installed'}")
    if info["model"]:
        m = info["model"]
        print(f"model        {m['preset']} {m['pool']}, {m['descriptor_dim']}-d, {m['parameters']:,} parameters, "
              f"fingerprint {m['fingerprint'][:16]}")
    return 0
