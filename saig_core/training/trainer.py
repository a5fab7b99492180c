"""Training loop behind ``saig train``: one process or many under ``torchrun``, resumable exactly.

A run directory holds:

* ``last.pt`` / ``best.pt`` — the model in the project format (:func:`save_checkpoint`), ``best``
  chosen on the validation split (R@1, then R@1 %, then R@5), never on the test split;
* ``train_state.pt`` — everything ``--resume`` needs: weights, optimizer (incl. ASAM), schedule,
  grad scaler, completed epochs, best so far, history and RNG states (written each epoch);
* ``metrics.csv`` (one row per epoch), ``tb/`` (TensorBoard), ``config.yaml`` (the resolved config).

Batches are global: each epoch draws a permutation seeded by (seed, epoch), cuts it into global
batches of ``train.batch_size`` (drop_last), and rank r takes the r-th slice of each; augmentation
randomness is seeded per (seed, epoch, sample). So results do not depend on the number of
processes or data-loader workers, and a resumed run continues the uninterrupted one.
"""
from __future__ import annotations

import csv
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from saig_core.data.datasets import (
    CrossViewSplit,
    PairDataset,
    encode_split,
    load_cvact,
    load_cvusa,
    load_pairs_csv,
    load_vigor,
)
from saig_core.data.transforms import PairTransform
from saig_core.errors import SaigError
from saig_core.model.saig_model import SAIGModel
from saig_core.runtime.device import autocast, describe_device
from saig_core.runtime.progress import Reporter
from saig_core.training import distributed as D
from saig_core.training.batches import neighbour_batches
from saig_core.training.config import ConfigError, TrainConfig
from saig_core.training.evaluate import retrieval_metrics
from saig_core.training.losses import build_loss
from saig_core.training.sam import SAM
from saig_core.training.schedule import CosineSchedule
from saig_core.weights.checkpoint import atomic_torch_save, load_checkpoint, save_checkpoint

STATE_FILE = "train_state.pt"
_RESUME_KEYS = ("model", "loss", "optim", "data", "augment")


class RunError(SaigError):
    """A run directory that cannot be used as asked (existing run, missing state, changed config)."""


@dataclass
class Splits:
    """The data of one run: train, validation (for model selection) and optional test split."""

    train: CrossViewSplit
    val: CrossViewSplit
    test: CrossViewSplit | None


def load_splits(cfg: TrainConfig) -> Splits:
    """Train, validation (explicit, or ``val_fraction`` of train held out by ``seed``) and test splits."""
    d = cfg.data
    val = None
    if d.kind == "pairs_csv":
        train = load_pairs_csv(_required(d.train, "data.train", cfg), "train")
        val = load_pairs_csv(d.val, "val") if d.val else None
        test = load_pairs_csv(d.test, "test") if d.test else None
    elif d.kind == "cvusa":
        root = _required(d.root, "data.root", cfg)
        train = load_cvusa(root, _required(d.train, "data.train", cfg))
        val = load_cvusa(root, d.val) if d.val else None
        test = load_cvusa(root, d.test) if d.test else None
    elif d.kind == "cvact":
        root = _required(d.root, "data.root", cfg)
        train, test = load_cvact(root, "train"), load_cvact(root, "val")
    else:
        root = _required(d.root, "data.root", cfg)
        cities = list(d.cities) if d.cities else None
        train = load_vigor(root, d.vigor_mode, "train", cities)
        test = load_vigor(root, d.vigor_mode, "test", cities)
    if val is None:
        train, val = train.split_off(d.val_fraction, cfg.train.seed)
    return Splits(train, val, test)


def _required(value: str | None, key: str, cfg: TrainConfig) -> str:
    """``value`` of a data key the config validation requires for this data kind (``None``: not validated)."""
    if value is None:
        raise ConfigError(f"{cfg.source}: {key} is required for data.kind {cfg.data.kind}")
    return value


