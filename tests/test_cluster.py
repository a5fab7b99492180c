"""`saig index build --ray` on a real local Ray cluster: a head node and a second worker node, each one
CPU and a small object store, started by the test and stopped at its end (`make test-cluster`)."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import pytest
from rasterio.transform import from_origin
from tiling_fixtures import ORIGIN, json_lines, micro_checkpoint, ortho, run

from tiling.manifest import read_manifest

pytestmark = pytest.mark.cluster
RAY = Path(sys.executable).with_name("ray")
NODE = ["--num-cpus", "1", "--num-gpus", "0", "--object-store-memory", str(80 * 2**20), "--block"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive_nodes(address: str) -> int:
    code = (f"import ray; ray.init(address={address!r}, logging_level='ERROR'); "
            "print(sum(n['Alive'] for n in ray.nodes()))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return int(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 and proc.stdout.strip() else 0


def stop(proc: subprocess.Popen) -> None:
    """End a node: its whole process group (raylet, GCS, workers), politely first."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def ray_cluster():
    port = free_port()
    address = f"127.0.0.1:{port}"
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay short
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    logs = open(Path(temp) / "nodes.log", "w")  # noqa: SIM115 - closed at teardown
    nodes = [subprocess.Popen([str(RAY), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                               "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", temp, *NODE],
                              env=env, stdout=logs, stderr=subprocess.STDOUT, start_new_session=True)]
    try:
        deadline = time.time() + 180
        while alive_nodes(address) < 1:
            assert time.time() < deadline, (Path(temp) / "nodes.log").read_text()
            time.sleep(2)
        nodes.append(subprocess.Popen([str(RAY), "start", "--address", address, "--node-ip-address", "127.0.0.1",
                                       *NODE], env=env, stdout=logs, stderr=subprocess.STDOUT, start_new_session=True))
        while alive_nodes(address) < 2:
            assert time.time() < deadline, (Path(temp) / "nodes.log").read_text()
            time.sleep(2)
        yield address
    finally:
        for proc in reversed(nodes):
            stop(proc)
        logs.close()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Two overlapping orthophotos (the overlap rule crosses range boundaries) and a tiny model."""
    tmp = tmp_path_factory.mktemp("ray")
    a = ortho(tmp / "a.tif", h=240, w=240, seed=1)
    b = ortho(tmp / "b.tif", h=240, w=240, seed=2, transform=from_origin(ORIGIN[0] + 60.0, ORIGIN[1] - 30.0, 0.5, 0.5))
    return tmp, [a, b], micro_checkpoint(tmp / "micro.pt")


def build(tmp: Path, rasters, ckpt, out: str, *extra):
    return run("--progress", "json", "index", "build", *rasters, "--checkpoint", ckpt, "--chip-size-m", 16,
               "--stride-m", 8, "--device", "cpu", "--index-type", "flat", "--out", tmp / out, *extra, timeout=900)


def test_a_ray_build_equals_the_single_process_build_and_resumes_without_redoing_ranges(ray_cluster, inputs):
    tmp, rasters, ckpt = inputs
    build(tmp, rasters, ckpt, "single")
    # a Ray build killed once some ranges are committed ...
    cmd = [str(Path(sys.executable).with_name("saig")), "--progress", "json", "index", "build", *map(str, rasters),
           "--checkpoint", str(ckpt), "--chip-size-m", "16", "--stride-m", "8", "--device", "cpu", "--index-type",
           "flat", "--out", str(tmp / "clustered"), "--ray", ray_cluster, "--shard-size", "40", "--batch-size", "8"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ray_dir = tmp / ".clustered.partial" / "ray"
    deadline = time.time() + 600
    while len(list(ray_dir.glob("range-*.npz"))) < 2 and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(ray_dir.glob("range-*.npz")))
    assert done >= 2
    # ... is resumed: the committed ranges are not redone, every other one is (ranges are committed while the
    # pipeline runs, so the kill lands with ranges still to encode)
    second = run(*cmd[1:], timeout=900)
    events = json_lines(second.stdout)
    assert all(line.startswith("{") for line in second.stdout.splitlines())  # stdout holds JSON lines only
    logs = [e["message"] for e in events if e.get("event") == "log"]
    resumed = [tuple(map(int, m.groups())) for m in map(re.compile(r"resuming: (\d+) of (\d+) chip ranges").search,
                                                        logs) if m]
    assert resumed, logs
    done_again, total = resumed[0]
    assert done_again == done and total > done, logs
    assert f"encoding {total - done} chip range(s)" in " ".join(logs), logs
    cluster_lines = [m for m in logs if "node(s)" in m]
    assert cluster_lines and int(re.search(r"(\d+) node\(s\)", cluster_lines[0]).group(1)) >= 2, logs
    single, clustered = tmp / "single", tmp / "clustered"
    a, b = read_manifest(single / "chips.gpkg"), read_manifest(clustered / "chips.gpkg")
    assert len(a) > 300 and list(a["chip_id"]) == list(b["chip_id"]) and list(a["source"]) == list(b["source"])
    va = faiss.read_index(str(single / "index.faiss")).reconstruct_n(0, len(a))
    vb = faiss.read_index(str(clustered / "index.faiss")).reconstruct_n(0, len(b))
    np.testing.assert_allclose(va, vb, atol=1e-4)
    ma, mb = (json.loads((d / "metadata.json").read_text()) for d in (single, clustered))
    assert ma["count"] == mb["count"] and ma["skipped_chips"] == mb["skipped_chips"] and ma["files"].keys() == mb[
        "files"].keys()
    assert not (tmp / ".clustered.partial").exists()
    assert sorted(p.name for p in clustered.iterdir()) == sorted(p.name for p in single.iterdir())  # no journal
    run("index", "info", clustered)  # every checksum verifies
