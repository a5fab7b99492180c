"""docs/scale.md: a country indexed and searched, every figure derived from a benchmark result with its formula.

Called by scripts/bench_report.py (``make bench-report``). Each row names the measurement it starts from
(result file and figure); a measurement not made yet is said so, with the command that makes it.
"""
from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tiling.search import NPROBE_PER_SQRT_NLIST  # the default nprobe the plan's query scans

AREA_KM2 = 41_000.0  # the country of the plan (issue 12): 41,000 km² at 0.25 m
GSD_M, CHIP_M, STRIDE_M = 0.25, 64.0, 16.0
GPU_TARGET = 10_000.0  # img/s, SAIG-D aerial 256² bf16 on one H100-class GPU: the goal, not measured here


class Missing(KeyError):
    """A measurement the plan needs is not in the results yet."""


def get(results: dict, name: str, *path):
    """A figure of a result (``path`` into its ``figures``), or Missing naming the command that makes it."""
    if name not in results:
        raise Missing(f"no `benchmarks/results/{name}.json` yet (run `python benchmarks/{name}.py`)")
    value = results[name]["figures"]
    for key in path:
        if callable(key):
            value = key(value)
        elif isinstance(value, dict) and key in value:
            value = value[key]
        else:
            raise Missing(f"`{name}.json` has no figure {'/'.join(map(str, path))}")
    return value


def pick(**match) -> Callable:
    """A path step choosing the row of a table whose fields equal ``match``."""
    def choose(rows):
        for row in rows:
            if all(row.get(k) == v for k, v in match.items()):
                return row
        raise Missing(f"no row with {match}")
    return choose


