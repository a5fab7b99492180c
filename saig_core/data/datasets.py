"""Cross-view datasets: the public layouts (CVUSA, CVACT, VIGOR) and a generic ``pairs.csv``.

Every loader returns a :class:`CrossViewSplit`: ground query images, an aerial gallery, the
gallery index of each query's positive (and, for VIGOR, its semi-positives). Training draws
(ground, positive aerial) pairs; evaluation encodes the queries and the gallery separately.

Layouts (paths relative to the dataset root unless said otherwise):

* ``pairs.csv`` with a header ``ground_path,aerial_path[,lat,lon]``; paths relative to the CSV's
  folder (absolute paths work too). Rows sharing an aerial image share one gallery entry.
* CVUSA: a splits CSV (``splits/train-19zl.csv``) of ``bingmap/19/X.jpg,streetview/panos/X.jpg,...``.
* CVACT: ``ACT_data.mat`` (``panoIds``, ``utm``, ``trainSet.trainInd``, ``valSet.valInd``, 1-based),
  ``streetview/<id>_grdView.{jpg,png}``, ``satview_polish/<id>_satView_polish.{jpg,png}``.
* VIGOR: ``<city>/panorama/<id>,<lat>,<lon>,.jpg``, ``<city>/satellite/satellite_<lat>_<lon>.png``,
  ``splits/<city>/satellite_list.txt`` and per-panorama lines ``pano sat dy dx sat dy dx ...``
  (positive then three semi-positives) in ``same_area_balanced_{train,test}.txt`` (same-area)
  or ``pano_label_balanced.txt`` (cross-area: NewYork + Seattle train, SanFrancisco + Chicago test).
"""
from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from saig_core.data.transforms import PairTransform
from saig_core.errors import SaigError

IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg")
VIGOR_CITIES = ("NewYork", "Seattle", "SanFrancisco", "Chicago")
VIGOR_CROSS_AREA = {"train": ("NewYork", "Seattle"), "test": ("SanFrancisco", "Chicago")}


class DatasetError(SaigError, ValueError):
    """A dataset file or folder that does not have the expected layout; the message names it."""


@dataclass
class CrossViewSplit:
    """Queries (ground images) against a gallery (aerial images); ``positive[i]`` indexes the gallery."""

    name: str
    ground: list[Path]
    aerial: list[Path]
    positive: list[int]
    semi_positives: list[list[int]] | None = None
    latlon: list[tuple[float, float]] | None = None
    extra: dict = field(default_factory=dict)
    world: list[str] | None = None  # which world (area) each query comes from, for neighbour batches

    def __post_init__(self) -> None:
        if len(self.ground) != len(self.positive):
            raise ValueError("one positive per ground image is needed")
        if not self.ground:
            raise DatasetError(f"{self.name}: the split is empty")

    def __len__(self) -> int:
        return len(self.ground)

    def subset(self, indices: Sequence[int], name: str) -> CrossViewSplit:
        """The queries ``indices`` with a gallery of just the aerial images they reference."""
        indices = list(indices)
        used = sorted({self.positive[i] for i in indices}
                      | {j for i in indices for j in (self.semi_positives[i] if self.semi_positives else [])})
        remap = {old: new for new, old in enumerate(used)}
        return CrossViewSplit(
            name=name,
            ground=[self.ground[i] for i in indices],
            aerial=[self.aerial[j] for j in used],
            positive=[remap[self.positive[i]] for i in indices],
            semi_positives=(
                [[remap[j] for j in self.semi_positives[i]] for i in indices] if self.semi_positives else None
            ),
            latlon=[self.latlon[i] for i in indices] if self.latlon else None,
            world=[self.world[i] for i in indices] if self.world else None,
        )

    def split_off(self, fraction: float, seed: int) -> tuple[CrossViewSplit, CrossViewSplit]:
        """(rest, held-out) with ``fraction`` of the queries held out, chosen by ``seed``.

        Queries are held out by gallery image, so no aerial image is in both parts.
        """
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {fraction}")
        groups = sorted(set(self.positive))
        order = np.random.default_rng(seed).permutation(len(groups))
        n_val = max(1, int(round(fraction * len(groups))))
        if n_val >= len(groups):
            raise DatasetError(f"{self.name}: too few pairs ({len(self)}) to hold out a validation split")
        held = {groups[i] for i in order[:n_val]}
        val = [i for i in range(len(self)) if self.positive[i] in held]
        rest = [i for i in range(len(self)) if self.positive[i] not in held]
        return self.subset(rest, self.name), self.subset(val, f"{self.name}[val]")


