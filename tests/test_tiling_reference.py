"""Big indexes: on-disk inverted lists, exact re-ranking, the GeoParquet manifest read by range, windowed
heatmaps whose maximum is the top-1 candidate for every index kind."""
from __future__ import annotations

import json
import os
import shutil

import faiss
import numpy as np
import pytest
from pyproj import Geod, Transformer

from tiling import reference, search
from tiling.index import IndexFolderError, sha256_file

CRS, STRIDE, CHIP = "EPSG:32633", 16.0, 64.0
ORIGIN_X, ORIGIN_Y = 500_000.0, 5_000_000.0


def records(rows: int, cols: int) -> list[dict]:
    """Manifest rows of a rows x cols block of grid cells in UTM 33N (row-major, as a chip plan)."""
    to_wgs = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    out = []
    for r in range(rows):
        for c in range(cols):
            x, y = ORIGIN_X + c * STRIDE + CHIP / 2, ORIGIN_Y - r * STRIDE - CHIP / 2
            lon, lat = to_wgs.transform(x, y)
            out.append({"chip_id": f"r{r}c{c}", "source": "ortho.tif", "row": r, "col": c, "win_col_off": c * 32.0,
                        "win_row_off": r * 32.0, "win_width": 128.0, "win_height": 128.0, "x": x, "y": y,
                        "lon": lon, "lat": lat, "gsd_m": 0.25, "valid_fraction": 1.0, "minx": x - 32, "miny": y - 32,
                        "maxx": x + 32, "maxy": y + 32})
    return out


