"""FMA metadata: the real tracks.csv loads, subsets nest, splits are right, bad metadata is one clear error."""

import doctest
import os

import numpy as np
import pandas as pd
import pytest

from mgc_ray.data import fma
from mgc_ray.errors import UserError

PARTIAL = "fma_metadata/tracks_partial_first682.csv"  # real header + 682 real rows, 58 in fma_small
SMALL_COUNTS = {"Folk": 27, "Rock": 9, "International": 9, "Hip-Hop": 5, "Pop": 4, "Experimental": 4}


@pytest.fixture(scope="module")
def partial_csv(fma_samples):
    return os.path.join(fma_samples, PARTIAL)


def load(fma_samples, partial_csv, **kw):
    return fma.load_dataset(fma_samples, tracks_csv=partial_csv, **kw)


def test_doctests():
    assert doctest.testmod(fma).failed == 0


def test_real_small_subset_counts_and_labels(fma_samples, partial_csv):
    ds = load(fma_samples, partial_csv)
    t = ds.tracks
    assert len(t) == 58 and t.index.name == "track_id" and t.index.is_unique
    assert t["genre"].value_counts().to_dict() == SMALL_COUNTS
    assert ds.label_names == sorted(SMALL_COUNTS)  # stable order: sorted names
    assert [ds.label_names[i] for i in t["label"]] == list(t["genre"])
    assert list(t.columns) == ["genre", "label", "split", "path"]
    assert t.loc[2, "genre"] == "Hip-Hop"
    assert t.loc[2, "path"] == os.path.join(fma_samples, "fma_small", "000", "000002.mp3")
    assert os.path.isfile(t.loc[2, "path"])  # the one real mp3 is where the path says


def test_subsets_nest_as_fma_defines(fma_samples, partial_csv):
    ids = {s: set(load(fma_samples, partial_csv, subset=s).tracks.index) for s in fma.SUBSETS}
    assert ids["small"] < ids["medium"] < ids["large"]
    raw = fma.read_tracks(partial_csv)
    labelled = raw[raw[fma.GENRE_COL].notna()]
    assert len(ids["medium"]) == (labelled[fma.SUBSET_COL].isin(["small", "medium"])).sum() == 194
    assert len(ids["large"]) == len(labelled)  # tracks without genre_top have no label: left out
    medium = load(fma_samples, partial_csv, subset="medium")
    assert medium.tracks["path"].str.contains("/fma_medium/").all()


def test_paper_split_seeded_80_10_10_disjoint(fma_samples, partial_csv):
    a = load(fma_samples, partial_csv, seed=0).tracks["split"]
    b = load(fma_samples, partial_csv, seed=0).tracks["split"]
    c = load(fma_samples, partial_csv, seed=1).tracks["split"]
    pd.testing.assert_series_equal(a, b)
    assert not a.equals(c)
    n = a.value_counts()
    assert (n["train"], n["val"], n["test"]) == (round(0.8 * 58), round(0.1 * 58), 58 - 46 - 6)
    assert set(a) == {"train", "val", "test"}  # one split per track: disjoint by construction


def test_paper_split_stratified_by_genre():
    labels = np.repeat(np.arange(8), 100)
    split = fma.paper_split(labels, seed=3)
    for g in range(8):
        s = pd.Series(split[labels == g]).value_counts()
        assert (s["train"], s["val"], s["test"]) == (80, 10, 10)
    tiny = fma.paper_split(np.repeat(np.arange(8), 4), seed=0)  # 32 tracks: val and test still get 3 each
    assert pd.Series(tiny).value_counts().to_dict() == {"train": 26, "val": 3, "test": 3}


def test_official_split_is_set_split(fma_samples, partial_csv):
    t = load(fma_samples, partial_csv, split="official").tracks
    raw = fma.read_tracks(partial_csv).loc[t.index, fma.SPLIT_COL]
    assert (raw.map(fma.OFFICIAL_SPLITS) == t["split"]).all()
    assert t["split"].value_counts().to_dict() == {"train": 45, "test": 9, "val": 4}


def test_missing_tracks_csv(tmp_path):
    with pytest.raises(UserError, match=r"tracks\.csv is missing"):
        fma.load_dataset(tmp_path)


def test_missing_columns_are_named(tmp_path, partial_csv):
    raw = fma.read_tracks(partial_csv).drop(columns=[fma.SPLIT_COL, fma.GENRE_COL])
    (tmp_path / "fma_metadata").mkdir()
    raw.to_csv(tmp_path / "fma_metadata" / "tracks.csv")
    with pytest.raises(UserError, match=r"set\.split, track\.genre_top"):
        fma.load_dataset(tmp_path)


def test_flat_csv_is_refused(tmp_path):
    (tmp_path / "fma_metadata").mkdir()
    (tmp_path / "fma_metadata" / "tracks.csv").write_text("track_id,genre\n2,Hip-Hop\n5,Hip-Hop\n")
    with pytest.raises(UserError, match="lacks the column"):
        fma.load_dataset(tmp_path)


def test_one_genre_is_refused(fma_samples):
    with pytest.raises(UserError, match="at least two"):  # the real one-row tracks.csv: only Hip-Hop
        fma.load_dataset(fma_samples)


def test_empty_split_is_refused(tmp_path, partial_csv):
    raw = fma.read_tracks(partial_csv)
    raw = raw[raw[fma.SPLIT_COL] != "validation"]
    (tmp_path / "fma_metadata").mkdir()
    raw.to_csv(tmp_path / "fma_metadata" / "tracks.csv")
    with pytest.raises(UserError, match="leaves val empty"):
        fma.load_dataset(tmp_path, split="official")
    assert len(fma.load_dataset(tmp_path, split="paper").tracks) == 54  # the paper split still works


@pytest.mark.parametrize(
    "kw, match", [(dict(subset="tiny"), "unknown subset"), (dict(split="random"), "unknown split")]
)
def test_bad_choices(fma_samples, partial_csv, kw, match):
    with pytest.raises(UserError, match=match):
        load(fma_samples, partial_csv, **kw)
