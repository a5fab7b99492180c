"""Checkpoints: the project's own format, the authors' training checkpoints, ImageNet backbones.

Every file is read with ``torch.load(weights_only=True)``: a file that needs pickled code to load is
refused. Three layouts are recognised:

* project format: ``{"format": "saig-checkpoint", "format_version": 1, "config": {...},
  "state_dict": {...}, "metadata": {...}}`` written by :func:`save_checkpoint`;
* the authors' training checkpoints: ``{"model": state_dict, "optimizer": ..., "epoch": ...,
  "best_acc": ...}`` with ``model_grd.*`` / ``model_sat.*`` keys (GAP or SMD, any depth, inferred
  from the keys); a bare state dict and a DataParallel ``module.`` prefix are accepted, and numpy
  scalars in the bookkeeping are rebuilt from data (no code runs);
* ImageNet-pretrained backbones: ``{"state_dict": backbone_keys}`` with a 14x14 ``pos_embed``; they
  initialise both branches (heads stay freshly initialised, ``head.*`` classifiers are ignored).

Project files are checked against their recorded sha256; keys that do not fit are named as the
file names them.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saig_core.errors import SaigError
from saig_core.model.backbone import resize_pos_embed
from saig_core.model.config import BACKBONE_PRESETS, BackboneConfig, ModelConfig
from saig_core.model.saig_model import SAIGModel, count_parameters
from saig_core.version import __version__

FORMAT = "saig-checkpoint"
FORMAT_VERSION = 1
DEFAULT_GROUND_SIZE = (128, 512)
DEFAULT_AERIAL_SIZE = (256, 256)
PUBLISHED_STEM = BACKBONE_PRESETS["saig_s"]
_HEAD_DIM = 32  # published SAIG: 12 heads of dim 32 at dim 384
_BRANCHES = {"model_grd": "ground", "model_sat": "aerial"}
_BRANCH_PREFIX = {"ground": "model_grd.", "aerial": "model_sat."}
# What must match at inference, recorded in project checkpoints' metadata by the trainer:
FOOTPRINT_KEY = "aerial_footprint_m"  # ground metres spanned by one aerial training image (side)
GROUND_INPUT_KEY = "ground_input"  # how ground images become model input (panorama, FoV convention, polar)


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
    """:func:`weights_fingerprint` of ``model``'s state dict."""
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
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu().clone()
        if half and v.is_floating_point():
            v = v.half()
        state[k] = v
    meta = _plain_copy({
        "software_version": __version__,
        "torch_version": torch.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "parameters": count_parameters(model),
        "weights_dtype": "float16" if half else "float32",
        **metadata,
        "weights_sha256": weights_fingerprint(state),
    }, "metadata")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.cfg.to_dict(),
        "state_dict": state,
        "metadata": meta,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(payload, path)
    return path


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary sibling, then rename: ``path`` is either the old file or complete."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def update_metadata(path: str | os.PathLike, **metadata: Any) -> Path:
    """Add or replace metadata keys of a project checkpoint, atomically; the weights are not touched
    (their tensors are written back as read, so ``weights_sha256`` stays true)."""
    path = Path(path)
    raw = read_checkpoint(path)
    if checkpoint_kind(raw) != "project":
        raise CheckpointError(f"{path}: only project checkpoints carry metadata (this one is {checkpoint_kind(raw)})")
    raw["metadata"] = _plain_copy({**(raw.get("metadata") or {}), **metadata}, "metadata")
    atomic_torch_save(raw, path)
    return path


def aerial_footprint_m(metadata: Mapping[str, Any]) -> float | None:
    """The recorded aerial footprint in metres (positive and finite), or None when not recorded."""
    value = metadata.get(FOOTPRINT_KEY)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < float(value) < float("inf"):
        return None
    return float(value)


