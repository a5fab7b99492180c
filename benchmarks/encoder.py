"""Encoder throughput on this machine, printed as ONE JSON object on stdout.

Measures, in one run: the machine's fp32 matmul rate (torch.mm of large square matrices) and
images/s of SAIG-S and SAIG-D, each branch (ground 128x512, aerial 256x256), batch 1/8/32, through
saig_core.runtime.encode.Encoder (the path the index builder uses). Efficiency = achieved FLOP/s (2 x MACs
per image, saig_core.model.flops) / matmul FLOP/s, comparable across machines. At aerial batch 8 it also
times the unoptimised model (no BN folding, no channels-last), the CPU fast path (precision "fast":
bf16 autocast on CPUs with native bf16) and ONNX Runtime, with the fast path's minimum descriptor
cosine to fp32.

Timing: one warm-up call, then the best of several calls, each configuration timed in turns with
the reference matmul (and, at aerial batch 8, with the other paths), so that other processes
sharing the cores slow both sides of every ratio alike; the load average is reported, and figures
taken under a load above the core count are not trustworthy. Weights are randomly initialised
(speed does not depend on them); cosines use real cross-view images when ../shared/data exists.

    python benchmarks/encoder.py            # full run, ~3-5 minutes on 2 idle cores
    python benchmarks/encoder.py --quick    # SAIG-S only, batch 1 and 8, ~1 minute
"""
from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import record
from saig_core import build_model
from saig_core.model.flops import branch_macs
from saig_core.runtime.device import cpu_has_native_bf16
from saig_core.runtime.encode import Encoder

SIZES = {"ground": (128, 512), "aerial": (256, 256)}
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "crossview"


