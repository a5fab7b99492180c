"""The trainer's contracts: exact resume, DDP on 2 gloo processes == 1 process, schedule, param groups."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from crossview_fixtures import write_pairs

from saig_core import load_checkpoint
from saig_core.training.config import ConfigError, config_from_dict, load_config
from saig_core.training.sam import SAM
from saig_core.training.schedule import CosineSchedule
from saig_core.training.trainer import build_optimizer, build_training_model, epoch_batches, train

REPO = Path(__file__).resolve().parents[1]


def _cfg_dict(data_csv: Path, **sections) -> dict:
    cfg = {
        "model": {"preset": "saig_micro", "pool": "smd", "ground_size": [32, 128], "aerial_size": [64, 64]},
        "loss": {"name": "soft_margin_triplet"},
        "optim": {"lr": 5e-4, "asam": True, "rho": 0.5, "grad_clip": 1.0, "warmup_steps": 2,
                  "no_decay_norms_biases": True},
        "train": {"epochs": 3, "batch_size": 8, "device": "cpu", "num_workers": 0, "eval_batch_size": 32,
                  "tensorboard": False, "seed": 7},
        "data": {"kind": "pairs_csv", "train": str(data_csv), "val_fraction": 0.25},
        "augment": {"shift": True, "jitter": 0.2},
    }
    for name, values in sections.items():
        cfg[name].update(values)
    return cfg


@pytest.fixture(scope="module")
def pairs_csv(tmp_path_factory) -> Path:
    return write_pairs(tmp_path_factory.mktemp("pairs"), 32, seed=11)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def test_interrupted_then_resumed_run_equals_the_uninterrupted_run(tmp_path, pairs_csv):
    torch.set_num_threads(1)
    cfg = config_from_dict(_cfg_dict(pairs_csv))
    full = train(cfg, tmp_path / "full")
    assert train(cfg, tmp_path / "cut", stop_after_epoch=1) is None
    assert (tmp_path / "cut" / "best.pt").read_bytes() != b""
    torch.manual_seed(12345)  # a resumed process starts from other RNG states: they must be restored
    resumed = train(cfg, tmp_path / "cut", resume=True)
    a, b = _weights(tmp_path / "full" / "last.pt"), _weights(tmp_path / "cut" / "last.pt")
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k
    assert resumed["final"] == pytest.approx(full["final"]) and resumed["best_epoch"] == full["best_epoch"]
    rows_full = (tmp_path / "full" / "metrics.csv").read_text().splitlines()
    rows_cut = (tmp_path / "cut" / "metrics.csv").read_text().splitlines()
    assert len(rows_full) == len(rows_cut) == 4
    assert [r.split(",")[:4] for r in rows_full] == [r.split(",")[:4] for r in rows_cut]  # epoch, step, loss, lr


def test_resume_refuses_a_changed_config(tmp_path, pairs_csv):
    cfg = config_from_dict(_cfg_dict(pairs_csv, train={"epochs": 2}))
    train(cfg, tmp_path / "run", stop_after_epoch=1)
    changed = config_from_dict(_cfg_dict(pairs_csv, train={"epochs": 2}, optim={"lr": 1e-2}))
    with pytest.raises(Exception, match="optim"):
        train(changed, tmp_path / "run", resume=True)


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_at_the_same_global_batch(tmp_path, pairs_csv):
    cfg = _cfg_dict(pairs_csv, train={"epochs": 2}, data={"val_fraction": 0.22})  # 7 val pairs: uneven shards
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("WORLD_SIZE", None)
    one = subprocess.run([sys.executable, "-m", "saig_core", "train", "--config", str(config), "--out",
                          str(tmp_path / "one")], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "saig_core", "train", "--config", str(config), "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert two.returncode == 0, two.stderr[-3000:]
    r1 = json.loads(one.stdout.strip().splitlines()[-1])
    lines = [line for line in two.stdout.strip().splitlines() if line.startswith("{")]
    assert len(lines) == 1, "only rank 0 prints the report"
    r2 = json.loads(lines[0])
    a, b = _weights(tmp_path / "one" / "last.pt"), _weights(tmp_path / "two" / "last.pt")
    # A conv bias right before BatchNorm has no effect (BN subtracts the batch mean): its gradient is
    # rounding noise, which Adam amplifies, and BN's running mean absorbs it. Those pairs are compared
    # through the models' outputs below; every other tensor must agree closely.
    no_effect = {k for k in a if k.endswith(".bias") and k.replace(".bias", ".weight") in a
                 and a[k.replace(".bias", ".weight")].ndim == 4
                 and k.rsplit(".", 2)[0] + f".{int(k.rsplit('.', 2)[1]) + 1}.running_mean" in a}
    no_effect |= {k for k in a if k.endswith("running_mean")}
    assert len(no_effect) > 4
    for k in set(a) - no_effect:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5, rtol=1e-4), k
    m1, m2 = load_checkpoint(tmp_path / "one" / "last.pt"), load_checkpoint(tmp_path / "two" / "last.pt")
    x = torch.rand(4, 3, 32, 128, generator=torch.Generator().manual_seed(0)) * 2 - 1
    y = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(m1.encode_ground(x), m2.encode_ground(x), atol=1e-4)
        assert torch.allclose(m1.encode_aerial(y), m2.encode_aerial(y), atol=1e-4)
    assert r2["final"] == pytest.approx(r1["final"]) and r2["gallery_size"] == r1["gallery_size"] == 7
    loss1 = [row.split(",")[2] for row in (tmp_path / "one" / "metrics.csv").read_text().splitlines()[1:]]
    loss2 = [row.split(",")[2] for row in (tmp_path / "two" / "metrics.csv").read_text().splitlines()[1:]]
    assert [float(x) for x in loss1] == pytest.approx([float(x) for x in loss2], rel=1e-4)


def test_cosine_schedule_warms_up_decays_per_iteration_and_is_floored():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    s = CosineSchedule(opt, total_steps=10, warmup_steps=2, min_factor=1e-6)
    lrs = [s.lr]
    for _ in range(12):
        s.step()
        lrs.append(s.lr)
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert lrs[2] == pytest.approx(1.0) and lrs[6] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert lrs[10] == pytest.approx(1e-6) and lrs[12] == pytest.approx(1e-6)
    state = s.state_dict()
    s2 = CosineSchedule(torch.optim.AdamW([p], lr=1.0), total_steps=10, warmup_steps=2)
    s2.load_state_dict({**state, "step_count": 6})
    assert s2.lr == pytest.approx(lrs[6])


def test_optimizer_is_asam_over_adamw_with_param_groups(pairs_csv):
    cfg = config_from_dict(_cfg_dict(pairs_csv))
    model = build_training_model(cfg)
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, SAM) and isinstance(opt.base_optimizer, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.03 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and any(p.ndim == 1 for p in no_decay["params"])
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(p.numel() for p in model.parameters())
    plain = build_optimizer(model, config_from_dict(_cfg_dict(pairs_csv, optim={"asam": False})))
    assert type(plain) is torch.optim.AdamW


def test_global_batches_are_a_seeded_permutation_with_drop_last():
    batches = epoch_batches(21, 4, seed=3, epoch=0)
    assert len(batches) == 5 and all(len(b) == 4 for b in batches) and len({i for b in batches for i in b}) == 20
    assert batches == epoch_batches(21, 4, seed=3, epoch=0) != epoch_batches(21, 4, seed=3, epoch=1)


def test_model_init_from_a_checkpoint_and_mismatch_is_refused(tmp_path, pairs_csv):
    from saig_core import build_model, save_checkpoint

    src = build_model("saig_micro", "smd", (32, 128), (64, 64))
    save_checkpoint(src, tmp_path / "init.pt")
    cfg = config_from_dict(_cfg_dict(pairs_csv, model={"init": str(tmp_path / "init.pt")}))
    model = build_training_model(cfg)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), src.state_dict().values(), strict=True))
    bad = config_from_dict(_cfg_dict(pairs_csv, model={"init": str(tmp_path / "init.pt"), "pool": "gap"}))
    with pytest.raises(ConfigError, match="differs"):
        build_training_model(bad)


def test_shipped_configs_all_load_and_validate():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        cfg = load_config(path)
        cfg.model.model_config()


def _micro_step(precision: str, asam: bool, scaler=None):
    from saig_core import build_model
    from saig_core.training.losses import build_loss
    from saig_core.training.trainer import TrainStep

    torch.manual_seed(0)
    model = build_model("saig_micro", "gap", (32, 128), (64, 64)).train()
    opt = (SAM(model.parameters(), torch.optim.AdamW, lr=1e-3) if asam
           else torch.optim.AdamW(model.parameters(), lr=1e-3))
    step = TrainStep(model, model, opt, build_loss("soft_margin_triplet"), torch.device("cpu"), precision,
                     grad_clip=1.0, scaler=scaler)
    g = torch.rand(4, 3, 32, 128, generator=torch.Generator().manual_seed(1)) * 2 - 1
    a = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    return model, step, g, a


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_asam_step_runs_under_autocast_and_lowers_the_loss(precision):
    model, step, g, a = _micro_step(precision, asam=True,
                                    scaler=torch.amp.GradScaler("cpu", enabled=precision == "fp16"))
    losses = [step(g, a) for _ in range(4)]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


def test_fp16_overflow_skips_the_asam_step_and_lowers_the_loss_scale():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)  # fp16 gradients overflow at this scale
    model, step, g, a = _micro_step("fp16", asam=True, scaler=scaler)
    before = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    step(g, a)
    assert scaler.get_scale() < 2.0**40
    params = dict(model.named_parameters())
    assert all(torch.equal(params[k].detach(), v) for k, v in before.items() if k in params)


def test_model_init_from_an_imagenet_backbone_file_loads_both_branches(tmp_path, pairs_csv):
    from saig_core.model.backbone import SAIGBackbone
    from saig_core.model.config import BACKBONE_PRESETS

    torch.manual_seed(0)
    backbone = SAIGBackbone(BACKBONE_PRESETS["saig_s"], (14, 14)).state_dict()
    torch.save({"state_dict": {**backbone, "head.weight": torch.zeros(1000, 384)}}, tmp_path / "imagenet.pth")
    cfg = config_from_dict(_cfg_dict(pairs_csv, model={"preset": "saig_s", "pool": "gap",
                                                       "init": str(tmp_path / "imagenet.pth")}))
    model = build_training_model(cfg)
    assert model.training
    for branch in (model.ground, model.aerial):
        state = branch.backbone.state_dict()
        assert torch.equal(state["blocks.10.attn.qkv.weight"], backbone["blocks.10.attn.qkv.weight"])
        assert state["pos_embed"].shape == (1, branch.backbone.grid[0] * branch.backbone.grid[1], 384)


@pytest.mark.parametrize("loss,augment", [
    ({"name": "hard_negative_triplet", "k": 2}, {"polar": True, "shift": True}),
    ({"name": "info_nce", "symmetric": False}, {"fov_deg": [90, 180], "fov_placement": "canvas"}),
])
def test_every_loss_and_augmentation_path_trains_through_the_trainer(tmp_path, pairs_csv, loss, augment):
    model = {"ground_size": [32, 128], "aerial_size": [16, 64] if augment.get("polar") else [64, 64]}
    cfg = config_from_dict(_cfg_dict(pairs_csv, loss=loss, augment=augment, model=model,
                                     train={"epochs": 1}, optim={"asam": False}, data={"aerial_footprint_m": 64}))
    report = train(cfg, tmp_path / "run")
    assert report["best_epoch"] == 1 and 0.0 <= report["best"]["R@1"] <= 1.0
    meta = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["metadata"]
    assert meta["loss"] == loss["name"] and meta["aerial_footprint_m"] == 64
    assert meta["ground_input"]["fov_deg"] == [float(f) for f in augment.get("fov_deg", [])]
