"""Dataset layouts on tiny fixture trees built here (and the real CVUSA samples when present)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from crossview_fixtures import write_pairs, write_vigor
from PIL import Image

from saig_core.data.datasets import (
    DatasetError,
    PairDataset,
    QueryDataset,
    load_cvact,
    load_cvusa,
    load_pairs_csv,
    load_vigor,
    vigor_latlon,
)
from saig_core.data.transforms import AugmentConfig, PairTransform

T = PairTransform((32, 128), (64, 64), AugmentConfig())


def _img(path: Path, size=(40, 20), value=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 255 - value, 7)).save(path)
    return path


def test_pairs_csv_resolves_paths_against_the_csv_and_shares_repeated_aerial_images(tmp_path):
    _img(tmp_path / "g" / "a.jpg")
    _img(tmp_path / "g" / "b.jpg")
    _img(tmp_path / "s" / "x.png")
    (tmp_path / "pairs.csv").write_text("ground_path,aerial_path,lat,lon\ng/a.jpg,s/x.png,45.5,7.25\n"
                                        "g/b.jpg,s/x.png,45.6,7.5\n")
    split = load_pairs_csv(tmp_path / "pairs.csv")
    assert split.ground == [tmp_path / "g" / "a.jpg", tmp_path / "g" / "b.jpg"]
    assert split.aerial == [tmp_path / "s" / "x.png"] and split.positive == [0, 0]
    assert split.latlon == [(45.5, 7.25), (45.6, 7.5)]
    g, a, i = PairDataset(split, T)[1]
    assert g.shape == (3, 32, 128) and a.shape == (3, 64, 64) and i == 1


def test_pairs_csv_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("photo,chip\na,b\n")
    with pytest.raises(DatasetError, match="bad.csv.*ground_path"):
        load_pairs_csv(bad)
    bad.write_text("ground_path,aerial_path,lat,lon\na.jpg,b.jpg,north,7\n")
    with pytest.raises(DatasetError, match="line 2.*not numbers"):
        load_pairs_csv(bad)
    with pytest.raises(DatasetError, match="not found"):
        load_pairs_csv(tmp_path / "absent.csv")
    bad.write_text("ground_path,aerial_path\nmissing.jpg,missing.png\n")
    with pytest.raises(DatasetError, match="missing.jpg: image not found"):
        PairDataset(load_pairs_csv(bad), T)[0]


def test_validation_split_is_held_out_by_aerial_image_and_seeded(tmp_path):
    split = load_pairs_csv(write_pairs(tmp_path, 20, seed=0))
    rest, val = split.split_off(0.25, seed=1)
    assert len(val) == 5 and len(rest) == 15
    assert not set(rest.aerial) & set(val.aerial)
    assert [val.aerial[p] for p in val.positive] == [split.aerial[split.ground.index(g)] for g in val.ground]
    assert split.split_off(0.25, seed=1)[1].ground == val.ground != split.split_off(0.25, seed=2)[1].ground


def test_cvusa_layout_from_a_splits_csv(tmp_path):
    for i in range(3):
        _img(tmp_path / "bingmap" / "19" / f"{i:07d}.jpg", (75, 75))
        _img(tmp_path / "streetview" / "panos" / f"{i:07d}.jpg", (123, 22))
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train-19zl.csv").write_text("".join(
        f"bingmap/19/{i:07d}.jpg,streetview/panos/{i:07d}.jpg,annotations/{i:07d}.png\n" for i in range(3)))
    split = load_cvusa(tmp_path, "splits/train-19zl.csv")
    assert len(split) == 3 and split.positive == [0, 1, 2]
    assert split.aerial[2] == tmp_path / "bingmap" / "19" / "0000002.jpg"
    g, a, _ = PairDataset(split, T)[2]
    assert g.shape == (3, 32, 128) and a.shape == (3, 64, 64)


@pytest.mark.shared_data
def test_real_cvusa_samples_load_through_the_cvusa_loader(shared_data, tmp_path):
    root = shared_data / "crossview" / "cvusa_crossnet"
    splits = tmp_path / "samples.csv"
    with splits.open("w", newline="") as f:
        csv.writer(f).writerows([[f"aerial{i}.jpg", f"ground{i}.jpg", f"label{i}.png"] for i in range(5)])
    split = load_cvusa(root, splits)
    assert len(split) == 5
    with Image.open(split.aerial[0]) as a, Image.open(split.ground[0]) as g:
        assert a.size == (750, 750) and g.size == (1232, 224)
    full = PairTransform((128, 512), (256, 256), AugmentConfig(shift=True, jitter=0.1))
    g, a, _ = PairDataset(split, full)[4]
    assert g.shape == (3, 128, 512) and a.shape == (3, 256, 256)
    assert g.min() >= -1 and g.max() <= 1 and g.std() > 0.1


def _write_cvact(root: Path, ids: list[str], cell_array: bool) -> None:
    pano_ids = np.empty((len(ids), 1), dtype=object) if cell_array else np.array(ids)
    if cell_array:
        for i, s in enumerate(ids):
            pano_ids[i, 0] = s
    scipy.io.savemat(root / "ACT_data.mat", {
        "panoIds": pano_ids,
        "utm": np.arange(2 * len(ids), dtype=float).reshape(-1, 2),
        "trainSet": {"trainInd": np.array([[1], [2], [4]])},
        "valSet": {"valInd": np.array([[3]])},
    })


@pytest.mark.parametrize("cell_array", [True, False])
def test_cvact_layout_with_mat_indices_and_jpg_or_png_images(tmp_path, cell_array):
    ids = ["aaaaaaaaaaaaaaaaaaaaa1", "aaaaaaaaaaaaaaaaaaaaa2", "aaaaaaaaaaaaaaaaaaaaa3", "aaaaaaaaaaaaaaaaaaaaa4"]
    _write_cvact(tmp_path, ids, cell_array)
    for k, pid in enumerate(ids):
        ext = ".jpg" if k % 2 else ".png"
        _img(tmp_path / "streetview" / f"{pid}_grdView{ext}", (64, 32))
        _img(tmp_path / "satview_polish" / f"{pid}_satView_polish{ext}", (48, 48))
    train = load_cvact(tmp_path, "train")
    val = load_cvact(tmp_path, "val")
    assert [p.name for p in train.ground] == [f"{ids[0]}_grdView.png", f"{ids[1]}_grdView.jpg", f"{ids[3]}_grdView.jpg"]
    assert [p.name for p in val.aerial] == [f"{ids[2]}_satView_polish.png"]
    assert train.extra["utm"][2] == [6.0, 7.0]
    g, a, _ = PairDataset(train, T)[2]
    assert g.shape == (3, 32, 128) and a.shape == (3, 64, 64)


def test_cvact_missing_mat_file_is_named(tmp_path):
    with pytest.raises(DatasetError, match="ACT_data.mat"):
        load_cvact(tmp_path)


def test_vigor_same_area_and_cross_area_with_semi_positives(tmp_path):
    write_vigor(tmp_path)
    same = load_vigor(tmp_path, "same_area", "train", cities=["NewYork", "Chicago"])
    assert len(same) == 4 and len(same.aerial) == 10
    assert same.positive == [0, 1, 5, 6] and same.semi_positives[1] == [2, 3, 4]
    assert same.latlon[0] == pytest.approx((40.7001, -73.0))
    cross = load_vigor(tmp_path, "cross_area", "test", cities=["Chicago"])
    assert len(cross) == 3 and len(cross.aerial) == 5 and cross.semi_positives[2] == [3, 4, 0]
    q, _ = QueryDataset(cross, T)[0]
    assert q.shape == (3, 32, 128)
    val = same.subset([1], "one")
    assert val.aerial == [same.aerial[j] for j in (1, 2, 3, 4)]
    assert val.positive == [0] and val.semi_positives == [[1, 2, 3]]


def test_vigor_file_names_carry_positions_and_bad_lines_are_named(tmp_path):
    assert vigor_latlon("satellite_40.712345_-74.001234.png") == (40.712345, -74.001234)
    assert vigor_latlon("abcDEF,40.7,-74.0,.jpg") == (40.7, -74.0)
    write_vigor(tmp_path)
    (tmp_path / "splits" / "Chicago" / "pano_label_balanced.txt").write_text("pano.jpg satellite_x.png 0 0\n")
    with pytest.raises(DatasetError, match="pano_label_balanced.txt, line 1"):
        load_vigor(tmp_path, "cross_area", "test", cities=["Chicago"])


def test_training_samples_are_reproducible_per_epoch_and_differ_between_epochs(tmp_path):
    split = load_pairs_csv(write_pairs(tmp_path, 4, seed=0))
    ds = PairDataset(split, PairTransform((32, 128), (64, 64), AugmentConfig(shift=True, jitter=0.3)), seed=3)
    first = ds[2][0]
    assert torch.equal(first, ds[2][0])
    ds.set_epoch(1)
    assert not torch.equal(first, ds[2][0])