# --------------------------------------------------------------------------------------------------
# torch datasets


def sample_rng(seed: int, epoch: int | None, index: int) -> np.random.Generator:
    """The random stream of one sample in one training epoch (``epoch=None``: evaluation).

    Independent of workers, ranks and resumes.
    """
    key = [seed, 0, index] if epoch is None else [seed, 1, epoch, index]
    return np.random.default_rng(key)


def open_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return im
    except FileNotFoundError:
        raise DatasetError(f"{path}: image not found") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the image ({e})") from None


class PairDataset(torch.utils.data.Dataset):
    """Training pairs (ground i, its positive aerial) through a :class:`PairTransform`."""

    def __init__(self, split: CrossViewSplit, transform: PairTransform, seed: int = 0, train: bool = True) -> None:
        self.split, self.transform, self.seed, self.train = split, transform, seed, train
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random stream (and curriculum stage) the training augmentations draw from."""
        self.epoch = epoch
        self.transform.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        g = open_image(self.split.ground[i])
        a = open_image(self.split.aerial[self.split.positive[i]])
        rng = sample_rng(self.seed, self.epoch if self.train else None, i)
        gt, at = self.transform(g, a, rng, self.train)
        return gt, at, i


class QueryDataset(torch.utils.data.Dataset):
    """Evaluation ground queries (fixed per index: a FoV crop's heading is seeded by the index)."""

    def __init__(self, split: CrossViewSplit, transform: PairTransform, seed: int = 0) -> None:
        self.split, self.transform, self.seed = split, transform, seed

    def __len__(self) -> int:
        return len(self.split.ground)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, _ = self.transform.ground(open_image(self.split.ground[i]), sample_rng(self.seed, None, i), train=False)
        return x, i


class GalleryDataset(torch.utils.data.Dataset):
    """Evaluation aerial gallery images."""

    def __init__(self, split: CrossViewSplit, transform: PairTransform) -> None:
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split.aerial)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform.aerial(open_image(self.split.aerial[i]), None), i


# --------------------------------------------------------------------------------------------------
# generic pairs.csv


