"""The training configuration: YAML sections as small dataclasses, validated with messages naming keys.

A config file has the sections ``model``, ``loss``, ``optim``, ``train``, ``data`` and ``augment``
(see the README, "Training"). Relative paths inside it are resolved against the config file's
folder, except a dataset's split files (``data.train/val/test`` of CVUSA), which are relative to
``data.root``. ``overrides`` (``"train.epochs=3"``, values parsed as YAML) are applied before validation.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from saig_core.data.transforms import AugmentConfig
from saig_core.errors import SaigError
from saig_core.model.config import (
    BACKBONE_PRESETS,
    DEFAULT_SECTORS,
    POOLS,
    BackboneConfig,
    ModelConfig,
    preset_config,
)
from saig_core.runtime.choices import TRAIN_PRECISIONS
from saig_core.training.losses import LOSSES

DATA_KINDS = ("pairs_csv", "cvusa", "cvact", "vigor")


class ConfigError(SaigError, ValueError):
    """A training config that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class ModelSection:
    """``model``: the architecture (a preset or a custom backbone), pooling, input sizes, initial weights."""

    preset: str | None = "saig_s"  # a named preset, or null with `backbone` for a custom one
    backbone: dict | None = None  # BackboneConfig fields (depth, dim, heads, stem_channels, stem_strides)
    pool: str = "gap"
    ground_size: tuple[int, int] = (128, 512)
    aerial_size: tuple[int, int] = (256, 256)
    init: str | None = None  # any checkpoint load_checkpoint accepts: project, authors', ImageNet backbone
    sectors: int = DEFAULT_SECTORS  # pool "sector": azimuth sectors (must divide both token grids' columns)

    def model_config(self) -> ModelConfig:
        """The :class:`ModelConfig` this section describes (``backbone`` wins over ``preset``)."""
        if self.backbone is not None:
            return ModelConfig(backbone=BackboneConfig(**self.backbone), pool=self.pool,
                               ground_size=self.ground_size, aerial_size=self.aerial_size,
                               preset=self.preset or "custom", sectors=self.sectors)
        if self.preset is None:
            raise ValueError("model.preset is null and no model.backbone is given")
        cfg = preset_config(self.preset, pool="gap", ground_size=self.ground_size, aerial_size=self.aerial_size)
        return ModelConfig(backbone=cfg.backbone, pool=self.pool, ground_size=cfg.ground_size,
                           aerial_size=cfg.aerial_size, preset=cfg.preset, sectors=self.sectors)


@dataclass(frozen=True)
class LossSection:
    """``loss``: which loss (one of ``LOSSES``) and its parameters."""

    name: str = "soft_margin_triplet"
    alpha: float = 10.0  # triplet losses
    k: int | None = None  # hard_negative_triplet: hardest negatives per anchor (default floor(sqrt(B)))
    temperature: float = 0.02  # info_nce
    symmetric: bool = True  # info_nce: mean of both cross-entropies; false = the authors' single softmax
    authors_unmasked: bool = False  # soft_margin_triplet: reproduce the authors' unmasked diagonal
    rotation_weight: float = 0.5  # sector losses: weight of the wrong-rotation negatives

    def kwargs(self, sectors: int = 0) -> dict[str, Any]:
        """The keyword arguments of the chosen loss, for ``build_loss(name, **kwargs)``."""
        if self.name == "sector_triplet":
            return {"sectors": sectors, "alpha": self.alpha, "rotation_weight": self.rotation_weight}
        if self.name == "sector_info_nce":
            return {"sectors": sectors, "temperature": self.temperature, "rotation_weight": self.rotation_weight}
        if self.name == "soft_margin_triplet":
            return {"alpha": self.alpha, "authors_unmasked": self.authors_unmasked}
        if self.name == "hard_negative_triplet":
            return {"alpha": self.alpha, "k": self.k}
        return {"temperature": self.temperature, "symmetric": self.symmetric}