class Matmul:
    """The machine's fp32 matmul rate: torch.mm of two n x n matrices (2 n^3 FLOP a call)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.a, self.b = torch.randn(n, n), torch.randn(n, n)
        self.best_gflops = 0.0

    def __call__(self) -> None:
        torch.mm(self.a, self.b)

    def gflops(self, seconds: float) -> float:
        rate = 2 * self.n**3 / seconds / 1e9
        self.best_gflops = max(self.best_gflops, rate)
        return rate


def interleaved_best_times(fns: dict, runs: int) -> dict[str, float]:
    """Best time of each function after one warm-up, timing them in turns (A B C A B C ...) so that
    a change in the load from other processes affects all of them alike and ratios stay fair."""
    for fn in fns.values():
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def sample_images(size: tuple[int, int], n: int) -> torch.Tensor:
    """Real images resized to ``size`` when the shared data is present, else uniform noise."""
    from PIL import Image

    from saig_core.data.preprocess import image_to_tensor

    files = sorted(p for p in SHARED.rglob("*") if p.suffix.lower() in (".jpg", ".png")) if SHARED.is_dir() else []
    if not files:
        return torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return torch.stack([image_to_tensor(Image.open(files[i % len(files)]), size) for i in range(n)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="SAIG-S only, batch 1 and 8, fewer runs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--runs", type=int, default=None, help="timed calls per configuration")
    record.add_results_arg(parser)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    presets = ["saig_s"] if args.quick else ["saig_s", "saig_d"]
    batches = [1, 8] if args.quick else [1, 8, 32]
    runs = args.runs or (3 if args.quick else 4)

    run = record.Run("encoder", "Encoder", "python benchmarks/encoder.py" + (" --quick" if args.quick else ""),
                     "quick" if args.quick else "full")
    mm = Matmul(2048 if args.quick else 3072)
    rows, aerial8 = [], {}
    for preset in presets:
        torch.manual_seed(0)
        model = build_model(preset, pool="gap").eval()
        fp32 = Encoder(model, device="cpu", precision="fp32")
        for branch, size in SIZES.items():
            macs = branch_macs(model.cfg.backbone, size, "gap")
            for batch in batches:
                x = torch.rand(batch, 3, *size) * 2 - 1
                n_runs = runs if batch < 32 else max(2, runs // 2)  # batch 32 calls take seconds each
                model_call = functools.partial(fp32.encode, branch, x)
                times = interleaved_best_times({"mm": mm, "model": model_call}, n_runs)
                gflops = 2 * macs * batch / times["model"] / 1e9
                rows.append({
                    "preset": preset, "branch": branch, "size": list(size), "batch": batch, "precision": "fp32",
                    "images_per_s": round(batch / times["model"], 2), "gflops": round(gflops, 1),
                    "matmul_gflops": round(mm.gflops(times["mm"]), 1),
                    "efficiency": round(gflops / mm.gflops(times["mm"]), 3),
                })
        aerial8[preset] = compare_paths(model, runs, mm, with_onnx=not args.quick)

    run.note(f"Best of {runs} timed calls after one warm-up, each configuration timed in turns with a "
             f"{mm.n}x{mm.n} fp32 torch.mm; efficiency = 2 x MACs x images/s / that matmul's FLOP/s.")
    run.note(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
             f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_has_native_bf16()}; weights random.")
    for p in presets:
        run.goal(f"{p} fp32 efficiency, aerial batch 8", aerial8[p]["fp32"]["efficiency"], ">=", 0.70)
        run.goal(f"{p} fast path speed-up over fp32", aerial8[p]["fast"]["speedup_over_fp32"], ">=", 1.5, "x")
        run.goal(f"{p} fast path min cosine to fp32", aerial8[p]["fast"]["min_cosine_to_fp32"], ">=", 0.995)
    run.write({
        "matmul_fp32_gflops": round(mm.best_gflops, 1), "torch_threads": torch.get_num_threads(),
        "macs_per_image_g (aerial 256x256)": {p: round(branch_macs(build_model(p).cfg.backbone, (256, 256)) / 1e9, 3)
                                             for p in presets},
        "fp32 images/s": rows,
        "aerial batch 8, paths timed in turns": {p: [{"path": k, **v} for k, v in aerial8[p].items()
                                                     if isinstance(v, dict)] for p in presets},
    }, args.results_dir)
    return 0


def compare_paths(model, runs: int, mm: Matmul, with_onnx: bool) -> dict:
    """fp32 (optimised and plain), the fast path and ONNX Runtime on aerial 256x256, batch 8."""
    x = sample_images(SIZES["aerial"], 8)
    macs = branch_macs(model.cfg.backbone, SIZES["aerial"], "gap")
    fp32 = Encoder(model, device="cpu", precision="fp32")
    plain = Encoder(model, device="cpu", precision="fp32", optimize=False)
    fast = Encoder(model, device="cpu", precision="fast")
    reference = fp32.encode("aerial", x)
    cosines = {"fast": F.cosine_similarity(fast.encode("aerial", x), reference).min().item()}
    fns = {
        "mm": mm,
        "fp32": lambda: fp32.encode("aerial", x),
        "fp32_unoptimised": lambda: plain.encode("aerial", x),
        "fast": lambda: fast.encode("aerial", x),
    }
    with tempfile.TemporaryDirectory() as tmp:
        if with_onnx:
            from saig_core.weights.onnx_export import export_onnx, onnx_session

            export_onnx(model, tmp)
            session = onnx_session(Path(tmp) / "aerial.onnx", threads=torch.get_num_threads())
            xn = x.numpy()
            got = torch.from_numpy(np.asarray(session.run(["descriptor"], {"image": xn})[0]))
            cosines["onnxruntime_fp32"] = F.cosine_similarity(got, reference).min().item()
            fns["onnxruntime_fp32"] = lambda: session.run(["descriptor"], {"image": xn})
        times = interleaved_best_times(fns, runs)
    mm_gflops = mm.gflops(times.pop("mm"))
    out: dict = {"matmul_gflops": round(mm_gflops, 1)}
    for name, seconds in times.items():
        gflops = 2 * macs * 8 / seconds / 1e9
        out[name] = {"images_per_s": round(8 / seconds, 2), "gflops": round(gflops, 1),
                     "efficiency": round(gflops / mm_gflops, 3),
                     "speedup_over_fp32": round(times["fp32"] / seconds, 3)}
        if name in cosines:
            out[name]["min_cosine_to_fp32"] = round(cosines[name], 5)
    out["fast"]["precision"] = fast.precision
    return out


if __name__ == "__main__":
    sys.exit(main())
