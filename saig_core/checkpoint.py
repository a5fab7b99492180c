"""Checkpoints: the project's own format, the authors' training checkpoints, ImageNet backbones.

Every file is read with ``torch.load(weights_only=True)``: a file that needs pickled code to load is
refused. Three layouts are recognised:

* project format: ``{"format": "saig-checkpoint", "format_version": 1, "config": {...},
  "state_dict": {...}, "metadata": {...}}`` written by :func:`save_checkpoint`;
* the authors' training checkpoints: ``{"model": state_dict, ...}`` with ``model_grd.*`` /
  ``model_sat.*`` keys (GAP or SMD, any depth, inferred from the keys);
* ImageNet-pretrained backbones: ``{"state_dict": backbone_keys}`` with a 14x14 ``pos_embed``; they
  initialise both branches (heads stay freshly initialised).
"""
from __future__ import annotations

import hashlib
import os
import pickle
import re
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import torch

from .backbone import resize_pos_embed
from .errors import SaigError
from .config import BACKBONE_PRESETS, BackboneConfig, ModelConfig, token_grid
from .model import SAIGModel, count_parameters
from .version import __version__

FORMAT = "saig-checkpoint"
FORMAT_VERSION = 1
DEFAULT_GROUND_SIZE = (128, 512)
DEFAULT_AERIAL_SIZE = (256, 256)
PUBLISHED_STEM = BACKBONE_PRESETS["saig_s"]
_HEAD_DIM = 32  # published SAIG: 12 heads of dim 32 at dim 384
_BRANCHES = {"model_grd": "ground", "model_sat": "aerial"}


class CheckpointError(SaigError, ValueError):
    """A checkpoint file that cannot be loaded as asked; the message names the file and the reason."""


# --------------------------------------------------------------------------------------------------
# fingerprints