def _plain_copy(value: Any, where: str) -> Any:
    """``value`` rebuilt from builtin types only (a str subclass such as torch's version string would
    otherwise be pickled as its class and make the file unloadable with ``weights_only``)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, np.generic) and np.ndim(value) == 0:
        value = value.item()  # numpy scalar -> Python scalar
    for kind in (bool, int, float, str):  # subclasses such as torch.__version__ or np.float64
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, (list, tuple)):
        return [_plain_copy(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: keys must be strings, got {k!r}")
            out[str(k)] = _plain_copy(v, f"{where}.{k}")
        return out
    raise TypeError(f"{where} is a {type(value).__name__}; checkpoint metadata must be plain values")


# --------------------------------------------------------------------------------------------------
# reading

# numpy scalars (e.g. an authors' ``best_acc``) are rebuilt from plain data, never by running code.
_np_scalar = (np._core if hasattr(np, "_core") else np.core).multiarray.scalar  # numpy 2 / numpy 1
_SAFE_GLOBALS = [
    _np_scalar,
    (_np_scalar, "numpy.core.multiarray.scalar"),
    (_np_scalar, "numpy._core.multiarray.scalar"),
    np.dtype,
    *(type(np.dtype(c)) for c in "?bhilqBHILQefdg"),  # numeric dtype classes a scalar's state names
]
# Token grids of the published training sizes, to tell which grid an authors' pos_embed has when
# the requested size has another token count: CVUSA/CVACT 128x512 / 256x256, VIGOR 320x640 / 320x320.
_PUBLISHED_GRIDS = {"ground": {256: (8, 32), 800: (20, 40)}, "aerial": {256: (16, 16), 400: (20, 20)}}


# First bytes of files people give by mistake, for a message that says what the file is.
_OTHER_FORMATS = ((b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG", "a PNG image"), (b"II*\x00", "a TIFF image"),
                  (b"MM\x00*", "a TIFF image"), (b"%PDF", "a PDF document"), (b"GIF8", "a GIF image"),
                  (b"\x08\x01\x12", "an ONNX graph"), (b"{", "a JSON or text file"))


def _check_checkpoint_file(path: Path) -> None:
    """Refuse, with the real reason, what is not a readable PyTorch file (zip archive or legacy pickle)."""
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except PermissionError:
        raise CheckpointError(f"{path}: permission denied") from None
    if head.startswith(b"PK") or head[:1] == b"\x80":  # torch.save's zip archive, or a legacy pickle
        return
    what = next((name for magic, name in _OTHER_FORMATS if head.startswith(magic)), None)
    if what is None and head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        what = "a text file"
    raise CheckpointError(f"{path}: not a PyTorch checkpoint" + (f" (it is {what})" if what else "")
                          + (" -- an empty file" if not head else ""))


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint file safely (``weights_only=True``) and return the raw dict."""
    path = Path(path)
    _check_checkpoint_file(path)
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            raw = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        needs = re.search(r"GLOBAL ([\w.]+)|but got <class '([\w.]+)'>", str(e))
        what = f" ({needs.group(1) or needs.group(2)})" if needs else ""
        raise CheckpointError(
            f"{path}: refused: loading it would run pickled Python code{what}, and checkpoints are only "
            "read with torch.load(weights_only=True). If you trust the file, re-save just its tensors, "
            "e.g. torch.save({'model': model.state_dict()}, 'plain.pth')"
        ) from None
    # torch raises RuntimeError, EOFError, KeyError, ValueError, ... for damaged files; all mean the same here
    except Exception as e:  # noqa: BLE001 - any other torch.load failure becomes one clear CheckpointError
        reason = str(e).split(". ")[0] or type(e).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {reason}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, found a {type(raw).__name__}")
    return raw


