"""Which torch build the backend installer puts in: a CUDA build when the NVIDIA driver supports one, else CPU.

Standard library only. The GPU and driver come from ``nvidia-smi`` (name, driver version, compute
capability). The rules, in :data:`CUDA_BUILDS` order (newest first):

* a CUDA build needs the driver its CUDA major version needs (NVIDIA's CUDA toolkit release notes,
  "minimum required driver version for CUDA minor version compatibility": CUDA 13.x >= 580.65.06 on
  Linux / 580.88 on Windows, CUDA 12.x >= 525.60.13 / 527.41);
* and a GPU whose compute capability the build still compiles for: PyTorch's CUDA 12.8+ builds dropped
  Maxwell, Pascal and Volta (compute capability below 7.5), which keep the CUDA 12.6 build; Blackwell
  (10.0 and up) needs CUDA 12.8 or newer;
* no NVIDIA GPU, ``nvidia-smi`` missing or failing, an older driver, or macOS: the CPU build (with
  the reason). On Linux and Windows the CPU build comes from PyTorch's ``cpu`` index (PyPI's Linux
  torch is a CUDA build); on macOS from PyPI (its wheels include Apple's MPS).

Which CUDA variants a torch release publishes changes over time; the install options (a torch
requirement and an index URL) override the choice, e.g. for an offline wheel.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

PYTORCH_INDEX = "https://download.pytorch.org/whl"


@dataclass(frozen=True)
class Gpu:
    """One NVIDIA GPU as ``nvidia-smi`` reports it."""

    name: str
    driver: str
    compute_capability: str | None = None

    def describe(self) -> str:
        """'NVIDIA H200 (driver 570.86.15, compute capability 9.0)'."""
        cc = f", compute capability {self.compute_capability}" if self.compute_capability else ""
        return f"{self.name} (driver {self.driver}{cc})"


@dataclass(frozen=True)
class CudaBuild:
    """A CUDA variant of PyTorch's wheels and what it needs from the machine."""

    tag: str  # the index suffix, e.g. "cu128"
    cuda: str
    min_driver_linux: str
    min_driver_windows: str
    min_compute: float
    max_compute: float | None = None  # exclusive; None = any newer GPU


CUDA_BUILDS = (
    CudaBuild("cu130", "13.0", "580.65.06", "580.88", 7.5),
    CudaBuild("cu128", "12.8", "525.60.13", "527.41", 7.5),
    CudaBuild("cu126", "12.6", "525.60.13", "527.41", 5.0, max_compute=10.0),
)


@dataclass(frozen=True)
class TorchChoice:
    """What to install: a pip requirement, the index to take it from (None: pip's own configuration), why."""

    requirement: str
    index_url: str | None
    build: str  # "cpu", a CUDA tag ("cu128"), or "custom"
    reason: str

    def describe(self) -> str:
        """One line for the log and the dock."""
        where = f" from {self.index_url}" if self.index_url else ""
        return f"{self.requirement} ({self.build} build{where}): {self.reason}"