def weights_fingerprint(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 of a state dict: names, shapes and values (floating tensors as float32), sorted by name.

    Independent of the storage dtype of floating weights as long as they round-trip through
    float32, so an fp16 file and the fp32 model loaded from it share one fingerprint.
    """
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu()
        t = t.float() if t.is_floating_point() else t.long()
        h.update(name.encode())
        h.update(repr(tuple(t.shape)).encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def model_fingerprint(model: torch.nn.Module) -> str:
    return weights_fingerprint(model.state_dict())


# --------------------------------------------------------------------------------------------------
# saving


def save_checkpoint(model: SAIGModel, path: str | os.PathLike, *, half: bool = False, **metadata: Any) -> Path:
    """Write ``model`` in the project format, atomically (a temporary file renamed into place).

    ``half=True`` stores floating weights as float16 (half the size; the fingerprint is that of the
    rounded weights). Extra keyword arguments become metadata and must be plain values (str, int,
    float, bool, None, lists and dicts of them) so the file stays loadable with ``weights_only``.
    """
    path = Path(path)
    _check_plain(metadata, "metadata")
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu().clone()
        if half and v.is_floating_point():
            v = v.half()
        state[k] = v
    meta = {
        "software_version": __version__,
        "torch_version": torch.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "parameters": count_parameters(model),
        "weights_dtype": "float16" if half else "float32",
        **metadata,
        "weights_sha256": weights_fingerprint(state),
    }
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.cfg.to_dict(),
        "state_dict": state,
        "metadata": meta,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _check_plain(value: Any, where: str) -> None:
    if value is None or isinstance(value, (str, int, float, bool)):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: keys must be strings, got {k!r}")
            _check_plain(v, f"{where}.{k}")
        return
    raise TypeError(f"{where} is a {type(value).__name__}; checkpoint metadata must be plain values")


# --------------------------------------------------------------------------------------------------
# reading


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint file safely (``weights_only=True``) and return the raw object."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused: the file needs pickled Python code to load, and checkpoints are only "
            f"ever read with weights_only=True ({str(e).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {e}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, found {type(raw).__name__}")
    return raw


def checkpoint_kind(raw: Mapping[str, Any]) -> str:
    """'project', 'official' (the authors' training checkpoint) or 'imagenet' (a backbone file)."""
    if raw.get("format") == FORMAT:
        return "project"
    if isinstance(raw.get("model"), Mapping):
        keys = _strip_module(raw["model"]).keys()
        if any(k.startswith(("model_grd.", "model_sat.")) for k in keys):
            return "official"
    if isinstance(raw.get("state_dict"), Mapping):
        keys = _strip_module(raw["state_dict"]).keys()
        if "pos_embed" in keys and any(k.startswith("patch_embed.conv_stem.") for k in keys):
            return "imagenet"
    return "unknown"


def _strip_module(state: Mapping[str, Any]) -> dict[str, Any]:
    """Drop a DataParallel/DDP ``module.`` prefix."""
    return {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}


def _infer_backbone(state: Mapping[str, torch.Tensor], prefix: str, path: Path) -> BackboneConfig:
    """Depth, width and stem widths from the keys of one backbone (published stem strides)."""
    try:
        dim = state[prefix + "pos_embed"].shape[-1]
    except KeyError:
        raise CheckpointError(f"{path}: no {prefix}pos_embed key; not a SAIG checkpoint") from None
    depth = 1 + max(
        (int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"blocks\.(\d+)\.", k))), default=-1
    )
    convs = sorted(
        int(m.group(1))
        for k in state
        if (m := re.match(re.escape(prefix) + r"patch_embed\.conv_stem\.(\d+)\.weight$", k)) and state[k].ndim == 4
    )
    channels = tuple(state[f"{prefix}patch_embed.conv_stem.{i}.weight"].shape[0] for i in convs[:-1])
    if channels != PUBLISHED_STEM.stem_channels:
        raise CheckpointError(
            f"{path}: stem widths {channels} differ from the published stem {PUBLISHED_STEM.stem_channels}; "
            "stem strides cannot be inferred from weights (save such models in the project format)"
        )
    return BackboneConfig(depth=depth, dim=dim, heads=max(1, dim // _HEAD_DIM), stem_channels=channels,
                          stem_strides=PUBLISHED_STEM.stem_strides)


def _preset_name(backbone: BackboneConfig) -> str:
    return next((name for name, cfg in BACKBONE_PRESETS.items() if cfg == backbone), "custom")


def _grid_of(num_tokens: int, requested: tuple[int, int], path: Path, what: str) -> tuple[int, int]:
    """The grid a checkpoint's pos_embed was trained at: the requested grid if N matches, else square."""
    if requested[0] * requested[1] == num_tokens:
        return requested
    side = int(round(num_tokens**0.5))
    if side * side == num_tokens:
        return (side, side)
    raise CheckpointError(
        f"{path}: the {what} pos_embed has {num_tokens} tokens, which is neither the requested "
        f"{requested[0]}x{requested[1]} grid nor square; pass the image size it was trained at"
    )


def load_checkpoint(
    path: str | os.PathLike,
    ground_size: tuple[int, int] | None = None,
    aerial_size: tuple[int, int] | None = None,
    map_location: str | torch.device = "cpu",
    pool: str | None = None,
) -> SAIGModel:
    """A ready model in eval mode from any supported checkpoint (see the module docstring).

    ``ground_size`` / ``aerial_size`` (H, W) default to the sizes recorded in a project checkpoint,
    and to 128x512 / 256x256 for the authors' files. When they give another token grid than the
    weights were trained at, positional embeddings are resized bicubically (impossible for SMD,
    whose head is tied to the token count: that raises). ``pool`` only applies to ImageNet
    backbones, whose heads are new.
    """
    path = Path(path)
    raw = read_checkpoint(path, map_location="cpu")
    kind = checkpoint_kind(raw)
    if kind == "project":
        if raw.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"{path}: project format version {raw.get('format_version')} is not supported")
        trained = ModelConfig.from_dict(raw["config"])
        state = dict(raw["state_dict"])
        trained_grids = {"ground": trained.ground_grid, "aerial": trained.aerial_grid}
        cfg = trained.with_sizes(ground_size, aerial_size)
    elif kind == "official":
        state = _official_to_project(_strip_module(raw["model"]))
        backbone = _infer_backbone(state, "ground.backbone.", path)
        cfg = ModelConfig(
            backbone=backbone,
            pool="smd" if "ground.head.linear1.weight" in state else "gap",
            ground_size=ground_size or DEFAULT_GROUND_SIZE,
            aerial_size=aerial_size or DEFAULT_AERIAL_SIZE,
            preset=_preset_name(backbone),
        )
        trained_grids = {
            b: _grid_of(state[f"{b}.backbone.pos_embed"].shape[1], grid, path, b)
            for b, grid in (("ground", cfg.ground_grid), ("aerial", cfg.aerial_grid))
        }
    elif kind == "imagenet":
        backbone_state = {k: v for k, v in _strip_module(raw["state_dict"]).items() if not k.startswith("head.")}
        backbone = _infer_backbone(backbone_state, "", path)
        cfg = ModelConfig(
            backbone=backbone,
            pool=pool or "gap",
            ground_size=ground_size or DEFAULT_GROUND_SIZE,
            aerial_size=aerial_size or DEFAULT_AERIAL_SIZE,
            preset=_preset_name(backbone),
        )
        n = backbone_state["pos_embed"].shape[1]
        state, trained_grids = {}, {}
        for b in ("ground", "aerial"):
            state.update({f"{b}.backbone.{k}": v for k, v in backbone_state.items()})
            trained_grids[b] = _grid_of(n, (0, 0), path, "ImageNet")
    else:
        raise CheckpointError(
            f"{path}: not a SAIG checkpoint (expected the project format, the authors' {{'model': ...}} "
            f"with model_grd./model_sat. keys, or an ImageNet {{'state_dict': ...}} backbone); "
            f"top-level keys: {sorted(map(str, raw))[:10]}"
        )

    model = SAIGModel(cfg)
    for b, grid in (("ground", cfg.ground_grid), ("aerial", cfg.aerial_grid)):
        if trained_grids[b] != grid:
            if cfg.pool == "smd" and f"{b}.head.linear1.weight" in state:
                raise CheckpointError(
                    f"{path}: the {b} SMD head was trained for a {trained_grids[b][0]}x{trained_grids[b][1]} "
                    f"token grid and cannot run at {grid[0]}x{grid[1]}; use the training image size"
                )
            key = f"{b}.backbone.pos_embed"
            state[key] = resize_pos_embed(state[key].float(), trained_grids[b], grid)
    _load_strict(model, state, path, allow_missing_heads=(kind == "imagenet"))
    model.to(map_location)
    return model.eval()


