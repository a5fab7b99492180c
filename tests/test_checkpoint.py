"""Checkpoints: the project format, the authors' training files, ImageNet backbones, and refusals."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from authors_reference import authors_state_dict, branch_shapes, random_branch

from saig_core import (
    CheckpointError,
    __version__,
    build_model,
    checkpoint_info,
    count_parameters,
    load_checkpoint,
    model_fingerprint,
    save_checkpoint,
)

GROUND, AERIAL = (32, 128), (64, 64)  # 2x8 and 4x4 token grids: 16 tokens each


class NotJustWeights:
    """A custom class: pickling an instance needs this code to load it again."""

    def __init__(self):
        self.payload = torch.zeros(3)


def _micro(pool="gap"):
    torch.manual_seed(0)
    return build_model("saig_micro", pool=pool, ground_size=GROUND, aerial_size=AERIAL).eval()


def _images(seed=0, n=2):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, *GROUND, generator=g) * 2 - 1, torch.rand(n, 3, *AERIAL, generator=g) * 2 - 1


def _encode(model, ground, aerial):
    with torch.no_grad():
        return model.encode_ground(ground), model.encode_aerial(aerial)


def _authors_file(path, smd=False, depth=2, prefix="", tokens=16, **extra):
    state = authors_state_dict(depth=depth, ground_tokens=tokens, aerial_tokens=tokens, smd=smd, seed=3)
    torch.save({"model": {prefix + k: v for k, v in state.items()}, "optimizer": {"state": {}, "param_groups": []},
                "epoch": 7, "best_acc": 88.5, **extra}, path)
    return state


# ---------------------------------------------------------------------------------------------- project format


@pytest.mark.parametrize("pool", ["gap", "smd"])
def test_project_format_round_trips_config_weights_and_metadata(tmp_path, pool):
    model = _micro(pool)
    path = save_checkpoint(model, tmp_path / "m.pt", note="unit test", epochs=3)
    raw = torch.load(path, weights_only=True)  # plain torch can read it safely
    assert raw["format"] == "saig-checkpoint" and raw["config"] == model.cfg.to_dict()
    meta = raw["metadata"]
    assert meta["software_version"] == __version__ and meta["note"] == "unit test" and meta["epochs"] == 3
    assert meta["weights_sha256"] == model_fingerprint(model) and len(meta["weights_sha256"]) == 64
    loaded = load_checkpoint(path)
    assert not loaded.training and loaded.cfg == model.cfg
    assert model_fingerprint(loaded) == meta["weights_sha256"]
    g, a = _images()
    for ours, theirs in zip(_encode(model, g, a), _encode(loaded, g, a), strict=True):
        torch.testing.assert_close(ours, theirs, atol=0, rtol=0)


def test_half_precision_file_keeps_the_fingerprint_of_the_loaded_model(tmp_path):
    model = _micro("smd")
    path = save_checkpoint(model, tmp_path / "half.pt", half=True)
    raw = torch.load(path, weights_only=True)
    assert raw["state_dict"]["ground.backbone.pos_embed"].dtype == torch.float16
    loaded = load_checkpoint(path)
    assert loaded.ground.backbone.pos_embed.dtype == torch.float32
    assert model_fingerprint(loaded) == raw["metadata"]["weights_sha256"] == checkpoint_info(path)["fingerprint"]
    g, a = _images()
    for ours, theirs in zip(_encode(model, g, a), _encode(loaded, g, a), strict=True):
        assert F.cosine_similarity(ours, theirs).min() > 0.999


def test_saving_replaces_the_file_atomically_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "m.pt"
    path.write_bytes(b"old")
    save_checkpoint(_micro(), path)
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]
    with pytest.raises(TypeError, match="plain values"):
        save_checkpoint(_micro(), tmp_path / "bad.pt", note=object())
    assert not (tmp_path / "bad.pt").exists()


def test_edited_weights_fail_the_recorded_checksum(tmp_path):
    path = save_checkpoint(_micro(), tmp_path / "m.pt")
    raw = torch.load(path, weights_only=True)
    raw["state_dict"]["aerial.backbone.norm.bias"] += 1.0
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(path)


def test_project_file_loads_at_another_size_by_resizing_positions(tmp_path):
    path = save_checkpoint(_micro("gap"), tmp_path / "m.pt")
    model = load_checkpoint(path, ground_size=(64, 256), aerial_size=(128, 128))
    assert model.ground.backbone.pos_embed.shape[1] == 4 * 16 and model.cfg.aerial_size == (128, 128)


# ---------------------------------------------------------------------------------------------- authors' files


def test_authors_key_layout_is_what_the_model_names():
    """Our module names produce exactly the documented authors' keys (after the branch renaming)."""
    model = build_model("saig_s", pool="smd")
    ours = {k: tuple(v.shape) for k, v in model.ground.state_dict().items()}
    documented = {k.replace("linear", "head.linear") if k.startswith("linear") else k: v
                  for k, v in branch_shapes(depth=11, num_tokens=256, smd=True).items()}
    assert ours == documented