def build_training_model(cfg: TrainConfig) -> SAIGModel:
    """The configured model, initialised from ``model.init`` when given (its architecture must match)."""
    mcfg = cfg.model.model_config()
    if not cfg.model.init:
        return SAIGModel(mcfg)
    model = load_checkpoint(cfg.model.init, ground_size=mcfg.ground_size, aerial_size=mcfg.aerial_size,
                            pool=mcfg.pool)
    if model.cfg.backbone != mcfg.backbone or model.cfg.pool != mcfg.pool:
        raise ConfigError(f"{cfg.source}: model.init {cfg.model.init} holds a {model.cfg.preset} "
                          f"{model.cfg.pool} model, which differs from the configured model section")
    return model.train()


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (optionally without weight decay on norms, biases and positions), wrapped in (A)SAM if asked."""
    o = cfg.optim
    if o.no_decay_norms_biases:
        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        for name, p in model.named_parameters():
            (no_decay if p.ndim <= 1 or name.endswith("pos_embed") else decay).append(p)
        groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    else:
        groups = [{"params": list(model.parameters()), "weight_decay": o.weight_decay}]
    kwargs: dict[str, Any] = dict(lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)  # for AdamW
    if o.asam:
        return SAM(groups, torch.optim.AdamW, rho=o.rho, adaptive=o.adaptive, **kwargs)
    return torch.optim.AdamW(groups, **kwargs)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Global batches of one epoch: a (seed, epoch)-seeded permutation cut into full batches."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
    return [order[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


def _better(a: dict[str, float], b: dict[str, float] | None) -> bool:
    key = lambda m: (m["R@1"], m["R@1%"], m.get("R@5", 0.0))  # noqa: E731
    return b is None or key(a) > key(b)


@dataclass
class RunState:
    """Progress of a run that ``--resume`` restores: epochs and steps done, best validation so far, history."""

    epoch: int = 0  # epochs completed
    step: int = 0
    best: dict[str, float] | None = None
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


class TrainStep:
    """One optimizer step (plain or (A)SAM, AMP, clipping) on this rank's slice of a global batch.

    Under DDP every rank computes the loss of the whole gathered batch; DDP averages gradients over
    ranks, so the loss is scaled by the world size before backward.
    """

    def __init__(self, net: torch.nn.Module, model: SAIGModel, optimizer: torch.optim.Optimizer, loss_fn,
                 device: torch.device, precision: str = "fp32", grad_clip: float | None = None,
                 scaler: torch.amp.GradScaler | None = None, ctx: D.DistContext | None = None) -> None:
        self.net, self.model, self.optimizer, self.loss_fn = net, model, optimizer, loss_fn
        self.device, self.precision, self.grad_clip = device, precision, grad_clip
        self.scaler = scaler or torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.ctx = ctx or D.DistContext(0, 1, 0, device)

    def loss(self, g: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """The loss of the global batch (every rank's descriptors gathered) for this rank's images."""
        with autocast(self.device, self.precision):
            zg, za = self.net(g, a)
        zg, za = D.gather_with_grad(zg.float(), self.ctx), D.gather_with_grad(za.float(), self.ctx)
        return self.loss_fn(zg, za)

    def __call__(self, g: torch.Tensor, a: torch.Tensor) -> float:
        """Returns the global-batch loss at the current weights."""
        world, opt = self.ctx.world, self.optimizer
        loss = self.loss(g, a)
        self.scaler.scale(loss * world).backward()
        if isinstance(opt, SAM):
            opt.first_step(zero_grad=True)
            self.scaler.scale(self.loss(g, a) * world).backward()
            opt.restore()
            base = opt.base_optimizer
        else:
            base = opt
        if self.grad_clip:
            self.scaler.unscale_(base)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(base)
        self.scaler.update()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())


class Trainer:
    """Owns the model, optimizer, schedule and data of one run; :meth:`fit` trains and reports."""

    def __init__(self, cfg: TrainConfig, out_dir: str | os.PathLike, reporter: Reporter | None = None,
                 resume: bool = False) -> None:
        self.cfg, self.out = cfg, Path(out_dir)
        try:
            self.ctx = D.init_distributed(cfg.train.device)
        except RuntimeError as e:  # e.g. device "cuda" without a GPU
            raise ConfigError(f"{cfg.source}: train.device {cfg.train.device!r}: {e}") from None
        self.reporter = reporter if (reporter is not None and self.ctx.main) else Reporter("none")
        self.device = self.ctx.device
        t = cfg.train
        if t.batch_size % self.ctx.world:
            raise ConfigError(f"{cfg.source}: train.batch_size {t.batch_size} is not divisible by the "
                              f"{self.ctx.world} processes")
        self._check_run_dir(resume)
        _seed_everything(t.seed)
        self.splits = load_splits(cfg)
        self.steps_per_epoch = len(self.splits.train) // t.batch_size
        if self.steps_per_epoch < 1:
            raise ConfigError(f"{cfg.source}: {len(self.splits.train)} training pairs are fewer than one batch "
                              f"of {t.batch_size}")
        self.model = build_training_model(cfg).to(self.device)
        self.transform = PairTransform(self.model.cfg.ground_size, self.model.cfg.aerial_size, cfg.augment)
        self.precision = _precision(t.precision, self.device)
        D.sync_batchnorm(self.model, self.ctx)
        self.net: torch.nn.Module = self.model  # DDP-wrapped under torchrun
        if self.ctx.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.optimizer = build_optimizer(self.model, cfg)
        self.schedule = CosineSchedule(self.optimizer, t.epochs * self.steps_per_epoch, cfg.optim.warmup_steps,
                                       cfg.optim.min_lr_factor)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.step = TrainStep(self.net, self.model, self.optimizer,
                              build_loss(cfg.loss.name, **cfg.loss.kwargs(self.model.cfg.sectors)),
                              self.device, self.precision, cfg.optim.grad_clip, self.scaler, self.ctx)
        self.state = RunState()
        if resume:
            self._load_state()
        self.dataset = PairDataset(self.splits.train, self.transform, seed=t.seed, train=True)
        self.tb = None

    # ----------------------------------------------------------------------------------------------
    # run directory and state

    def _check_run_dir(self, resume: bool) -> None:
        state = self.out / STATE_FILE
        if resume and not state.is_file():
            raise RunError(f"{state}: nothing to resume (no training state in {self.out})")
        if not resume and state.is_file():
            raise RunError(f"{self.out} already holds a run; pass --resume to continue it or choose another --out")

    def _load_state(self) -> None:
        path = self.out / STATE_FILE
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch.load raises many types for a truncated or foreign file
            raise RunError(f"{path}: unreadable training state ({e})") from None
        saved, now = raw["config"], self.cfg.to_dict()
        changed = [k for k in _RESUME_KEYS if saved.get(k) != now.get(k)]
        changed += [f"train.{k}" for k in ("epochs", "batch_size", "seed") if saved["train"].get(k) != now["train"][k]]
        if changed:
            raise RunError(f"{path}: the config differs from the run's in {', '.join(changed)}; resume with the "
                           "same config (or start a new run)")
        self.model.load_state_dict(raw["model"])
        self.optimizer.load_state_dict(raw["optimizer"])
        self.schedule.load_state_dict(raw["schedule"])
        self.scaler.load_state_dict(raw["scaler"])
        self.state = RunState(**raw["run"])
        _set_rng_state(raw["rng"])

    def _save_state(self) -> None:
        payload = {
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "run": self.state.__dict__,
            "rng": _rng_state(),
        }
        atomic_torch_save(payload, self.out / STATE_FILE)

    # ----------------------------------------------------------------------------------------------
    # steps

    def train_step(self, g: torch.Tensor, a: torch.Tensor) -> float:
        """One optimizer step on a batch, then one schedule step; returns the global-batch loss."""
        loss = self.step(g, a)
        self.schedule.step()
        return loss

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        """Random batches, or batches of neighbouring places (``train.neighbour_group``) when positions are known."""
        t, split = self.cfg.train, self.splits.train
        if t.neighbour_group > 1 and split.latlon:
            return neighbour_batches(split.latlon, split.world, t.batch_size, t.neighbour_group, t.seed, epoch,
                                     t.neighbour_min_m)
        return epoch_batches(len(self.dataset), t.batch_size, t.seed, epoch)

    def evaluate(self, split: CrossViewSplit) -> dict[str, float]:
        """Retrieval metrics of ``split`` (queries and gallery sharded over ranks, gathered, identical everywhere)."""
        t = self.cfg.train
        self.model.eval()
        q, g = encode_split(self.model, split, self.transform, t.eval_batch_size, self.device,
                            num_workers=t.num_workers, seed=t.seed, precision=self.precision,
                            shard=(self.ctx.rank, self.ctx.world))
        q = D.gather_rows(q, len(split.ground), self.ctx)
        g = D.gather_rows(g, len(split.aerial), self.ctx)
        semi = torch.tensor(split.semi_positives) if split.semi_positives else None
        metrics = retrieval_metrics(q, g, positive=split.positive, semi_positives=semi)
        self.model.train()
        return metrics

    # ----------------------------------------------------------------------------------------------
    # the loop

    def fit(self, stop_after_epoch: int | None = None) -> dict[str, Any] | None:
        """Train the remaining epochs; returns the final report (None when stopped early on purpose)."""
        t, rep = self.cfg.train, self.reporter
        if self.ctx.main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
            self.tb = _tensorboard(self.out / "tb") if t.tensorboard else None
            rep.log(f"training {self.model.cfg.preset} {self.model.cfg.pool} on {describe_device(self.device)}"
                    f" x{self.ctx.world}, precision {self.precision}: {len(self.splits.train)} train / "
                    f"{len(self.splits.val)} val pairs, {self.steps_per_epoch} steps per epoch")
        self.model.train()
        local = t.batch_size // self.ctx.world
        while self.state.epoch < t.epochs:
            epoch = self.state.epoch
            self.dataset.set_epoch(epoch)
            batches = [b[self.ctx.rank * local:(self.ctx.rank + 1) * local] for b in self._epoch_batches(epoch)]
            loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=batches, num_workers=t.num_workers,
                                                 pin_memory=self.device.type == "cuda")
            started, losses = time.monotonic(), []
            with rep.task(f"epoch {epoch + 1}/{t.epochs}", total=len(batches)) as task:
                for g, a, _ in loader:
                    loss = self.train_step(g.to(self.device, non_blocking=True), a.to(self.device, non_blocking=True))
                    if not math.isfinite(loss):
                        raise RunError(f"epoch {epoch + 1}: the loss became {loss}; lower optim.lr or use fp32/bf16")
                    losses.append(loss)
                    self.state.step += 1
                    if self.tb is not None:
                        self.tb.add_scalar("train/loss", loss, self.state.step)
                        self.tb.add_scalar("train/lr", self.schedule.lr, self.state.step)
                    task.update(1)
            self.state.epoch = epoch + 1
            row: dict[str, Any] = {"epoch": epoch + 1, "step": self.state.step,
                                   "train_loss": sum(losses) / len(losses), "lr": self.schedule.lr,
                                   "seconds": round(time.monotonic() - started, 3)}
            if (epoch + 1) % t.eval_every == 0 or epoch + 1 == t.epochs:
                metrics = self.evaluate(self.splits.val)
                row.update({f"val_{k}": v for k, v in metrics.items()})
                if _better(metrics, self.state.best):
                    self.state.best, self.state.best_epoch = metrics, epoch + 1
                    if self.ctx.main:
                        self._save_model("best.pt", metrics)
            self.state.history.append(row)
            if self.ctx.main:
                self._save_model("last.pt", _val_of(row))
                self._save_state()
                self._write_csv()
                if self.tb is not None:
                    for k, v in row.items():
                        if k.startswith("val_"):
                            self.tb.add_scalar(f"val/{k[4:]}", v, epoch + 1)
                    self.tb.flush()
                rep.log(_row_text(row))
            D.barrier(self.ctx)
            if stop_after_epoch is not None and self.state.epoch >= stop_after_epoch and self.state.epoch < t.epochs:
                rep.log(f"stopped after epoch {self.state.epoch} as asked; continue with --resume")
                return None
        return self._report()

    def _report(self) -> dict[str, Any]:
        last_val = next(_val_of(r) for r in reversed(self.state.history) if "val_R@1" in r)
        report: dict[str, Any] = {"final": last_val, "best": self.state.best, "best_epoch": self.state.best_epoch,
                                  "gallery_size": len(self.splits.val.aerial), "selected_on": "val"}
        if self.splits.test is not None:
            best = torch.load(self.out / "best.pt", map_location="cpu", weights_only=True) if self.ctx.main else None
            state = D.broadcast_object(best["state_dict"] if best else None, self.ctx)
            self.model.load_state_dict(state)
            report["test"] = self.evaluate(self.splits.test)
            report["test_gallery_size"] = len(self.splits.test.aerial)
        report["run_dir"] = str(self.out)
        if self.tb is not None:
            self.tb.close()
        return report

    def _save_model(self, name: str, metrics: dict[str, float]) -> None:
        save_checkpoint(self.model, self.out / name, epoch=self.state.epoch, step=self.state.step,
                        val_metrics=metrics, selected_on="val", loss=self.cfg.loss.name,
                        ground_input=self.cfg.augment.ground_input(),
                        aerial_footprint_m=self.cfg.data.aerial_footprint_m, train_config=self.cfg.to_dict())

    def _write_csv(self) -> None:
        keys: list[str] = []
        for row in self.state.history:
            keys += [k for k in row if k not in keys]
        tmp = self.out / f".metrics.csv.{os.getpid()}.tmp"
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.state.history)
        os.replace(tmp, self.out / "metrics.csv")

    def close(self) -> None:
        """Leave the process group (under ``torchrun``)."""
        D.shutdown(self.ctx)


def train(cfg: TrainConfig, out_dir: str | os.PathLike, reporter: Reporter | None = None, resume: bool = False,
          stop_after_epoch: int | None = None) -> dict[str, Any] | None:
    """Train per ``cfg`` into ``out_dir``; the report dict (None when stopped by ``stop_after_epoch``)."""
    trainer = Trainer(cfg, out_dir, reporter, resume=resume)
    try:
        report = trainer.fit(stop_after_epoch)
    finally:
        trainer.close()
    return report if trainer.ctx.main else None


# --------------------------------------------------------------------------------------------------
# helpers


def _val_of(row: dict[str, Any]) -> dict[str, float]:
    return {k[4:]: v for k, v in row.items() if k.startswith("val_")}


def _row_text(row: dict[str, Any]) -> str:
    val = " ".join(f"{k[4:]} {v:.3f}" for k, v in row.items() if k.startswith("val_"))
    return f"epoch {row['epoch']}: loss {row['train_loss']:.4f}, lr {row['lr']:.2e}, {row['seconds']:.1f} s  {val}"


def _precision(name: str, device: torch.device) -> str:
    if name == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return name


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    assert isinstance(np_state, tuple)  # the legacy global generator is MT19937: its state is a tuple
    return {
        "python": list(random.getstate()[1]) + [random.getstate()[0]],
        "python_gauss": random.getstate()[2],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    version = state["python"][-1]
    random.setstate((version, tuple(state["python"][:-1]), state["python_gauss"]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tensorboard(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(log_dir))