def _official_to_project(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the authors' keys: model_grd.backbone.* -> ground.backbone.*, model_grd.linearK -> ground.head.linearK."""
    out = {}
    for k, v in state.items():
        branch, _, rest = k.partition(".")
        if branch not in _BRANCHES:
            out[k] = v  # reported as unexpected by _load_strict
            continue
        rest = "head." + rest if rest.startswith("linear") else rest
        out[f"{_BRANCHES[branch]}.{rest}"] = v
    return out


def _load_strict(model: SAIGModel, state: dict[str, torch.Tensor], path: Path, allow_missing_heads: bool) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not (allow_missing_heads and ".head." in k)]
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]  # absent in older files
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in state
        if k in expected and state[k].shape != expected[k].shape
    ]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", shapes)):
        if items:
            more = f" (+{len(items) - 8} more)" if len(items) > 8 else ""
            problems.append(f"{label}: {', '.join(items[:8])}{more}")
    if problems:
        raise CheckpointError(f"{path}: weights do not fit the model: " + "; ".join(problems))
    converted = {k: v.to(expected[k].dtype) for k, v in state.items()}
    model.load_state_dict(converted, strict=False)


# --------------------------------------------------------------------------------------------------
# conversion and inspection


def convert_official(src: str | os.PathLike, dst: str | os.PathLike, **kwargs: Any) -> Path:
    """Re-save an authors' (or ImageNet) checkpoint in the project format."""
    model = load_checkpoint(src, **{k: kwargs.pop(k) for k in ("ground_size", "aerial_size", "pool") if k in kwargs})
    return save_checkpoint(model, dst, converted_from=Path(src).name, **kwargs)


def checkpoint_info(path: str | os.PathLike, **load_kwargs: Any) -> dict[str, Any]:
    """What a checkpoint holds: kind, config, parameter count, fingerprint, metadata."""
    raw = read_checkpoint(path)
    model = load_checkpoint(path, **load_kwargs)
    return {
        "path": str(path),
        "kind": checkpoint_kind(raw),
        "config": model.cfg.to_dict(),
        "descriptor_dim": model.descriptor_dim,
        "parameters": count_parameters(model),
        "fingerprint": model_fingerprint(model),
        "metadata": raw.get("metadata", {}),
    }
