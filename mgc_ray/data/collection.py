"""Any labelled audio collection as the same `fma.Dataset` that FMA's metadata gives.

Two layouts besides FMA's:

    --audio-dir DIR   DIR/<genre>/<any sub-folders>/<file>.{mp3,wav,flac,ogg,au}
                      (GTZAN's layout: the folder names are the labels)
    --csv FILE        a header row, then path,label[,split][,artist]; relative paths are
                      taken from FILE's folder; split is train/val/test (or FMA's
                      training/validation/test)

Labels come from the data (sorted names; any number of genres, at least two).
Track ids are the rows' positions in path order, so the same files give the same
ids; prepare names a track by its file as the user gave it (`Dataset.track_name`:
the path under the folder, or as the CSV wrote it), never by that id. Splits (`--split`):

    paper   the seeded 80/10/10 shuffle stratified by genre (`fma.paper_split`)
    artist  artists shuffled (seeded) and cut at 80/10/10 of the tracks, so each
            artist's tracks sit in one split (needs the CSV's artist column)
    given   the CSV's split column

For a paper split of a collection with artists, `artist_overlap` says how many
test tracks share an artist with the training split (prepare prints it): the
paper's random split lets an artist's other songs into training, which flatters
the test score. The Dataset then goes through prepare, the cache, the manifest
and the search exactly as FMA's does.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pandas as pd

from mgc_ray.config import PAPER_SPLIT, SPLITS
from mgc_ray.data.fma import OFFICIAL_SPLITS, Dataset, paper_split
from mgc_ray.errors import UserError

AUDIO_EXTENSIONS = (".mp3", ".wav", ".flac", ".ogg", ".au")
COLLECTION_SPLITS = ("paper", "artist", "given")
ARTIST_STREAM = 7  # the artist split's own random stream beside the paper split's (same --data-seed)


def from_folder(audio_dir: str | os.PathLike, split: str = "paper", seed: int = 0) -> Dataset:
    """A folder with one sub-folder per genre (GTZAN's layout) as a Dataset.

    Args:
        audio_dir: the folder; each sub-folder's name is a genre, its audio files (any depth) the tracks.
        split: "paper" (the only one without a CSV: no artists, no given split).
        seed: the split's seed.

    Raises:
        UserError: not a folder, fewer than two genres with audio, another split.
    """
    root = os.path.abspath(os.fspath(audio_dir))
    if not os.path.isdir(root):
        raise UserError(f"--audio-dir {audio_dir} is not a folder: give the folder holding one sub-folder per genre")
    if split != "paper":
        raise UserError(
            f"--split {split} needs a CSV with that information (--csv FILE with "
            f"{'an artist' if split == 'artist' else 'a split'} column); a folder per genre takes "
            "--split paper"
        )
    paths, genres = [], []
    for genre in sorted(os.listdir(root)):
        folder = os.path.join(root, genre)
        if not os.path.isdir(folder) or genre.startswith("."):
            continue
        for dirpath, _, files in os.walk(folder):
            for name in files:
                if name.lower().endswith(AUDIO_EXTENSIONS) and not name.startswith("."):
                    paths.append(os.path.join(dirpath, name))
                    genres.append(genre)
    table = pd.DataFrame({"path": paths, "genre": genres, "name": [os.path.relpath(p, root) for p in paths]})
    return _dataset(table, split, seed, f"--audio-dir {root}")


def from_csv(csv: str | os.PathLike, split: str = "paper", seed: int = 0) -> Dataset:
    """A CSV of path,label[,split][,artist] as a Dataset.

    Raises:
        UserError: missing or unreadable file, missing columns, unknown split values,
            fewer than two labels, a split the CSV has no column for.
    """
    csv = os.path.abspath(os.fspath(csv))
    if not os.path.isfile(csv):
        raise UserError(f"--csv {csv} does not exist: give a CSV with a header row path,label[,split][,artist]")
    try:
        rows = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UserError(
            f"cannot read {csv} as CSV ({str(exc).splitlines()[0]}); it needs a header row path,label[,split][,artist]"
        ) from None
    rows.columns = [str(c).strip().lower() for c in rows.columns]
    missing = [c for c in ("path", "label") if c not in rows.columns]
    if missing:
        raise UserError(
            f"{csv} lacks the column(s) {', '.join(missing)}: its header row must name path,label[,split][,artist]"
        )
    base = os.path.dirname(csv)
    table = pd.DataFrame(
        {
            "path": [p if os.path.isabs(p) else os.path.join(base, p) for p in rows["path"].str.strip()],
            "genre": rows["label"].str.strip(),
            "name": rows["path"].str.strip(),  # as the CSV wrote it
        }
    )
    if "artist" in rows.columns:
        table["artist"] = rows["artist"].str.strip().replace("", np.nan)
    if "split" in rows.columns:
        table["given"] = rows["split"].str.strip().str.lower().map(lambda s: OFFICIAL_SPLITS.get(s, s))
    empty = table["path"].eq(base + os.sep) | table["genre"].eq("")
    if empty.any():
        raise UserError(
            f"{csv} row {int(np.flatnonzero(empty)[0]) + 2} has an empty path or label: fill it or drop the row"
        )
    return _dataset(table, split, seed, f"--csv {csv}")


def _dataset(table: pd.DataFrame, split: str, seed: int, source: str) -> Dataset:
    if split not in COLLECTION_SPLITS:
        raise UserError(f"--split {split} is FMA's own; a collection takes one of {', '.join(COLLECTION_SPLITS)}")
    table = table.sort_values("path", kind="stable").reset_index(drop=True)
    if table["path"].duplicated().any():
        raise UserError(
            f"{source} lists {table['path'][table['path'].duplicated()].iloc[0]} twice: keep one row per file"
        )
    label_names = sorted(table["genre"].unique())
    if len(label_names) < 2:
        raise UserError(
            f"{source} has {len(table)} audio file(s) in {len(label_names)} genre(s); a classifier "
            f"needs at least two (audio files: {', '.join(AUDIO_EXTENSIONS)})"
        )
    label = np.searchsorted(np.asarray(label_names), table["genre"].to_numpy()).astype(np.int64)
    if split == "paper":
        splits = paper_split(label, seed)
    elif split == "artist":
        if "artist" not in table or table["artist"].isna().all():
            raise UserError(f"--split artist needs artists: {source} has no artist column (or it is empty)")
        splits = artist_split(table["artist"], seed)
    else:
        if "given" not in table:
            raise UserError(f"--split given needs the CSV's split column: {source} has none")
        bad = sorted(set(table["given"]) - set(SPLITS))
        if bad:
            raise UserError(f"{source}: split column holds {', '.join(map(repr, bad))}; use train, val or test")
        splits = table["given"].to_numpy(dtype=object)
    empty = [s for s in SPLITS if not (splits == s).any()]
    if empty:
        raise UserError(
            f"the {split} split of {source} ({len(table)} tracks) leaves {', '.join(empty)} empty; "
            "add tracks or use another --split"
        )
    tracks = pd.DataFrame(
        {
            "genre": table["genre"].to_numpy(),
            "label": label,
            "split": np.asarray(splits, dtype=str),
            "path": table["path"].to_numpy(),
            "name": table["name"].to_numpy(),
        },
        index=pd.Index(np.arange(len(table), dtype=np.int64), name="track_id"),
    )
    if "artist" in table:
        tracks["artist"] = table["artist"].to_numpy()
    return Dataset(tracks, label_names)


def artist_split(artists: pd.Series, seed: int, fractions: tuple[float, float, float] = PAPER_SPLIT) -> np.ndarray:
    """Each artist's tracks in one split: artists in a seeded order, cut where the tracks reach 80 % and 90 %.

    A track without an artist counts as an artist of its own.

    >>> artist_split(pd.Series(["a", "a", "b", "c", "d", "e", "f", "g", "h", "i"]), 0).tolist().count("train")
    8
    """
    keys = artists.where(
        artists.notna(), "\0track-" + pd.Series(np.arange(len(artists)), index=artists.index).astype(str)
    ).to_numpy(dtype=object)
    names, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    order = np.random.default_rng((int(seed), ARTIST_STREAM)).permutation(len(names))
    before = np.cumsum(counts[order]) - counts[order]  # tracks of the artists ahead of each one in the order
    cut_train, cut_val = fractions[0] * len(keys), (fractions[0] + fractions[1]) * len(keys)
    of_artist = np.empty(len(names), dtype=object)
    of_artist[order] = np.where(
        before < cut_train - 0.5, SPLITS[0], np.where(before < cut_val - 0.5, SPLITS[1], SPLITS[2])
    )
    return of_artist[inverse]


def artist_overlap(tracks: pd.DataFrame) -> tuple[int, int] | None:
    """(test tracks whose artist also has a training track, test tracks), or None without artists."""
    if "artist" not in tracks or tracks["artist"].isna().all():
        return None
    train_artists = set(tracks.loc[tracks["split"] == SPLITS[0], "artist"].dropna())
    test = tracks[tracks["split"] == SPLITS[2]]
    return int(test["artist"].isin(train_artists).sum()), len(test)


def load(audio_dir: str | None, csv: str | None, split: str, seed: int) -> Dataset:
    """The collection named by --audio-dir or --csv, with the artist overlap of a paper split printed."""
    ds = from_folder(audio_dir, split, seed) if audio_dir else from_csv(csv, split, seed)
    overlap = artist_overlap(ds.tracks) if split == "paper" else None
    if overlap is not None:
        shared, n = overlap
        print(
            f"mgc_ray: paper split: {shared} of {n} test tracks share an artist with the training split "
            "(--split artist keeps each artist in one split)",
            file=sys.stderr,
            flush=True,
        )
    return ds


def source_kind(audio_dir: str | None) -> str:
    """The manifest's `subset` of a collection: "folder" or "csv"."""
    return "folder" if audio_dir else "csv"
