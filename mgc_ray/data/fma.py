"""FMA metadata: tracks.csv and genres.csv, subsets, labels, splits, audio paths.

Follows the layout of the FMA archives (mdeff/fma):

    <root>/fma_metadata/tracks.csv    3-row header, read with header=[0, 1]
    <root>/fma_metadata/genres.csv
    <root>/fma_<subset>/<id // 1000:03d>/<id:06d>.mp3

The built-in demo dataset (`mgc_ray.demo`) is written in the same layout and
goes through the same code: there is no special path for it.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
import pandas as pd

from mgc_ray.config import PAPER_SPLIT, SPLITS
from mgc_ray.errors import UserError

SUBSETS = ("small", "medium", "large")  # nested: small < medium < large (FMA's definition)
SPLIT_SCHEMES = ("paper", "official")
# FMA's `set.split` values -> ours.
OFFICIAL_SPLITS = {"training": "train", "validation": "val", "test": "test"}
# The columns the loader needs; every other tracks.csv column is carried along unread.
SUBSET_COL = ("set", "subset")
SPLIT_COL = ("set", "split")
GENRE_COL = ("track", "genre_top")
REQUIRED_COLUMNS = (SUBSET_COL, SPLIT_COL, GENRE_COL)


class Dataset(NamedTuple):
    """A selected subset: one row per labelled track, and the label names.

    Attributes:
        tracks: indexed by track_id (int); columns genre (str), label (int, index
            into label_names), split ("train" | "val" | "test"), path (str, the mp3);
            a collection's also name (str, the file as its user gave it: `track_name`).
        label_names: genre names in label order (sorted, so stable across runs).
    """

    tracks: pd.DataFrame
    label_names: list[str]

    def track_name(self, track_id: int) -> str:
        """A track as its user knows it: a collection's file as given (relative to the folder,
        or as the CSV wrote it), FMA's track id as FMA names its mp3.

        >>> Dataset(pd.DataFrame(index=pd.Index([2], name="track_id")), []).track_name(2)
        '000002'
        """
        if "name" in self.tracks:
            return str(self.tracks.at[track_id, "name"])
        return f"{int(track_id):06d}"


def metadata_dir(root: str | os.PathLike) -> str:
    """The metadata folder of an FMA root: `<root>/fma_metadata`."""
    return os.path.join(os.fspath(root), "fma_metadata")


def audio_path(root: str | os.PathLike, track_id: int, subset: str = "small") -> str:
    """Where FMA keeps the mp3 of a track.

    Args:
        root: the FMA root (holds fma_metadata/ and fma_<subset>/).
        track_id: FMA track id.
        subset: which audio archive (fma_medium also holds the small tracks).

    Returns:
        `<root>/fma_<subset>/<id // 1000:03d>/<id:06d>.mp3`.

    >>> audio_path("/data/fma", 2)
    '/data/fma/fma_small/000/000002.mp3'
    >>> audio_path("/data/fma", 155066, "medium")
    '/data/fma/fma_medium/155/155066.mp3'
    """
    tid = int(track_id)
    return os.path.join(os.fspath(root), f"fma_{subset}", f"{tid // 1000:03d}", f"{tid:06d}.mp3")


def read_tracks(path: str | os.PathLike) -> pd.DataFrame:
    """Read an FMA tracks.csv (two header rows of column names, one of index name).

    Args:
        path: the tracks.csv file.

    Returns:
        DataFrame indexed by track_id with (group, field) MultiIndex columns.

    Raises:
        UserError: the file is missing, unparsable, or lacks a required column.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(
            f"FMA metadata not found: {path} is missing; point --fma-root at the folder "
            "holding fma_metadata/ (or write the demo: python -m mgc_ray.demo --out DIR)"
        )
    try:
        tracks = pd.read_csv(path, index_col=0, header=[0, 1], low_memory=False)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UserError(
            f"cannot parse {path} as FMA's tracks.csv ({str(exc).splitlines()[0]}); "
            "replace it with the file from fma_metadata.zip"
        ) from None
    missing = [".".join(c) for c in REQUIRED_COLUMNS if c not in tracks.columns]
    if missing:
        raise UserError(
            f"{path} lacks the column(s) {', '.join(missing)}; it must be FMA's tracks.csv "
            "(two header rows, e.g. set/subset) from fma_metadata.zip"
        )
    try:
        tracks.index = tracks.index.astype("int64")
    except (ValueError, TypeError):
        raise UserError(
            f"{path}: the first column must be integer track ids; replace it with the file from fma_metadata.zip"
        ) from None
    tracks.index.name = "track_id"
    return tracks