def load_pairs_csv(path: str | os.PathLike, name: str | None = None) -> CrossViewSplit:
    """A ``ground_path,aerial_path[,lat,lon[,seed]]`` CSV (header required); paths relative to the CSV.

    ``seed`` names the world of a pair (lat/lon of different worlds are unrelated places).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: pairs CSV not found")
    base = path.parent
    ground: list[Path] = []
    aerial: list[Path] = []
    positive: list[int] = []
    latlon: list[tuple[float, float]] = []
    world: list[str] = []
    index: dict[Path, int] = {}
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = set(reader.fieldnames or [])
        if not {"ground_path", "aerial_path"} <= fields:
            raise DatasetError(f"{path}: the header must name ground_path and aerial_path (found {sorted(fields)})")
        has_pos = {"lat", "lon"} <= fields
        for line, row in enumerate(reader, start=2):
            g, a = (row.get("ground_path") or "").strip(), (row.get("aerial_path") or "").strip()
            if not g or not a:
                raise DatasetError(f"{path}, line {line}: ground_path and aerial_path must both be given")
            a_path = (base / a).resolve()
            if a_path not in index:
                index[a_path] = len(aerial)
                aerial.append(a_path)
            ground.append((base / g).resolve())
            positive.append(index[a_path])
            if "seed" in fields:
                world.append(str(row.get("seed") or ""))
            if has_pos:
                try:
                    latlon.append((float(row["lat"]), float(row["lon"])))
                except (TypeError, ValueError):
                    raise DatasetError(
                        f"{path}, line {line}: lat/lon are not numbers: {row['lat']!r}, {row['lon']!r}"
                    ) from None
    return CrossViewSplit(name or path.stem, ground, aerial, positive, latlon=latlon or None, world=world or None)


# --------------------------------------------------------------------------------------------------
# CVUSA


def load_cvusa(root: str | os.PathLike, split_csv: str | os.PathLike) -> CrossViewSplit:
    """CVUSA pairs from a splits CSV (``aerial,ground,...`` per line, relative to ``root``)."""
    root = Path(root)
    split_csv = Path(split_csv) if Path(split_csv).is_absolute() else root / split_csv
    if not split_csv.is_file():
        raise DatasetError(f"{split_csv}: CVUSA splits CSV not found")
    ground, aerial = [], []
    with split_csv.open(newline="") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2:
                raise DatasetError(f"{split_csv}, line {line}: expected 'aerial,ground,...', got {row!r}")
            aerial.append(root / row[0].strip())
            ground.append(root / row[1].strip())
    return CrossViewSplit(f"cvusa:{split_csv.stem}", ground, aerial, list(range(len(ground))))


# --------------------------------------------------------------------------------------------------
# CVACT


def _first_existing(stem: Path) -> Path:
    for suffix in (".jpg", ".png"):
        if stem.with_name(stem.name + suffix).is_file():
            return stem.with_name(stem.name + suffix)
    return stem.with_name(stem.name + ".jpg")  # reported as missing when opened


def _mat_strings(value) -> list[str]:
    """A MATLAB char matrix (loaded as an array of strings) or cell array of strings as Python strings."""
    arr = np.asarray(value)
    if arr.dtype.kind == "U":
        return [str(s).strip() for s in arr.ravel()]
    out = []
    for item in arr.ravel():  # cell array: each cell an array holding one string
        while isinstance(item, np.ndarray):
            item = item.ravel()[0] if item.size else ""
        out.append(str(item).strip())
    return out


def _mat_field(struct, name: str):
    value = struct[name]
    while isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
        value = value.ravel()[0]
    return value


def load_cvact(root: str | os.PathLike, split: str = "train") -> CrossViewSplit:
    """CVACT ``train`` (``trainSet.trainInd``) or ``val`` (``valSet.valInd``, the published CVACT_val)."""
    import scipy.io

    root = Path(root)
    mat_path = root / "ACT_data.mat"
    if not mat_path.is_file():
        raise DatasetError(f"{mat_path}: CVACT ACT_data.mat not found")
    try:
        mat = scipy.io.loadmat(mat_path)
    # scipy raises many unrelated types for a bad file (ValueError, OSError, MatReadError, NotImplementedError
    # for v7.3 HDF5 files, ...); any of them means the same thing here
    except Exception as e:  # noqa: BLE001 - any loadmat failure becomes one clear DatasetError
        raise DatasetError(f"{mat_path}: not a readable MATLAB file ({e})") from None
    split_fields = {"train": ("trainSet", "trainInd"), "val": ("valSet", "valInd")}
    if split not in split_fields:
        raise ValueError(f"CVACT split must be 'train' or 'val', got {split!r}")
    set_name, ind_name = split_fields[split]
    try:
        ids = _mat_strings(mat["panoIds"])
        ind = np.asarray(_mat_field(mat[set_name].ravel()[0], ind_name)).astype(np.int64).ravel() - 1
        utm = np.asarray(mat["utm"], dtype=np.float64) if "utm" in mat else None
    except (KeyError, IndexError, ValueError) as e:
        raise DatasetError(f"{mat_path}: missing or malformed field ({e}); expected panoIds, utm, "
                           f"trainSet.trainInd, valSet.valInd") from None
    if len(ind) and (ind.min() < 0 or ind.max() >= len(ids)):
        raise DatasetError(f"{mat_path}: {set_name}.{ind_name} holds indices outside 1..{len(ids)}")
    ground = [_first_existing(root / "streetview" / f"{ids[i]}_grdView") for i in ind]
    aerial = [_first_existing(root / "satview_polish" / f"{ids[i]}_satView_polish") for i in ind]
    split_obj = CrossViewSplit(f"cvact:{split}", ground, aerial, list(range(len(ground))))
    if utm is not None and utm.shape[0] == len(ids):
        split_obj.extra["utm"] = utm[ind].tolist()
    return split_obj


# --------------------------------------------------------------------------------------------------
# VIGOR


def vigor_latlon(name: str) -> tuple[float, float]:
    """(lat, lon) from a VIGOR file name: ``<id>,<lat>,<lon>,.jpg`` or ``satellite_<lat>_<lon>.png``."""
    stem = Path(name).name
    try:
        if stem.startswith("satellite_"):
            lat, lon = stem[len("satellite_"):].rsplit(".", 1)[0].split("_")[:2]
        else:
            lat, lon = stem.split(",")[1:3]
        return float(lat), float(lon)
    except ValueError:
        raise DatasetError(f"{name}: not a VIGOR file name with a latitude and longitude") from None


def load_vigor(root: str | os.PathLike, mode: str = "same_area", split: str = "train",
               cities: Sequence[str] | None = None) -> CrossViewSplit:
    """VIGOR same-area or cross-area ``train``/``test``, gallery = every satellite image of the cities."""
    root = Path(root)
    if mode not in ("same_area", "cross_area"):
        raise ValueError(f"VIGOR mode must be 'same_area' or 'cross_area', got {mode!r}")
    if split not in ("train", "test"):
        raise ValueError(f"VIGOR split must be 'train' or 'test', got {split!r}")
    if cities is None:
        cities = VIGOR_CITIES if mode == "same_area" else VIGOR_CROSS_AREA[split]
    aerial: list[Path] = []
    sat_index: dict[tuple[str, str], int] = {}
    for city in cities:
        listing = root / "splits" / city / "satellite_list.txt"
        if not listing.is_file():
            raise DatasetError(f"{listing}: VIGOR satellite list not found")
        for name in listing.read_text().split():
            sat_index[(city, Path(name).name)] = len(aerial)
            aerial.append(root / city / "satellite" / Path(name).name)
    ground, positive, semis, latlon = [], [], [], []
    for city in cities:
        label_file = root / "splits" / city / (
            f"same_area_balanced_{split}.txt" if mode == "same_area" else "pano_label_balanced.txt")
        if not label_file.is_file():
            raise DatasetError(f"{label_file}: VIGOR label file not found")
        for line_no, line in enumerate(label_file.read_text().splitlines(), start=1):
            tokens = line.split()
            if not tokens:
                continue
            if len(tokens) < 13:
                raise DatasetError(f"{label_file}, line {line_no}: expected a panorama and 4 x (satellite, dy, dx)")
            sats = []
            for k in range(4):
                key = (city, Path(tokens[1 + 3 * k]).name)
                if key not in sat_index:
                    raise DatasetError(f"{label_file}, line {line_no}: {key[1]} is not in {city}'s satellite_list.txt")
                sats.append(sat_index[key])
            pano = Path(tokens[0]).name
            ground.append(root / city / "panorama" / pano)
            positive.append(sats[0])
            semis.append(sats[1:])
            latlon.append(vigor_latlon(pano))
    return CrossViewSplit(f"vigor:{mode}:{split}", ground, aerial, positive, semi_positives=semis, latlon=latlon)


def encode_split(model, split: CrossViewSplit, transform: PairTransform, batch_size: int, device,
                 num_workers: int = 0, seed: int = 0, precision: str = "auto",
                 shard: tuple[int, int] = (0, 1)) -> tuple[torch.Tensor, torch.Tensor]:
    """Descriptors of the queries and the gallery of ``split`` (this rank's shard when ``shard`` = (rank, world))."""
    from saig_core.runtime.device import autocast

    rank, world = shard
    out = []
    for ds, encode in ((QueryDataset(split, transform, seed), model.encode_ground),
                       (GalleryDataset(split, transform), model.encode_aerial)):
        idx = list(range(rank, len(ds), world))
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, idx), batch_size=batch_size,
                                             num_workers=num_workers, shuffle=False)
        chunks = []
        with torch.no_grad():
            for x, _ in loader:
                with autocast(device, precision):
                    chunks.append(encode(x.to(device, non_blocking=True)).float())
        out.append(torch.cat(chunks) if chunks else torch.zeros(0, model.descriptor_dim, device=device))
    return out[0], out[1]


__all__ = [
    "CrossViewSplit", "DatasetError", "PairDataset", "QueryDataset", "GalleryDataset", "load_pairs_csv",
    "load_cvusa", "load_cvact", "load_vigor", "vigor_latlon", "encode_split", "sample_rng",
]