@pytest.mark.parametrize(
    "depth, smd, preset, params",
    [(11, False, "saig_s", 18_201_600), (11, True, "saig_s", 19_256_848),
     (22, False, "saig_d", 31_228_416), (22, True, "saig_d", 32_283_664)],
)
def test_authors_checkpoints_are_recognised_from_their_keys(tmp_path, depth, smd, preset, params):
    path = tmp_path / "model_checkpoint.pth"
    g = torch.Generator().manual_seed(0)
    state = {}
    for prefix in ("model_grd.", "model_sat."):
        state.update({prefix + k: v for k, v in random_branch(depth, 256, smd, g).items()})
    torch.save({"model": state, "optimizer": {}, "epoch": 199, "best_acc": np.float64(95.37)}, path)
    model = load_checkpoint(path, ground_size=(128, 512), aerial_size=(256, 256))
    assert (model.cfg.preset, model.cfg.pool, model.cfg.backbone.depth) == (preset, "smd" if smd else "gap", depth)
    assert count_parameters(model) == params
    assert model.descriptor_dim == (3072 if smd else 384)
    torch.testing.assert_close(model.aerial.backbone.blocks[depth - 1].attn.qkv.weight,
                               state[f"model_sat.backbone.blocks.{depth - 1}.attn.qkv.weight"], atol=0, rtol=0)


def test_authors_bookkeeping_is_reported_and_numpy_scalars_load(tmp_path):
    path = tmp_path / "model_checkpoint.pth"
    _authors_file(path, smd=True, best_acc=np.float64(95.37), epoch=np.int64(199))
    info = checkpoint_info(path, ground_size=GROUND, aerial_size=AERIAL)
    assert info["kind"] == "official" and info["config"]["pool"] == "smd"
    assert info["metadata"] == {"epoch": 199, "best_acc": pytest.approx(95.37)}


def test_dataparallel_module_prefix_is_accepted(tmp_path):
    _authors_file(tmp_path / "plain.pth", smd=True)
    _authors_file(tmp_path / "ddp.pth", smd=True, prefix="module.")
    plain = load_checkpoint(tmp_path / "plain.pth", ground_size=GROUND, aerial_size=AERIAL)
    ddp = load_checkpoint(tmp_path / "ddp.pth", ground_size=GROUND, aerial_size=AERIAL)
    assert model_fingerprint(plain) == model_fingerprint(ddp)


def test_authors_gap_checkpoint_runs_at_another_grid_with_resized_positions(tmp_path):
    """256 ground tokens are the published 8x32 grid (128x512 panoramas); resized to 4x16 for 64x256."""
    path = tmp_path / "gap.pth"
    state = _authors_file(path, smd=False, tokens=256)
    model = load_checkpoint(path, ground_size=(64, 256), aerial_size=(128, 128))
    grid = state["model_grd.backbone.pos_embed"].reshape(1, 8, 32, 384).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(4, 16), mode="bicubic", align_corners=False)
    torch.testing.assert_close(model.ground.backbone.pos_embed, expected.permute(0, 2, 3, 1).reshape(1, 64, 384))


def test_an_unknown_ground_grid_is_not_guessed(tmp_path):
    path = tmp_path / "gap.pth"
    _authors_file(path, smd=False)  # 16 ground tokens: 2x8? 4x4? unknowable
    with pytest.raises(CheckpointError, match=r"ground pos_embed has 16 tokens.*image size it was trained at"):
        load_checkpoint(path, aerial_size=AERIAL)