def _state_candidates(raw: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Where a state dict may sit: under 'model', under 'state_dict', or the file itself."""
    return [v for v in (raw.get("model"), raw.get("state_dict")) if isinstance(v, Mapping)] + [raw]


def _is_official(keys) -> bool:
    return any(k.startswith(("model_grd.", "model_sat.")) for k in keys)


def _is_backbone(keys) -> bool:
    return "pos_embed" in keys and any(k.startswith("patch_embed.conv_stem.") for k in keys)


def checkpoint_kind(raw: Mapping[str, Any]) -> str:
    """'project', 'official' (the authors' training checkpoint), 'imagenet' (a backbone file) or 'unknown'."""
    if raw.get("format") == FORMAT:
        return "project"
    for state in _state_candidates(raw):
        keys = _strip_module(state).keys()
        if _is_official(keys):
            return "official"
        if _is_backbone(keys):
            return "imagenet"
    return "unknown"


def _find_state(raw: Mapping[str, Any], test, path: Path) -> dict[str, torch.Tensor]:
    for state in _state_candidates(raw):
        state = _strip_module(state)
        if test(state.keys()):
            bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
            if bad:
                raise CheckpointError(f"{path}: state dict entries are not tensors: {', '.join(map(str, bad[:8]))}")
            return state
    raise CheckpointError(f"{path}: no state dict found")  # unreachable after checkpoint_kind


def _strip_module(state: Mapping[str, Any]) -> dict[str, Any]:
    """Drop a DataParallel/DDP ``module.`` prefix."""
    return {(k[7:] if isinstance(k, str) and k.startswith("module.") else k): v for k, v in state.items()}


def _infer_backbone(state: Mapping[str, torch.Tensor], prefix: str, path: Path) -> BackboneConfig:
    """Depth, width and stem widths from the keys of one backbone (published stem strides)."""
    try:
        dim = state[prefix + "pos_embed"].shape[-1]
    except KeyError:
        raise CheckpointError(f"{path}: no {prefix}pos_embed key; not a SAIG checkpoint") from None
    depth = 1 + max(
        (int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"blocks\.(\d+)\.", k))), default=-1
    )
    if depth < 1:
        raise CheckpointError(f"{path}: no {prefix}blocks.* keys; not a SAIG backbone")
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
    if dim % _HEAD_DIM:
        raise CheckpointError(f"{path}: width {dim} is not a multiple of the published head dim {_HEAD_DIM}")
    return BackboneConfig(depth=depth, dim=dim, heads=dim // _HEAD_DIM, stem_channels=channels,
                          stem_strides=PUBLISHED_STEM.stem_strides)


def _preset_name(backbone: BackboneConfig) -> str:
    return next((name for name, cfg in BACKBONE_PRESETS.items() if cfg == backbone), "custom")


