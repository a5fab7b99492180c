"""ONNX export: each branch as image -> L2-normalised descriptor, matching PyTorch in ONNX Runtime."""
import json

import pytest
import torch

from saig_core import build_model, model_fingerprint
from saig_core.weights.onnx_export import export_onnx, onnx_session, verify_export

ort = pytest.importorskip("onnxruntime", reason="the 'onnx' extra is not installed")

GROUND, AERIAL = (32, 128), (64, 64)


@pytest.fixture(scope="module", params=["gap", "smd"])
def exported(request, tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("saig_micro", pool=request.param, ground_size=GROUND, aerial_size=AERIAL).eval()
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.2, 0.2)  # non-trivial statistics: BN folding must be exact
        bn.running_var.uniform_(0.5, 2.0)
    out = tmp_path_factory.mktemp("onnx")
    return model, out, export_onnx(model, out)


@pytest.mark.parametrize("branch, size", [("ground", GROUND), ("aerial", AERIAL)])
@pytest.mark.parametrize("batch", [1, 5])
def test_onnx_runtime_gives_the_torch_descriptors_at_any_batch_size(exported, branch, size, batch):
    model, out, _ = exported
    images = torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(batch)) * 2 - 1
    with torch.no_grad():
        expected = getattr(model, f"encode_{branch}")(images)
    got = onnx_session(out / f"{branch}.onnx").run(["descriptor"], {"image": images.numpy()})[0]
    assert got.shape == (batch, model.descriptor_dim) and got.dtype.name == "float32"
    torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-5, rtol=0)


def test_manifest_describes_the_graphs_and_the_source_weights(exported):
    model, out, manifest = exported
    on_disk = json.loads((out / "saig-onnx.json").read_text())
    assert on_disk == manifest
    assert manifest["fingerprint"] == model_fingerprint(model)
    assert manifest["branches"]["ground"]["input"]["shape"] == ["batch", 3, *GROUND]
    assert manifest["branches"]["aerial"]["output"]["shape"] == ["batch", model.descriptor_dim]
    assert sorted(p.name for p in out.iterdir()) == ["aerial.onnx", "ground.onnx", "saig-onnx.json"]
    session = onnx_session(out / "aerial.onnx")
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert session.get_inputs()[0].shape[0] == "batch"  # dynamic batch axis


def test_export_leaves_the_source_model_untouched(exported):
    model, out, manifest = exported
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert verify_export(model, out) < 1e-5