@dataclass(frozen=True)
class OptimSection:
    """``optim``: AdamW, optionally wrapped in (A)SAM, with gradient clipping and a warm-up + cosine schedule."""

    lr: float = 1e-4
    weight_decay: float = 0.03
    betas: tuple[float, float] = (0.9, 0.999)
    no_decay_norms_biases: bool = False  # true: norms, biases and pos_embed in a group without weight decay
    asam: bool = True
    rho: float = 2.0
    adaptive: bool = True  # ASAM (true) or plain SAM (false) when asam is on
    grad_clip: float | None = None  # max global gradient norm; null = no clipping
    warmup_steps: int = 0  # linear warm-up iterations before the cosine decay
    min_lr_factor: float = 1e-6  # floor of the schedule's multiplier


@dataclass(frozen=True)
class TrainSection:
    """``train``: epochs, batch size, seed, device and precision, loader workers, validation cadence."""

    epochs: int = 200
    batch_size: int = 32  # global batch (all ranks together), drop_last
    seed: int = 0
    precision: str = "auto"  # auto: bf16 (else fp16) on CUDA, fp32 on CPU
    device: str = "auto"
    num_workers: int = 4
    eval_batch_size: int = 64
    eval_every: int = 1  # epochs between validation passes (the last epoch is always validated)
    neighbour_group: int = 0  # > 1: batches of groups of this many neighbouring places of one world (hard negatives)
    neighbour_min_m: float = 25.0  # places of one group stand at least this far apart
    tensorboard: bool = True


@dataclass(frozen=True)
class DataSection:
    """``data``: the dataset kind and where its files are, and how validation pairs are chosen."""

    kind: str = "pairs_csv"
    root: str | None = None  # dataset root (cvusa, cvact, vigor)
    train: str | None = None  # pairs_csv: train CSV; cvusa: train splits CSV (relative to root)
    val: str | None = None  # explicit validation CSV (pairs_csv, cvusa); else val_fraction of train
    test: str | None = None  # pairs_csv / cvusa test CSV; cvact and vigor use their published test split
    val_fraction: float = 0.1
    vigor_mode: str = "same_area"
    cities: tuple[str, ...] | None = None
    generate: dict | None = None  # pairs_csv {seeds, pairs, size_m}: synthetic pairs made when data.train is missing
    # ground metres spanned by one aerial image's side; recorded in checkpoints so that `saig index build`
    # cuts chips of the same footprint (64 for the synthetic worlds' chips)
    aerial_footprint_m: float | None = None

    def __post_init__(self) -> None:
        v = self.aerial_footprint_m
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf")):
            raise ValueError(f"aerial_footprint_m must be a positive number of metres, got {v!r}")


@dataclass(frozen=True)
class TrainConfig:
    """A whole training config: one dataclass per YAML section plus the file it came from (``source``)."""

    model: ModelSection = field(default_factory=ModelSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    data: DataSection = field(default_factory=DataSection)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    source: str = "<dict>"

    def to_dict(self) -> dict[str, Any]:
        """The config as plain YAML/JSON-able values (tuples as lists), without ``source``."""
        d = dataclasses.asdict(self)
        d.pop("source")
        return _plain(d)


_SECTIONS = {"model": ModelSection, "loss": LossSection, "optim": OptimSection, "train": TrainSection,
             "data": DataSection, "augment": AugmentConfig}
_PATH_KEYS = {("model", "init"), ("data", "root"), ("data", "train"), ("data", "val"), ("data", "test")}


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML training config, apply ``key.sub=value`` overrides, validate, resolve paths."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a mapping of sections")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        section, name = key.split(".", 1)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"{path}: section {section!r} must be a mapping")
        raw[section][name] = yaml.safe_load(value)
    return config_from_dict(raw, base_dir=path.parent, source=str(path))