def _trained_grid(num_tokens: int, requested: tuple[int, int], branch: str, path: Path) -> tuple[int, int]:
    """The grid an authors' or ImageNet pos_embed was trained at.

    The requested grid when its token count matches, else a published training grid of that
    branch with this token count, else (aerial and ImageNet only: square images) a square grid.
    A ground panorama grid is never guessed: resizing from a wrong grid would scramble positions.
    """
    if requested[0] * requested[1] == num_tokens:
        return requested
    if num_tokens in _PUBLISHED_GRIDS.get(branch, {}):
        return _PUBLISHED_GRIDS[branch][num_tokens]
    side = int(round(num_tokens**0.5))
    if branch != "ground" and side * side == num_tokens:
        return (side, side)
    raise CheckpointError(
        f"{path}: the {branch} pos_embed has {num_tokens} tokens, which is neither the requested "
        f"{requested[0]}x{requested[1]} grid nor a known training grid; load it at the {branch} image size it "
        "was trained at (then save it in the project format to run it at other sizes)"
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
    return _model_from_raw(read_checkpoint(path), path, ground_size, aerial_size, pool).to(map_location)


def _model_from_raw(raw: dict, path: Path, ground_size, aerial_size, pool) -> SAIGModel:
    kind = checkpoint_kind(raw)
    if kind == "project":
        if raw.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"{path}: project format version {raw.get('format_version')} is not supported")
        if not isinstance(raw.get("config"), Mapping) or not isinstance(raw.get("state_dict"), Mapping):
            raise CheckpointError(f"{path}: project checkpoint without 'config' or 'state_dict'")
        try:
            trained = ModelConfig.from_dict(raw["config"])
        except (TypeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{path}: invalid model config in the checkpoint: {e}") from None
        state = dict(raw["state_dict"])
        recorded = (raw.get("metadata") or {}).get("weights_sha256")
        if recorded and weights_fingerprint(state) != recorded:
            raise CheckpointError(f"{path}: the weights do not match their recorded sha256 (file corrupted or edited)")
        trained_grids = {"ground": trained.ground_grid, "aerial": trained.aerial_grid}
        cfg = trained.with_sizes(ground_size, aerial_size)
    elif kind == "official":
        state = _official_to_project(_find_state(raw, _is_official, path))
        backbone = _infer_backbone(state, "ground.backbone.", path)
        cfg = ModelConfig(
            backbone=backbone,
            pool="smd" if "ground.head.linear1.weight" in state else "gap",
            ground_size=ground_size or DEFAULT_GROUND_SIZE,
            aerial_size=aerial_size or DEFAULT_AERIAL_SIZE,
            preset=_preset_name(backbone),
        )
        trained_grids = {}
        for b, grid in (("ground", cfg.ground_grid), ("aerial", cfg.aerial_grid)):
            if f"{b}.backbone.pos_embed" not in state:
                raise CheckpointError(f"{path}: missing keys: {_BRANCH_PREFIX[b]}backbone.pos_embed")
            trained_grids[b] = _trained_grid(state[f"{b}.backbone.pos_embed"].shape[1], grid, b, path)
    elif kind == "imagenet":
        backbone_state = {k: v for k, v in _find_state(raw, _is_backbone, path).items() if not k.startswith("head.")}
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
            trained_grids[b] = _trained_grid(n, (0, 0), "imagenet", path)
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
                n_trained = trained_grids[b][0] * trained_grids[b][1]
                raise CheckpointError(
                    f"{path}: the {b} SMD head was trained for {n_trained} tokens and cannot run at a "
                    f"{grid[0]}x{grid[1]} token grid ({grid[0] * grid[1]} tokens); pass the {b} image size "
                    "it was trained at"
                )
            key = f"{b}.backbone.pos_embed"
            if key in state:
                state[key] = resize_pos_embed(state[key].float(), trained_grids[b], grid)
    _load_strict(model, state, path, allow_missing_heads=(kind == "imagenet"), kind=kind)
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


def _file_key(key: str, kind: str) -> str:
    """A model key as the file names it, so errors speak the file's language."""
    branch, _, rest = key.partition(".")
    if kind == "official" and branch in _BRANCH_PREFIX:
        return _BRANCH_PREFIX[branch] + (rest[5:] if rest.startswith("head.") else rest)
    if kind == "imagenet" and rest.startswith("backbone."):
        return rest[9:]
    return key


def _load_strict(model: SAIGModel, state: dict[str, torch.Tensor], path: Path, allow_missing_heads: bool,
                 kind: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not (allow_missing_heads and ".head." in k)]
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]  # absent in older files
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{_file_key(k, kind)}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in state
        if k in expected and state[k].shape != expected[k].shape
    ]
    problems = []
    for label, items in (
        ("missing keys", [_file_key(k, kind) for k in missing]),
        ("unexpected keys", [_file_key(k, kind) for k in unexpected]),
        ("mis-shaped keys", shapes),
    ):
        items = list(dict.fromkeys(items))  # an ImageNet key feeds both branches: name it once
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
    path = Path(path)
    raw = read_checkpoint(path)
    model = _model_from_raw(raw, path, load_kwargs.get("ground_size"), load_kwargs.get("aerial_size"),
                            load_kwargs.get("pool"))
    kind = checkpoint_kind(raw)
    if kind == "project":
        metadata = dict(raw.get("metadata") or {})
    else:  # the authors' training bookkeeping, when it is plain
        metadata = {k: _plain(raw[k]) for k in ("epoch", "best_acc") if k in raw and _plain(raw[k]) is not None}
    return {
        "path": str(path),
        "kind": kind,
        "config": model.cfg.to_dict(),
        "descriptor_dim": model.descriptor_dim,
        "parameters": count_parameters(model),
        "fingerprint": model_fingerprint(model),
        "metadata": metadata,
    }


def _plain(value: Any) -> int | float | str | None:
    """A JSON-able scalar from an int/float/str, a numpy scalar or a one-element tensor; else None."""
    if isinstance(value, (int, float, str)):
        return value
    if isinstance(value, np.generic) or (isinstance(value, torch.Tensor) and value.numel() == 1):
        return value.item()
    return None
