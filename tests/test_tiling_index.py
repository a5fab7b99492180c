"""The reference index: CLI contract, self-describing folder, checksums, atomicity, resume after kill -9."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import faiss
import numpy as np
import pytest
from tiling_fixtures import SAIG, json_lines, micro_checkpoint, ortho, run

from tiling import search
from tiling.manifest import read_manifest


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("index")
    ckpt = micro_checkpoint(tmp / "micro.pt")
    tif = ortho(tmp / "ortho.tif")
    out = tmp / "idx"
    proc = run("--progress", "json", "index", "build", tif, "--checkpoint", ckpt, "--chip-size-m", 20,
               "--stride-m", 10, "--out", out)
    return tmp, ckpt, tif, out, json_lines(proc.stdout)


def test_index_build_follows_the_cli_contract(world):
    tmp, ckpt, tif, out, events = world
    from saig_core import load_checkpoint, model_fingerprint

    result = events[-1]
    assert result == {"event": "result", "index": str(out), "count": 117, "crs": "EPSG:32633",
                      "fingerprint": model_fingerprint(load_checkpoint(ckpt))}
    assert any(e["event"] == "progress" and e["stage"] == "index" for e in events)
    assert sorted(p.name for p in out.iterdir()) == ["chips.gpkg", "index.faiss", "metadata.json"]
    assert not [p for p in tmp.iterdir() if p.name.startswith(".")]  # no partial folder left


def test_index_folder_describes_itself_and_verifies(world):
    _, ckpt, tif, out, _ = world
    meta = json_lines(run("index", "info", out, "--json").stdout)[-1]
    assert meta["verified"] is True and meta["count"] == 117 and meta["crs"] == "EPSG:32633"
    assert meta["model"]["checkpoint"] == str(ckpt.resolve()) and meta["model"]["config"]["preset"] == "saig_micro"
    assert meta["chips"]["chip_size_m"] == 20 and meta["chips"]["out_size"] == [64, 64]
    assert meta["sources"] == [{"path": str(tif), "abs_path": str(tif.resolve()), "chips": 117}]
    assert meta["faiss"]["kind"] == "flat" and meta["stretch"] is None  # 8-bit: no contrast stretch
    assert set(meta["files"]) == {"index.faiss", "chips.gpkg"} and meta["software_version"]
    index = faiss.read_index(str(out / "index.faiss"))
    chips = read_manifest(out / "chips.gpkg")
    assert index.ntotal == len(chips) == 117 and list(chips["faiss_id"]) == list(range(117))
    vectors = index.reconstruct_n(0, index.ntotal)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_index_info_names_a_file_whose_checksum_fails(world, tmp_path):
    _, _, _, out, _ = world
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    with open(copy / "chips.gpkg", "r+b") as f:
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 0xFF]))
    proc = run("index", "info", copy, check=False)
    assert proc.returncode == 1
    assert str(copy / "chips.gpkg") in proc.stderr and "checksum mismatch" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_index_build_refuses_to_replace_an_existing_index(world):
    _, ckpt, tif, out, _ = world
    proc = run("index", "build", tif, "--checkpoint", ckpt, "--chip-size-m", 20, "--stride-m", 10, "--out", out,
               check=False)
    assert proc.returncode == 1 and "already exists" in proc.stderr and "--overwrite" in proc.stderr


def test_index_build_skips_a_bad_raster_and_indexes_the_others(world, tmp_path):
    _, ckpt, tif, _, _ = world
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00garbage")
    out = tmp_path / "idx"
    proc = run("--progress", "json", "index", "build", bad, tif, "--checkpoint", ckpt, "--chip-size-m", 20,
               "--stride-m", 10, "--out", out, check=False)
    events = json_lines(proc.stdout)
    assert proc.returncode == 1
    assert [e["file"] for e in events if e["event"] == "error"] == [str(bad)]
    assert events[-1]["event"] == "result" and events[-1]["count"] == 117
    meta = json.loads((out / "metadata.json").read_text())
    assert [s["path"] for s in meta["sources"]] == [str(tif)]


@pytest.mark.slow
def test_a_build_killed_with_sigkill_resumes_without_losing_or_duplicating_chips(world, tmp_path):
    _, ckpt, _, _, _ = world
    tif = ortho(tmp_path / "big.tif", h=200, w=200, seed=3)
    args = [tif, "--checkpoint", ckpt, "--chip-size-m", 20, "--stride-m", 5, "--batch-size", 8, "--shard-size", 32]
    killed_out = tmp_path / "resumed"
    partial = tmp_path / ".resumed.partial"
    proc = subprocess.Popen([str(SAIG), "index", "build", *map(str, args), "--out", str(killed_out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (partial / "shards" / "shard-00003.npz").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "build ended before it could be killed"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not killed_out.exists() and partial.is_dir()  # nothing published by a killed build
    committed = len(list((partial / "shards").glob("shard-*.npz")))

    resumed = run("--progress", "json", "index", "build", *args, "--out", killed_out)
    assert any("resuming" in e.get("message", "") and f"{committed} shard" in e["message"]
               for e in json_lines(resumed.stdout) if e["event"] == "log")
    straight = tmp_path / "straight"
    run("index", "build", *args, "--out", straight)

    a, b = read_manifest(killed_out / "chips.gpkg"), read_manifest(straight / "chips.gpkg")
    assert len(a) > 400
    assert a["chip_id"].is_unique and list(a["chip_id"]) == list(b["chip_id"])
    va = faiss.read_index(str(killed_out / "index.faiss")).reconstruct_n(0, len(a))
    vb = faiss.read_index(str(straight / "index.faiss")).reconstruct_n(0, len(b))
    np.testing.assert_allclose(va, vb, atol=1e-4)
    assert not partial.exists()


@pytest.mark.parametrize("kind", ["pcasq", "ivfpq"])
def test_compressed_indexes_find_neighbours_and_score_like_their_search(kind):
    faiss.omp_set_num_threads(1)  # the test machine is shared: OpenMP spinning on busy cores is slower
    rng = np.random.default_rng(0)
    # descriptors with structure (an 8-d latent space) and a non-zero mean, as trained encoders produce
    x = (rng.normal(size=(3000, 8)) @ rng.normal(size=(8, 64)) + 0.1 * rng.normal(size=(3000, 64)) + 0.3)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    chunks = lambda: (x[i:i + 1024] for i in range(0, len(x), 1024))  # noqa: E731
    assert search.choose_kind("auto", 1000) == "flat" and search.choose_kind("auto", 10 ** 6) == "pcasq"
    index = search.build(kind, 64, len(x), chunks)
    assert index.ntotal == len(x)
    q = x[:50] + 0.02 * rng.normal(size=(50, 64)).astype(np.float32)
    exact = np.argsort(-(q @ x.T), axis=1)[:, :10]
    scores, got = search.search(index, q, 10)
    recall = np.mean([len(set(g) & set(e)) / 10 for g, e in zip(got, exact, strict=True)])
    assert recall > 0.85
    # the search's scores are the stored codes' scores of the chips it returns (what a heatmap shows there;
    # tests/test_tiling_reference.py checks that the heatmap's maximum is the top candidate)
    full = search.scores_for(index, q)
    np.testing.assert_allclose(scores, np.take_along_axis(full, got, 1), atol=1e-5)
    subset = rng.choice(len(x), 300, replace=False)
    sub_scores, ids = search.search(index, q[:3], 5, subset)
    assert set(ids.ravel()) <= set(subset)
    np.testing.assert_allclose(sub_scores, -np.sort(-full[:3, subset], axis=1)[:, :5], atol=1e-6)


def test_probing_more_lists_through_an_hnsw_quantizer_really_probes_them():
    """An HNSW coarse quantizer (big indexes) returns no more lists than its efSearch: nprobe raises it."""
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40_000, 32)).astype(np.float32)
    index = faiss.index_factory(32, "IVF512_HNSW32,SQ8", faiss.METRIC_INNER_PRODUCT)
    index.train(x[:20_000])
    index.add(x)
    q = rng.standard_normal((40, 32)).astype(np.float32)
    exact = np.argsort(-(q @ x.T), axis=1)[:, :10]

    def recall(nprobe: int) -> float:
        search.set_search_defaults(index, nprobe)
        _, got = search.search(index, q, 10)
        return float(np.mean([len(set(g) & set(e)) / 10 for g, e in zip(got, exact, strict=True)]))

    few, all_lists = recall(16), recall(512)
    assert faiss.downcast_index(faiss.extract_index_ivf(index).quantizer).hnsw.efSearch >= 512
    assert all_lists > 0.9 and all_lists > few + 0.2  # every list probed: only SQ8's rounding is left
