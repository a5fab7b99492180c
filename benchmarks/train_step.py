"""Training step time, plain AdamW vs ASAM, and peak memory: prints one JSON object.

Goal: an ASAM step costs at most 2.1x a plain step (it does two forward/backward passes).
The ratio compares the fastest of ``--steps`` timed steps of each mode (robust to other load on a
shared machine); medians are reported too. Each mode runs in its own child process so peak memory
(CPU: max RSS; CUDA: max allocated) is its own.

    python benchmarks/train_step.py                       # SAIG-S, batch 8, CPU (or CUDA when present)
    python benchmarks/train_step.py --preset saig_micro --ground-size 32x128 --aerial-size 64x64 --steps 5
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import record


def _size(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def measure(args: argparse.Namespace) -> dict:
    import torch

    from saig_core import build_model
    from saig_core.runtime.device import describe_device, resolve_device
    from saig_core.training.losses import build_loss
    from saig_core.training.sam import SAM
    from saig_core.training.trainer import TrainStep

    torch.manual_seed(0)
    device = resolve_device(args.device)
    precision = args.precision if args.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    model = build_model(args.preset, args.pool, args.ground_size, args.aerial_size).to(device).train()
    kwargs = dict(lr=1e-4, weight_decay=0.03)
    opt = (SAM(model.parameters(), torch.optim.AdamW, rho=2.0, adaptive=True, **kwargs) if args.mode == "asam"
           else torch.optim.AdamW(model.parameters(), **kwargs))
    step = TrainStep(model, model, opt, build_loss("soft_margin_triplet"), device, precision,
                     grad_clip=None if args.mode == "asam" else 1.0)
    g = torch.rand(args.batch, 3, *args.ground_size, device=device) * 2 - 1
    a = torch.rand(args.batch, 3, *args.aerial_size, device=device) * 2 - 1
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(args.warmup):
        step(g, a)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step(g, a)
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"mode": args.mode, "device": describe_device(device), "precision": precision,
            "median_step_s": times[len(times) // 2], "min_step_s": times[0],
            "peak_memory_mb": round(peak / 2**20, 1), "peak_memory_kind": "cuda_max_allocated" if device.type == "cuda"
            else "process_max_rss"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="saig_s")
    p.add_argument("--pool", default="gap")
    p.add_argument("--ground-size", type=_size, default=(128, 512))
    p.add_argument("--aerial-size", type=_size, default=(256, 256))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", help="auto = bf16 on CUDA, fp32 on CPU")
    p.add_argument("--mode", choices=("plain", "asam"), help=argparse.SUPPRESS)  # child process
    record.add_results_arg(p)
    args = p.parse_args()
    if args.mode:
        print(json.dumps(measure(args)))
        return
    shown = [a for a in sys.argv[1:] if not a.startswith("--results-dir")]
    run = record.Run("train_step", "Training step", " ".join(["python benchmarks/train_step.py", *shown]))
    results = {}
    for mode in ("plain", "asam"):
        child = [sys.executable, __file__, *sys.argv[1:], "--mode", mode]
        out = subprocess.run(child, capture_output=True, text=True, check=True).stdout
        results[mode] = json.loads(out.strip().splitlines()[-1])
    # the fastest step is the least disturbed by other load on a shared machine
    ratio = results["asam"]["min_step_s"] / results["plain"]["min_step_s"]
    run.goal("ASAM step / plain step (fastest of each)", round(ratio, 3), "<=", 2.1, "x")
    run.note("Each mode runs in its own child process, so peak memory is its own; the ratio compares the fastest "
             f"of {args.steps} timed steps of each mode.")
    run.write({"preset": args.preset, "pool": args.pool, "batch": args.batch, "ground_size": list(args.ground_size),
               "aerial_size": list(args.aerial_size), "device": results["plain"]["device"],
               "precision": results["plain"]["precision"],
               "modes": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in results[m].items()}
                         for m in ("plain", "asam")]}, args.results_dir)

if __name__ == "__main__":
    main()