def descriptors(n: int, dim: int = 48, seed: int = 0) -> np.ndarray:
    """Structured unit vectors (an 8-d latent space plus noise), as trained encoders produce."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)) @ rng.normal(size=(8, dim)) + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_index(folder, x: np.ndarray, recs: list[dict], kind: str, storage: str, fmt: str):
    """An index folder as `saig index build` writes it, from given descriptors and manifest rows."""
    folder.mkdir(parents=True)
    chunks = lambda: (x[i:i + 700] for i in range(0, len(x), 700))  # noqa: E731
    meta_faiss = search.write_index_files(folder, kind, x.shape[1], len(x), chunks, storage)
    files = meta_faiss.pop("files") + reference.write_manifest(recs, CRS, folder, fmt)
    meta = {"format": "saig-index", "count": len(x), "crs": CRS, "faiss": meta_faiss,
            "grid": {"kind": "projected", "crs": CRS, "chip_size": CHIP, "stride": STRIDE,
                     "origin": [0.0, 0.0], "zoom": None},
            "files": {f: sha256_file(folder / f) for f in files},
            "file_sizes": {f: (folder / f).stat().st_size for f in files}}
    (folder / "metadata.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture
def small_parts(monkeypatch):
    """Parts of 512 rows in row groups of 128, shard indexes of 1000 vectors: several of each."""
    monkeypatch.setattr(reference, "PART_ROWS", 512)
    monkeypatch.setattr(reference, "ROW_GROUP", 128)
    monkeypatch.setattr(search, "SHARD_ROWS", 1000)


def test_an_on_disk_index_is_found_after_its_folder_moves_and_reranks_to_the_exact_top_k(tmp_path, small_parts,
                                                                                         capfd):
    faiss.omp_set_num_threads(1)
    recs, x = records(50, 60), descriptors(3000)
    make_index(tmp_path / "built", x, recs, "pcasq", "disk", "parquet")
    os.replace(tmp_path / "built", tmp_path / "moved")  # as the atomic build publishes its folder
    assert sorted(p.name for p in (tmp_path / "moved").iterdir()) == [
        "chips.parquet", "index.faiss", "index.ivfdata", "metadata.json", "vectors.f16"]
    with reference.open_index(tmp_path / "moved") as ref:
        ivf = faiss.extract_index_ivf(ref.faiss)
        assert ref.count == 3000 and ivf.invlists.is_empty is not None
        assert "OnDisk" in type(faiss.downcast_InvertedLists(ivf.invlists)).__name__
        rng = np.random.default_rng(1)
        q = x[rng.choice(3000, 50, replace=False)] + 0.05 * rng.normal(size=(50, x.shape[1])).astype(np.float32)
        scores, ids = ref.search(q, 10)
    exact = q @ x.T
    truth = np.argsort(-exact, axis=1)[:, :10]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth, strict=True)])
    assert recall >= 0.95
    # reported scores are exact cosines (float16 vectors), best first
    np.testing.assert_allclose(scores, np.take_along_axis(exact, ids, 1), atol=2e-3)
    assert (np.diff(scores, axis=1) <= 0).all()
    assert capfd.readouterr().out == ""  # FAISS's notes went to stderr, not into a JSON-lines stdout


def test_the_geoparquet_manifest_reads_rows_by_id_and_by_window_like_the_geopackage(tmp_path, small_parts):
    recs = records(40, 50)
    reference.write_manifest(recs, CRS, tmp_path, "parquet")
    reference.write_manifest(recs, CRS, tmp_path, "gpkg")
    gpkg = reference.GpkgManifest(tmp_path / "chips.gpkg")
    parquet = reference.ParquetManifest(tmp_path / "chips.parquet")
    assert len(parquet.parts) == 4 and len(parquet.boxes) == 16 and parquet.count == gpkg.count == 2000
    ids = np.random.default_rng(0).choice(2000, 300)
    a, b = gpkg.by_id(ids), parquet.by_id(ids)
    for field in reference.FIELDS:
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert list(b.faiss_id) == list(ids)
    # a window reads only the row groups whose bounding box meets it
    read = []
    original = parquet._group
    parquet._group = lambda n: read.append(n) or original(n)
    bounds = (ORIGIN_X + 100, ORIGIN_Y - 300, ORIGIN_X + 400, ORIGIN_Y - 150)
    w = parquet.in_bounds(bounds)
    inside = gpkg.in_bounds(bounds).faiss_id
    assert sorted(w.faiss_id) == sorted(inside) and len(w) > 0
    assert sorted(read) == sorted(set(inside // 128)) and len(read) < 16
    # the GeoParquet carries its CRS
    import geopandas as gpd

    part = gpd.read_parquet(tmp_path / "chips.parquet" / "part-00000.parquet")
    assert part.crs.to_epsg() == 32633 and part.geometry.geom_type.eq("Point").all() and len(part) == 512


def test_chips_within_a_radius_are_exactly_the_geodesic_ones(tmp_path, small_parts):
    recs, x = records(40, 50), descriptors(2000)
    make_index(tmp_path / "idx", x, recs, "flat", "memory", "parquet")
    with reference.open_index(tmp_path / "idx") as ref:
        lon, lat = recs[1020]["lon"], recs[1020]["lat"]
        chips, dist = ref.chips_within(lon, lat, 150.0)
    lons, lats = np.array([r["lon"] for r in recs]), np.array([r["lat"] for r in recs])
    _, _, d = Geod(ellps="WGS84").inv(np.full(lons.size, lon), np.full(lats.size, lat), lons, lats)
    assert sorted(chips.faiss_id) == sorted(np.flatnonzero(d <= 150.0)) and (dist <= 150.0).all()


@pytest.mark.parametrize("kind,storage,fmt", [("flat", "memory", "gpkg"), ("pcasq", "memory", "gpkg"),
                                              ("ivfpq", "memory", "gpkg"), ("pcasq", "disk", "parquet")])
@pytest.mark.parametrize("window", ["all chips", "neighbourhoods"])
def test_the_heatmap_maximum_is_the_top_candidate_for_every_kind(tmp_path, small_parts, monkeypatch, kind, storage,
                                                                 fmt, window):
    faiss.omp_set_num_threads(1)
    if window == "neighbourhoods":
        monkeypatch.setattr(reference, "HEAT_ALL_MAX", 0)
    recs, x = records(40, 50), descriptors(2000, seed=3)
    make_index(tmp_path / "idx", x, recs, kind, storage, fmt)
    rng = np.random.default_rng(2)
    queries = descriptors(100, seed=4)  # fresh queries: their best chips are often missed by the probed lists
    with reference.open_index(tmp_path / "idx") as ref:
        for q in queries:
            res = reference.query(ref, q[None], 5, heatmap=True)
            assert res.heat_chips is not None and res.heat_scores is not None
            best = int(np.argmax(res.heat_scores))
            assert res.heat_chips.faiss_id[best] == res.ids[0] and res.heat_scores[best] == res.scores[0]
            assert list(res.chips.faiss_id) == list(res.ids)
            if window == "all chips":
                assert len(res.heat_chips) == 2000
            else:  # a window around the candidates, never every chip
                assert 0 < len(res.heat_chips) < 2000
        lon, lat = recs[rng.integers(2000)]["lon"], recs[0]["lat"]
        prior = reference.query(ref, queries[:1], 5, (lon, lat), 120.0, heatmap=True)
        assert prior.distance_m is not None and (prior.distance_m <= 120.0).all()
        assert prior.heat_chips is not None and set(prior.ids) <= set(prior.heat_chips.faiss_id)


def test_a_truncated_vector_file_or_a_resized_big_file_is_an_error_naming_it(tmp_path, small_parts, monkeypatch):
    recs, x = records(20, 25), descriptors(500)
    make_index(tmp_path / "idx", x, recs, "pcasq", "memory", "gpkg")
    with pytest.raises(ValueError, match="vectors.f16.*truncated"):
        search.VectorStore(tmp_path / "idx" / "vectors.f16", 501, x.shape[1])
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "idx", copy)
    with open(copy / "vectors.f16", "ab") as f:
        f.write(b"\0\0")
    monkeypatch.setattr(reference, "VERIFY_MAX_BYTES", 1)  # every file counts as big: size-checked only
    with pytest.raises(IndexFolderError, match=r"vectors\.f16.*bytes"):
        reference.open_index(copy)