def human_bytes(n: float) -> str:
    """Bytes in TB/GB/MB."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,.0f} B"


def hours(seconds: float) -> str:
    """Seconds as hours (or minutes)."""
    return f"{seconds / 3600:,.1f} h" if seconds >= 3600 else f"{seconds / 60:,.1f} min"


def rows(results: dict) -> list[tuple[str, Callable[[], str], str, str]]:
    """(figure, value, formula, measured from) of the plan, in order; values are computed lazily."""
    n = AREA_KM2 * 1e6 / STRIDE_M ** 2
    px = CHIP_M / GSD_M
    s10 = "search_scale"
    count10 = lambda: get(results, s10, "count")  # noqa: E731
    per_chip = lambda f: get(results, s10, "bytes_per_chip_on_disk", f)  # noqa: E731
    nlist = 65536  # tiling.search.factory_string at 160M (4 sqrt(N) -> 2^16, the cap)
    measured_nlist = lambda: int(re.search(r"IVF(\d+)", get(results, s10, "factory")).group(1))  # noqa: E731
    quantizer_growth = lambda: per_chip("index.faiss") * count10() * (nlist / measured_nlist() - 1)  # noqa: E731
    enc = lambda path: get(results, "encoder", "aerial batch 8, paths timed in turns", "saig_s",  # noqa: E731
                           pick(path=path), "images_per_s")
    threads = lambda: get(results, "encoder", "torch_threads")  # noqa: E731
    timing = lambda k: get(results, s10, "build_timings_s", k)  # noqa: E731
    default = lambda: get(results, s10, "search_one_thread", pick(default=True))  # noqa: E731
    scanned = lambda count, lists: NPROBE_PER_SQRT_NLIST * math.sqrt(lists) * count / lists  # noqa: E731
    return [
        ("chips N", lambda: f"{n / 1e6:,.1f} M", f"area / stride² = {AREA_KM2:,.0f} km² / ({STRIDE_M:g} m)²",
         "the plan's parameters"),
        ("chip size", lambda: f"{px:.0f} px", f"{CHIP_M:g} m / {GSD_M} m", "the plan's parameters"),
        ("re-ranking vectors on disk", lambda: human_bytes(n * per_chip("vectors.f16")),
         "N x 2 B x D (float16)", f"{s10}: bytes_per_chip_on_disk/vectors.f16"),
        ("inverted lists on disk", lambda: human_bytes(n * per_chip("index.ivfdata")),
         "N x (96 B SQ8 code + 8 B id)", f"{s10}: bytes_per_chip_on_disk/index.ivfdata"),
        ("manifest (GeoParquet) on disk", lambda: human_bytes(n * per_chip("chips.parquet")),
         "N x bytes per row", f"{s10}: bytes_per_chip_on_disk/chips.parquet"),
        ("index.faiss (PCA + coarse quantizer)",
         lambda: human_bytes(per_chip("index.faiss") * count10() * nlist / measured_nlist()),
         "its size at the measured count x 65,536 lists / the lists it had",
         f"{s10}: bytes_per_chip_on_disk/index.faiss"),
        ("RAM of a query process (anonymous)",
         lambda: f"{get(results, s10, 'memory_end_mb', 'RssAnon') + quantizer_growth() / 1e6:,.0f} MB",
         "RssAnon measured + the growth of index.faiss (row above)", f"{s10}: memory_end_mb/RssAnon"),
        ("encoding, CPU core-hours (SAIG-S, bf16 fast path)", lambda: hours(n * threads() / enc("fast")),
         "N x threads / (images/s of SAIG-S aerial 256², batch 8, fast path)", "encoder: aerial batch 8/saig_s/fast"),
        ("encoding, CPU core-hours (SAIG-S, fp32)", lambda: hours(n * threads() / enc("fp32")),
         "N x threads / images/s (fp32)", "encoder: aerial batch 8/saig_s/fp32"),
        ("encoding, GPU-hours at the issue's 10,000 img/s (not measured: no GPU here)",
         lambda: hours(n / GPU_TARGET), "N / 10,000 img/s", "the issue's target; replace by a GPU measurement"),
        ("Ray cluster: encoding actors for a 24 h build at that rate",
         lambda: f"{math.ceil(n / GPU_TARGET / 86400)} GPU(s)", "N / (10,000 img/s x 86,400 s)",
         "the issue's target rate"),
        ("Ray cluster: CPU cores of read tasks to feed those actors", lambda: _read_cores(results, n),
         "GPUs x 10,000 img/s / (chips cut per second per core)", "tiling: chips_per_s_per_core"),
        ("add to shard indexes (one core per shard; shards run in parallel)",
         lambda: hours(timing("add_s") * n / count10()), "add_s x N / measured count (all cores of one machine)",
         f"{s10}: build_timings_s/add_s"),
        ("merge into on-disk lists", lambda: hours(timing("merge_s") * n / count10()),
         "merge_s x N / measured count (sequential bytes)", f"{s10}: build_timings_s/merge_s"),
        ("train the coarse quantizer",
         lambda: hours(timing("train_s") * (nlist / measured_nlist()) ** 2),
         "train_s x (65,536 / measured lists)² (k-means on 40 x nlist points: cost ~ nlist²)",
         f"{s10}: build_timings_s/train_s"),
        ("query, whole country, one thread (probing 6 sqrt(nlist) lists)",
         lambda: f"{default()['p50_ms'] * scanned(n, nlist) / scanned(count10(), measured_nlist()):,.0f} ms",
         "p50 x codes scanned / codes scanned measured; codes scanned = 6 sqrt(nlist) x N / nlist (the "
         "default nprobe of tiling.search)", f"{s10}: search_one_thread (default nprobe)"),
        ("query within a 500 m prior (any country size)",
         lambda: f"{get(results, s10, 'locate_query', '500 m prior, heatmap', 'p50_ms'):,.0f} ms",
         "measured: it reads only the chips near the photo", f"{s10}: locate_query/500 m prior"),
        ("descriptor dimension D of SAIG-S (the vectors' 2 B x D above)",
         lambda: f"{get(results, 'descriptors', 'SAIG-S, random weights', 'dim')}",
         "SAIG-S with global average pooling", "descriptors: SAIG-S dim"),
    ]


def _read_cores(results: dict, n: float) -> str:
    per_core = get(results, "tiling", "chips_per_s_per_core")
    gpus = math.ceil(n / GPU_TARGET / 86400)
    return f"{math.ceil(gpus * GPU_TARGET / per_core)} cores"


def render(results: dict) -> str:
    """The whole docs/scale.md."""
    lines = ["# Scale: a country", "",
             "> Generated by `make bench-report` (`scripts/scale_plan.py`) from `benchmarks/results/*.json`; do not "
             "edit by hand. Each figure starts from a measurement named in the last column, with its formula.", "",
             f"The plan: {AREA_KM2:,.0f} km² of orthophotos at {GSD_M} m, {CHIP_M:g} m chips every {STRIDE_M:g} m "
             "(the index the issue asks for), SAIG-S descriptors, a `pcasq` index with on-disk inverted lists "
             "(`--storage disk`), float16 vectors for re-ranking, a GeoParquet manifest.", "",
             "| figure | value | formula | measured from |", "|---|---|---|---|"]
    for name, value, formula, source in rows(results):
        try:
            text = value()
        except Missing as e:
            text = f"not measured yet: {e.args[0]}"
        lines.append(f"| {name} | {text} | {formula} | {source} |")
    lines += ["", "## How the pieces fit", "",
              "- **Training** is `torchrun` (data-parallel, one or more machines): one checkpoint.",
              "- **Indexing** is `saig index build --ray ADDRESS`: read tasks over ranges of the chip plan on CPU "
              "workers, one encoding actor per GPU, descriptor shards in the build's folder on shared storage, "
              "resumable by range; then the coarse quantizer is trained once on a sample spread over all chips, "
              "shards are added and merged into on-disk inverted lists.",
              "- **Searching** (`saig locate`) opens the folder reading only what a photo needs: the coarse "
              "quantizer and PCA in memory, the probed lists memory-mapped, 64 exact vectors per photo by `pread`, "
              "the manifest's row groups of the candidates and of the heatmap window.",
              "- With an EXIF position, `--prior-radius-m` makes a query independent of the country's size; without "
              "one, latency grows with N at a fixed probed fraction (the row above), so a country-wide search "
              "without a prior calls for more lists probed in a smaller fraction, or the index split by region "
              "(FAISS `IndexShards`).", ""]
    return "\n".join(lines)