def _version_key(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.strip().split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def driver_at_least(driver: str, minimum: str) -> bool:
    """Whether an NVIDIA driver version ('570.86.15', '581.42') is at least ``minimum``."""
    return _version_key(driver) >= _version_key(minimum)


def find_nvidia_smi() -> str | None:
    """``nvidia-smi`` on PATH, or where the Windows driver installs it."""
    found = shutil.which("nvidia-smi")
    if found or os.name != "nt":
        return found
    for folder in (os.path.join(os.environ.get("SYSTEMROOT", r"C:\Windows"), "System32"),
                   os.path.join(os.environ.get("PROGRAMFILES", r"C:\Program Files"), "NVIDIA Corporation", "NVSMI")):
        candidate = os.path.join(folder, "nvidia-smi.exe")
        if os.path.isfile(candidate):
            return candidate
    return None


def parse_nvidia_smi(text: str, with_compute: bool) -> list[Gpu]:
    """GPUs from ``nvidia-smi --query-gpu=name,driver_version[,compute_cap] --format=csv,noheader``."""
    gpus = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 2 or not fields[0] or not fields[1]:
            continue
        compute = fields[2] if with_compute and len(fields) > 2 and fields[2] not in ("", "[N/A]") else None
        gpus.append(Gpu(fields[0], fields[1], compute))
    return gpus


def query_gpus(nvidia_smi: str | None = None, timeout_s: float = 20.0) -> tuple[list[Gpu], str]:
    """(GPUs, a note for people). No GPUs and the reason when nvidia-smi is missing or fails."""
    exe = nvidia_smi or find_nvidia_smi()
    if not exe:
        return [], "nvidia-smi not found (no NVIDIA driver)"
    # compute_cap is known to nvidia-smi since driver 510; ask without it when an older one refuses it
    for fields, with_compute in (("name,driver_version,compute_cap", True), ("name,driver_version", False)):
        try:
            proc = subprocess.run([exe, f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True,
                                  text=True, timeout=timeout_s,
                                  creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0) if os.name == "nt" else 0)
        except (OSError, subprocess.SubprocessError) as e:
            return [], f"nvidia-smi could not run ({e})"
        if proc.returncode == 0:
            gpus = parse_nvidia_smi(proc.stdout, with_compute)
            return gpus, f"nvidia-smi: {', '.join(g.describe() for g in gpus)}" if gpus else "nvidia-smi lists no GPU"
    last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
    return [], f"nvidia-smi failed: {last[0]}"


def _compute(gpu: Gpu) -> float | None:
    try:
        return float(gpu.compute_capability) if gpu.compute_capability else None
    except ValueError:
        return None


def cuda_build_for(gpu: Gpu, platform: str) -> tuple[CudaBuild | None, str]:
    """The newest CUDA build this GPU and driver can run, or None and why not."""
    compute = _compute(gpu)
    too_old = []
    for build in CUDA_BUILDS:
        minimum = build.min_driver_windows if platform == "win32" else build.min_driver_linux
        if compute is None and build.min_compute > CUDA_BUILDS[-1].min_compute:
            continue  # an nvidia-smi too old to say: only the build for the widest range of GPUs
        if compute is not None and (compute < build.min_compute
                                    or (build.max_compute is not None and compute >= build.max_compute)):
            continue
        if driver_at_least(gpu.driver, minimum):
            return build, f"{gpu.describe()} runs the CUDA {build.cuda} build"
        too_old.append(f"CUDA {build.cuda} needs >= {minimum}")
    if too_old:
        return None, f"{gpu.describe()}: the driver is too old for PyTorch's CUDA builds ({'; '.join(too_old)})"
    return None, f"{gpu.describe()}: no PyTorch CUDA build supports compute capability {gpu.compute_capability}"


def choose_torch(gpus: list[Gpu], gpu_note: str, platform: str = sys.platform) -> TorchChoice:
    """The automatic choice for this machine (see the module docstring)."""
    if platform == "darwin":
        return TorchChoice("torch", None, "cpu", "macOS: PyPI's build (CPU and Apple MPS)")
    cpu_index = f"{PYTORCH_INDEX}/cpu"
    if not gpus:
        return TorchChoice("torch", cpu_index, "cpu", f"CPU build: {gpu_note}")
    build, why = cuda_build_for(gpus[0], platform)
    if build is None:
        return TorchChoice("torch", cpu_index, "cpu", f"CPU build: {why}; update the NVIDIA driver to use the GPU")
    return TorchChoice("torch", f"{PYTORCH_INDEX}/{build.tag}", build.tag, why)


def custom_choice(requirement: str, index_url: str, automatic: TorchChoice) -> TorchChoice:
    """A torch requirement (and optional index) set in the install options; the automatic choice is still named."""
    return TorchChoice(requirement.strip(), index_url.strip() or None, "custom",
                       f"set in the install options (the automatic choice would be: {automatic.build}, "
                       f"{automatic.reason})")
