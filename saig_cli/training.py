"""``saig train`` and ``saig eval``: argument parsing only; the work is in :mod:`saig_core.training.trainer`."""
from __future__ import annotations

import argparse
import json

from saig_core.errors import SaigError
from saig_core.runtime.args import add_device_arg, output_dir, positive_int
from saig_core.runtime.progress import Reporter


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``eval`` to the ``saig`` subparsers."""
    p = sub.add_parser("train", help="train a SAIG model from a YAML config (one process, or many under torchrun)",
                       description="Train per CONFIG into RUN_DIR (last.pt, best.pt chosen on the validation split, "
                                   "train_state.pt, metrics.csv, tb/). The last stdout line is the JSON report. "
                                   "Multi-GPU: torchrun --nproc_per_node N -m saig_core train ...")
    p.add_argument("--config", required=True, help="training config YAML (see docs/training.md)")
    p.add_argument("--out", required=True, type=output_dir, metavar="RUN_DIR", help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR exactly where it stopped")
    _add_set(p)
    p.add_argument("--stop-after-epoch", type=positive_int, default=None, metavar="N",
                   help="stop cleanly after epoch N (for time-limited machines); continue later with --resume")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval",
                       help="retrieval metrics (R@k, R@1%%, VIGOR hit rate) of a checkpoint on a config's split")
    p.add_argument("--checkpoint", required=True, help="any checkpoint load_checkpoint accepts")
    p.add_argument("--config", required=True, help="the training config naming the data")
    p.add_argument("--split", choices=("val", "test", "train"), default=None,
                   help="split to evaluate (default: test when the config has one, else val)")
    add_device_arg(p, default=None, help_prefix="override train.device: ")
    _add_set(p)
    p.set_defaults(func=cmd_eval)


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (parsed as YAML), e.g. --set train.epochs=3; repeatable")


def cmd_train(args: argparse.Namespace, reporter: Reporter) -> int:
    """``saig train``: train per the config into the run directory; the JSON report is the last line."""
    from saig_core.training.config import load_config
    from saig_core.training.trainer import train

    cfg = load_config(args.config, args.set)
    _generate_missing_pairs(cfg, reporter)
    report = train(cfg, args.out, reporter, resume=args.resume, stop_after_epoch=args.stop_after_epoch)
    if report is not None:
        _print_result(report, reporter)
    return 0


def _generate_missing_pairs(cfg, reporter: Reporter) -> None:
    """A config with ``data.generate`` whose ``data.train`` CSV does not exist yet: make those synthetic pairs."""
    from pathlib import Path

    from synthetic_world.generate import synthesize_pairs

    gen, train_csv = cfg.data.generate, cfg.data.train
    if not gen or cfg.data.kind != "pairs_csv" or train_csv is None or Path(train_csv).is_file():
        return
    if Path(train_csv).name != "pairs.csv":
        raise SaigError(f"{cfg.source}: data.generate writes a pairs.csv; data.train names {train_csv}")
    seeds = [int(s) for s in gen.get("seeds", [1])]
    reporter.log(f"{train_csv} not found: generating {gen.get('pairs', 200)} pairs per world from seeds {seeds} "
                 "(data.generate)")
    synthesize_pairs(seeds, Path(train_csv).parent, int(gen.get("pairs", 200)), size_m=float(gen.get("size_m", 600)),
                     reporter=reporter)


def cmd_eval(args: argparse.Namespace, reporter: Reporter) -> int:
    """``saig eval``: retrieval metrics of a checkpoint on one split of a config's data."""
    import torch

    from saig_core.data.datasets import encode_split
    from saig_core.data.transforms import PairTransform
    from saig_core.runtime.device import resolve_device
    from saig_core.training.config import load_config
    from saig_core.training.evaluate import retrieval_metrics
    from saig_core.training.trainer import _precision, load_splits
    from saig_core.weights.checkpoint import load_checkpoint

    overrides = list(args.set) + ([f"train.device={args.device}"] if args.device else [])
    cfg = load_config(args.config, overrides)
    splits = load_splits(cfg)
    name = args.split or ("test" if splits.test is not None else "val")
    split = getattr(splits, name)
    if split is None:
        from saig_core.training.config import ConfigError

        raise ConfigError(f"{cfg.source}: the config defines no {name} split")
    device = resolve_device(cfg.train.device)
    model = load_checkpoint(args.checkpoint, ground_size=cfg.model.ground_size, aerial_size=cfg.model.aerial_size,
                            map_location=device)
    transform = PairTransform(model.cfg.ground_size, model.cfg.aerial_size, cfg.augment)
    reporter.log(f"evaluating {args.checkpoint} on {split.name}: {len(split.ground)} queries, "
                 f"{len(split.aerial)} gallery images")
    q, g = encode_split(model, split, transform, cfg.train.eval_batch_size, device, num_workers=cfg.train.num_workers,
                        seed=cfg.train.seed, precision=_precision(cfg.train.precision, device))
    semi = torch.tensor(split.semi_positives) if split.semi_positives else None
    metrics = retrieval_metrics(q, g, positive=split.positive, semi_positives=semi)
    _print_result({"split": name, "queries": len(split.ground), "gallery_size": len(split.aerial),
                   "metrics": metrics, "checkpoint": str(args.checkpoint)}, reporter)
    return 0


def _print_result(result: dict, reporter: Reporter) -> None:
    if reporter.json:
        reporter.emit("result", **result)
    else:
        print(json.dumps(result), flush=True)
