"""ONNX export of the two branches, for ONNX Runtime and other non-PyTorch consumers.

Each branch becomes one self-contained graph: input ``image`` (B, 3, H, W) float32 normalised with
mean = std = 0.5, output ``descriptor`` (B, D) float32, L2-normalised, with a dynamic batch axis.
A ``saig-onnx.json`` manifest beside them records sizes, normalisation, descriptor size and the
fingerprint of the source weights, so a consumer can check it pairs the right files with an index.

The graphs do not validate input (no size, channel or NaN checks): callers must feed what the
manifest describes. Uses torch's TorchScript-based exporter (``dynamo=False``), which needs no
extra package.
"""
from __future__ import annotations

import copy
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from saig_core.data.preprocess import MEAN, STD
from saig_core.errors import SaigError
from saig_core.model.saig_model import SAIGModel
from saig_core.runtime.encode import fold_batchnorm
from saig_core.version import __version__
from saig_core.weights.checkpoint import model_fingerprint

OPSET = 17
MANIFEST = "saig-onnx.json"
FILES = {"ground": "ground.onnx", "aerial": "aerial.onnx"}


class OnnxExportError(SaigError, RuntimeError):
    """Export failed or its result does not match the PyTorch model."""


class _BranchGraph(nn.Module):
    """One branch with its L2 normalisation, as a plain image -> descriptor function."""

    def __init__(self, branch: nn.Module) -> None:
        super().__init__()
        self.branch = branch

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.branch(image), dim=1)


def export_onnx(model: SAIGModel, out_dir: str | os.PathLike, opset: int = OPSET, **provenance: Any) -> dict[str, Any]:
    """Write ``ground.onnx``, ``aerial.onnx`` and ``saig-onnx.json`` into ``out_dir``; returns the manifest.

    Files are written under temporary names and renamed into place, so an interrupted export never
    leaves a half-written graph under the final name.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = model_fingerprint(model)
    folded = fold_batchnorm(copy.deepcopy(model).float().cpu().eval())
    cfg = model.cfg
    manifest: dict[str, Any] = {
        "format": "saig-onnx",
        "software_version": __version__,
        "torch_version": str(torch.__version__),
        "opset": opset,
        "fingerprint": fingerprint,
        "config": cfg.to_dict(),
        "normalisation": {"mean": [MEAN] * 3, "std": [STD] * 3, "input_range": [-1.0, 1.0]},
        "descriptor_dim": cfg.descriptor_dim,
        "branches": {},
        **provenance,
    }
    for name, size in (("ground", cfg.ground_size), ("aerial", cfg.aerial_size)):
        graph = _BranchGraph(getattr(folded, name)).eval()
        dst = out_dir / FILES[name]
        _export_graph(graph, torch.zeros(2, 3, *size), dst, opset)
        manifest["branches"][name] = {
            "file": FILES[name],
            "input": {"name": "image", "shape": ["batch", 3, size[0], size[1]], "dtype": "float32"},
            "output": {"name": "descriptor", "shape": ["batch", cfg.descriptor_dim], "dtype": "float32"},
        }
    tmp = out_dir / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out_dir / MANIFEST)
    return manifest


def _export_graph(graph: nn.Module, example: torch.Tensor, dst: Path, opset: int) -> None:
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notices
            torch.onnx.export(
                graph,
                (example,),
                str(tmp),
                dynamo=False,
                input_names=["image"],
                output_names=["descriptor"],
                dynamic_axes={"image": {0: "batch"}, "descriptor": {0: "batch"}},
                opset_version=opset,
                do_constant_folding=True,
            )
        os.replace(tmp, dst)
    except Exception as e:
        raise OnnxExportError(f"{dst}: ONNX export failed: {e}") from e
    finally:
        tmp.unlink(missing_ok=True)


def verify_export(model: SAIGModel, out_dir: str | os.PathLike, tolerance: float = 1e-4, batch: int = 3) -> float:
    """Compare ONNX Runtime's descriptors with PyTorch's on random images; returns the max |difference|.

    Uses a batch size other than the export's, which also checks the dynamic batch axis.
    """
    out_dir = Path(out_dir)
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for name, size in (("ground", model.cfg.ground_size), ("aerial", model.cfg.aerial_size)):
        images = torch.rand(batch, 3, *size, generator=generator) * 2 - 1
        with torch.no_grad():
            expected = getattr(model.eval(), f"encode_{name}")(images)
        got = onnx_session(out_dir / FILES[name]).run(["descriptor"], {"image": images.numpy()})[0]
        diff = float((torch.from_numpy(got) - expected.cpu()).abs().max())
        if not diff <= tolerance:
            raise OnnxExportError(f"{out_dir / FILES[name]}: ONNX Runtime differs from PyTorch by {diff:.2e}")
        worst = max(worst, diff)
    return worst


def onnx_session(path: str | os.PathLike, threads: int | None = None):
    """An ONNX Runtime CPU session for an exported branch (needs the 'onnx' extra)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise OnnxExportError("onnxruntime is not installed: pip install 'saig-geolocate[onnx]'") from None
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