def config_from_dict(raw: dict[str, Any], base_dir: str | os.PathLike = ".", source: str = "<dict>") -> TrainConfig:
    """Validate a config given as a dict of sections; relative paths are resolved against ``base_dir``."""
    unknown = set(raw) - set(_SECTIONS)
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {sorted(unknown)}; known: {sorted(_SECTIONS)}")
    sections = {}
    data_kind = (raw.get("data") or {}).get("kind", "pairs_csv")
    for name, cls in _SECTIONS.items():
        values = dict(raw.get(name) or {})
        known = {f.name for f in dataclasses.fields(cls)}
        bad = set(values) - known
        if bad:
            raise ConfigError(f"{source}: unknown key(s) {sorted(bad)} in section {name!r}; known: {sorted(known)}")
        for key in list(values):
            relative_to_root = name == "data" and key in ("train", "val", "test") and data_kind != "pairs_csv"
            if (name, key) in _PATH_KEYS and values[key] is not None and not relative_to_root:
                values[key] = str((Path(base_dir) / os.path.expanduser(str(values[key]))).resolve())
            elif isinstance(values[key], list):
                values[key] = tuple(values[key])
        try:
            sections[name] = cls(**values)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{source}: section {name!r}: {e}") from None
    cfg = TrainConfig(**sections, source=source)
    _validate(cfg)
    return cfg


def _validate(cfg: TrainConfig) -> None:
    src = cfg.source
    m = cfg.model
    if m.backbone is None and m.preset not in BACKBONE_PRESETS:
        raise ConfigError(f"{src}: model.preset {m.preset!r} is unknown; choose one of {sorted(BACKBONE_PRESETS)} "
                          "or give model.backbone")
    if m.pool not in POOLS:
        raise ConfigError(f"{src}: model.pool must be one of {POOLS}, got {m.pool!r}")
    try:
        m.model_config()
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{src}: model: {e}") from None
    if cfg.loss.name not in LOSSES:
        raise ConfigError(f"{src}: loss.name must be one of {LOSSES}, got {cfg.loss.name!r}")
    t = cfg.train
    if t.epochs < 1 or t.batch_size < 2 or t.eval_every < 1:
        raise ConfigError(f"{src}: train.epochs and train.eval_every must be >= 1 and train.batch_size >= 2")
    if t.precision not in TRAIN_PRECISIONS:
        raise ConfigError(f"{src}: train.precision must be one of {TRAIN_PRECISIONS}, got {t.precision!r}")
    o = cfg.optim
    if o.lr <= 0 or o.weight_decay < 0 or o.warmup_steps < 0 or not 0 <= o.min_lr_factor <= 1:
        raise ConfigError(f"{src}: optim: lr > 0, weight_decay >= 0, warmup_steps >= 0, 0 <= min_lr_factor <= 1")
    d = cfg.data
    if d.kind not in DATA_KINDS:
        raise ConfigError(f"{src}: data.kind must be one of {DATA_KINDS}, got {d.kind!r}")
    if d.kind == "pairs_csv" and not d.train:
        raise ConfigError(f"{src}: data.train (a pairs CSV) is required for data.kind pairs_csv")
    if d.kind in ("cvusa", "cvact", "vigor") and not d.root:
        raise ConfigError(f"{src}: data.root is required for data.kind {d.kind}")
    if d.kind == "cvusa" and not d.train:
        raise ConfigError(f"{src}: data.train (e.g. splits/train-19zl.csv) is required for CVUSA")
    if m.pool == "sector" and not cfg.augment.polar:
        raise ConfigError(f"{src}: model.pool 'sector' needs augment.polar: true (aerial columns must be azimuths)")
    if cfg.loss.name.startswith("sector_") != (m.pool == "sector"):
        raise ConfigError(f"{src}: loss.name {cfg.loss.name!r} does not fit model.pool {m.pool!r} "
                          "(the sector_* losses are for pool 'sector', and pool 'sector' needs one of them)")
    if cfg.augment.polar and cfg.augment.shift_aerial == "rotate":
        raise ConfigError(f"{src}: augment.shift_aerial 'rotate' is for north-up aerial images, not polar ones")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