def read_genres(path: str | os.PathLike) -> pd.DataFrame:
    """Read FMA's genres.csv (columns #tracks, parent, title, top_level).

    Args:
        path: the genres.csv file.

    Returns:
        DataFrame indexed by genre_id.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{path} is missing; copy genres.csv from fma_metadata.zip next to tracks.csv")
    return pd.read_csv(path, index_col=0)


def select_subset(tracks: pd.DataFrame, subset: str) -> pd.DataFrame:
    """Tracks of an FMA subset that carry a top-level genre.

    `set.subset` holds the smallest subset a track is in, so medium = small + medium
    and large = every track. Tracks without `track.genre_top` (only in medium and
    large) have no label and are left out.

    Args:
        tracks: from `read_tracks`.
        subset: "small", "medium" or "large".

    Returns:
        The selected rows, sorted by track id.
    """
    if subset not in SUBSETS:
        raise UserError(f"unknown subset {subset!r}; use one of {', '.join(SUBSETS)}")
    wanted = SUBSETS[: SUBSETS.index(subset) + 1]
    rows = tracks[tracks[SUBSET_COL].isin(wanted) & tracks[GENRE_COL].notna()]
    return rows.sort_index()


def paper_split(labels: np.ndarray, seed: int, fractions: tuple[float, float, float] = PAPER_SPLIT) -> np.ndarray:
    """The paper's shuffled 80/10/10 split, stratified by genre, reproducible from a seed.

    Each genre's tracks are shuffled and spread evenly over one ordering (track i of
    n gets the key (i + 0.5) / n), which is then cut at 80 % and 90 %. The split sizes
    are exactly the rounded fractions of the whole subset and every genre lands in
    each split in proportion, so even a small subset gets every genre into val and
    test where it can (a plain shuffle of 100 tracks often leaves a genre out).

    Args:
        labels: (N,) label per track, in a fixed track order (sorted track ids).
        seed: shuffling seed.
        fractions: train, val, test shares (sum 1).

    Returns:
        (N,) array of "train" | "val" | "test".
    """
    n = len(labels)
    rng = np.random.default_rng(seed)
    key = np.empty(n)
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        key[rng.permutation(idx)] = (np.arange(len(idx)) + 0.5) / len(idx)
    tie = rng.permutation(n)  # equal keys (genres of equal size): a random order
    order = np.lexsort((tie, key))
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    out = np.empty(n, dtype=object)
    out[order[:n_train]] = SPLITS[0]
    out[order[n_train : n_train + n_val]] = SPLITS[1]
    out[order[n_train + n_val :]] = SPLITS[2]
    return out


def official_split(values: pd.Series) -> np.ndarray:
    """FMA's own `set.split` (training/validation/test) as train/val/test."""
    unknown = sorted(set(values.dropna().astype(str)) - set(OFFICIAL_SPLITS))
    if unknown or values.isna().any():
        bad = unknown or ["(empty)"]
        raise UserError(
            f"set.split holds {', '.join(bad)}; the official split needs training, validation "
            "or test on every track (or use --split paper)"
        )
    return values.map(OFFICIAL_SPLITS).to_numpy(dtype=object)


def load_dataset(
    fma_root: str | os.PathLike,
    subset: str = "small",
    split: str = "paper",
    seed: int = 0,
    tracks_csv: str | os.PathLike | None = None,
) -> Dataset:
    """Tracks, labels, split and audio path of an FMA subset.

    Args:
        fma_root: folder holding fma_metadata/ and fma_<subset>/.
        subset: "small", "medium" or "large".
        split: "paper" (seeded stratified 80/10/10 shuffle) or "official" (`set.split`).
        seed: seed of the paper split (unused by the official one).
        tracks_csv: another tracks.csv (default `<root>/fma_metadata/tracks.csv`).

    Returns:
        `Dataset(tracks, label_names)`; see `Dataset`.

    Raises:
        UserError: missing or malformed metadata, fewer than two genres, an empty split.
    """
    if split not in SPLIT_SCHEMES:
        raise UserError(f"unknown split {split!r}; use one of {', '.join(SPLIT_SCHEMES)}")
    csv = os.fspath(tracks_csv) if tracks_csv is not None else os.path.join(metadata_dir(fma_root), "tracks.csv")
    rows = select_subset(read_tracks(csv), subset)
    label_names = sorted(rows[GENRE_COL].astype(str).unique())
    if len(label_names) < 2:
        raise UserError(
            f"subset {subset!r} of {csv} has {len(rows)} labelled track(s) in "
            f"{len(label_names)} genre(s); a classifier needs at least two: use a larger subset"
        )
    genre = rows[GENRE_COL].astype(str).to_numpy()
    label = np.searchsorted(np.asarray(label_names), genre).astype(np.int64)
    splits = paper_split(label, seed) if split == "paper" else official_split(rows[SPLIT_COL])
    empty = [s for s in SPLITS if not (splits == s).any()]
    if empty:
        raise UserError(
            f"the {split} split of subset {subset!r} ({len(rows)} tracks) leaves "
            f"{', '.join(empty)} empty; use more tracks or the other --split"
        )
    tracks = pd.DataFrame(
        {
            "genre": genre,
            "label": label,
            "split": splits.astype(str),
            "path": [audio_path(fma_root, tid, subset) for tid in rows.index],
        },
        index=pd.Index(rows.index.to_numpy(dtype=np.int64), name="track_id"),
    )
    return Dataset(tracks, label_names)