def test_authors_smd_checkpoint_refuses_another_grid(tmp_path):
    path = tmp_path / "smd.pth"
    _authors_file(path, smd=True, tokens=256)
    message = r"ground SMD head was trained for 256 tokens and cannot run at a 4x16 token grid"
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path, ground_size=(64, 256))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("model_sat.backbone.blocks.1.attn.proj.bias"),
         r"missing keys: model_sat\.backbone\.blocks\.1\.attn\.proj\.bias"),
        (lambda s: s.update({"model_grd.backbone.extra.weight": torch.zeros(2)}),
         r"unexpected keys: model_grd\.backbone\.extra\.weight"),
        (lambda s: s.update({"model_grd.backbone.blocks.0.attn.qkv.weight": torch.zeros(1152, 380)}),
         r"mis-shaped keys: model_grd\.backbone\.blocks\.0\.attn\.qkv\.weight: file \(1152, 380\)"),
        (lambda s: s.update({"model_sat.linear3.weight": torch.zeros(4, 16)}),
         r"mis-shaped keys: model_sat\.linear3\.weight"),
    ],
    ids=["missing", "unexpected", "misshaped", "misshaped-head"],
)
def test_keys_that_do_not_fit_are_named(tmp_path, edit, message):
    state = authors_state_dict(depth=2, ground_tokens=16, aerial_tokens=16, smd=True, seed=1)
    edit(state)
    path = tmp_path / "broken.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match=message) as err:
        load_checkpoint(path, ground_size=GROUND, aerial_size=AERIAL)
    assert str(path) in str(err.value)


# ---------------------------------------------------------------------------------------------- ImageNet backbones


def test_imagenet_backbone_initialises_both_branches_with_bicubic_positions(tmp_path):
    g = torch.Generator().manual_seed(5)
    backbone = {k[len("backbone."):]: v for k, v in random_branch(2, 196, False, g).items()}
    backbone["head.weight"], backbone["head.bias"] = torch.randn(1000, 384), torch.randn(1000)
    path = tmp_path / "saig_s_imagenet.pth"
    torch.save({"state_dict": backbone}, path)
    model = load_checkpoint(path, ground_size=GROUND, aerial_size=AERIAL)
    grid = backbone["pos_embed"].reshape(1, 14, 14, 384).permute(0, 3, 1, 2)
    for branch, (rows, cols) in ((model.ground, (2, 8)), (model.aerial, (4, 4))):
        expected = F.interpolate(grid, size=(rows, cols), mode="bicubic", align_corners=False)
        torch.testing.assert_close(branch.backbone.pos_embed, expected.permute(0, 2, 3, 1).reshape(1, -1, 384))
        torch.testing.assert_close(branch.backbone.blocks[1].attn.proj.weight, backbone["blocks.1.attn.proj.weight"])
        torch.testing.assert_close(branch.backbone.patch_embed.conv_stem[16].running_var,
                                   backbone["patch_embed.conv_stem.16.running_var"])
    smd = load_checkpoint(path, ground_size=GROUND, aerial_size=AERIAL, pool="smd")
    assert smd.descriptor_dim == 3072


# ---------------------------------------------------------------------------------------------- refusals


def test_a_pickle_that_needs_code_is_refused_naming_the_class(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": NotJustWeights()}, path)
    with pytest.raises(CheckpointError, match=r"refused: .*pickled Python code.*NotJustWeights.*weights_only=True"):
        load_checkpoint(path)


def test_a_truncated_file_is_refused(tmp_path):
    good = save_checkpoint(_micro(), tmp_path / "m.pt").read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(good[: len(good) // 2])
    message = r"truncated\.pt: not a readable PyTorch checkpoint \(truncated or corrupt"
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "content, message",
    [
        ({"weights": torch.zeros(3)}, r"not a SAIG checkpoint .*top-level keys: \['weights'\]"),
        ([torch.zeros(3)], "expected a dict checkpoint, found a list"),
        ({"model": {"model_grd.backbone.pos_embed": "not a tensor"}}, "not tensors"),
        (b"this is a text file, not a checkpoint\n", r"not a PyTorch checkpoint \(it is a text file\)"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(64),
         r"wrong\.pth: not a PyTorch checkpoint \(it is a JPEG image\)"),
        (b"", "not a PyTorch checkpoint -- an empty file"),
    ],
    ids=["other-dict", "list", "non-tensor", "text", "jpeg", "empty"],
)
def test_files_of_the_wrong_kind_are_refused(tmp_path, content, message):
    path = tmp_path / "wrong.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pt: no such checkpoint file"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match=r"is a folder, not a checkpoint file"):
        load_checkpoint(tmp_path)
