"""Any collection: a folder per genre or a CSV, through prepare -> tune -> evaluate -> predict as a user runs it."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from mgc_ray.data import collection
from mgc_ray.errors import UserError

FORMATS = (("wav", None), ("flac", None), ("ogg", None), ("au", None), ("mp3", "MP3"))
GENRES = ("blues", "metal", "reggae")  # GTZAN-like names: labels come from the folders, not FMA's eight
RATE = 22_050


def _write_collection(root, tracks_per_genre: int = 8, seconds: float = 3.0) -> dict:
    """root/<genre>/<name>.<ext>, every format in turn; each genre its own timbre (learnable in 2 epochs)."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * RATE)) / RATE
    files = {}
    for g, genre in enumerate(GENRES):
        os.makedirs(root / genre, exist_ok=True)
        for j in range(tracks_per_genre):
            f0 = 110.0 * 2 ** (g * 1.5 + rng.uniform(-0.1, 0.1))
            x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 4)) * 0.2 + 0.01 * rng.standard_normal(len(t))
            ext, fmt = FORMATS[(g * tracks_per_genre + j) % len(FORMATS)]
            path = root / genre / f"{genre}.{j:05d}.{ext}"
            sf.write(path, x.astype(np.float32), RATE, **({"format": fmt} if fmt else {}))
            files[str(path)] = genre
    return files


def test_a_folder_per_genre_gives_its_labels_and_every_format(tmp_path):
    files = _write_collection(tmp_path / "music", tracks_per_genre=5)
    ds = collection.from_folder(tmp_path / "music", "paper", seed=0)
    assert ds.label_names == sorted(GENRES)
    assert set(ds.tracks["path"]) == set(files)
    assert {os.path.splitext(p)[1] for p in ds.tracks["path"]} == {f".{e}" for e, _ in FORMATS}
    assert all(ds.label_names[lab] == files[p] for p, lab in zip(ds.tracks["path"], ds.tracks["label"]))
    assert set(ds.tracks["split"]) == {"train", "val", "test"}
    again = collection.from_folder(tmp_path / "music", "paper", seed=0)
    pd.testing.assert_frame_equal(ds.tracks, again.tracks)  # same files, same ids and split


def test_a_csv_with_artists_keeps_each_artist_in_one_split(tmp_path, capsys):
    rows = [
        {"path": f"a/{i}.wav", "label": ["rock", "jazz", "pop", "folk"][i % 4], "artist": f"artist{i // 3}"}
        for i in range(120)
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "list.csv", index=False)
    ds = collection.from_csv(tmp_path / "list.csv", "artist", seed=0)
    assert ds.label_names == ["folk", "jazz", "pop", "rock"]
    assert ds.tracks.groupby("artist")["split"].nunique().max() == 1, "an artist in two splits"
    assert (ds.tracks["split"] == "train").sum() == pytest.approx(96, abs=3)
    assert ds.tracks["path"].iloc[0].startswith(str(tmp_path)), "relative paths are taken from the CSV's folder"
    assert collection.artist_overlap(ds.tracks)[0] == 0
    paper = collection.load(None, str(tmp_path / "list.csv"), "paper", 0)
    shared, n_test = collection.artist_overlap(paper.tracks)
    assert 0 < shared <= n_test == 12, "a random split lets artists into train and test"
    assert f"{shared} of {n_test} test tracks share an artist" in capsys.readouterr().err


def test_a_csv_split_column_is_used_as_given(tmp_path):
    split = ["train"] * 6 + ["validation", "test"]
    pd.DataFrame({"path": [f"{i}.flac" for i in range(8)], "label": ["x", "y"] * 4, "split": split}).to_csv(
        tmp_path / "s.csv", index=False
    )
    ds = collection.from_csv(tmp_path / "s.csv", "given")
    assert list(ds.tracks["split"]) == ["train"] * 6 + ["val", "test"]


@pytest.mark.parametrize(
    "case, match",
    [
        ("one_genre", "at least two"),
        ("artist_without_column", "needs artists"),
        ("missing_label", "lacks the column"),
        ("bad_split_value", "use train, val or test"),
    ],
)
def test_bad_collections_are_one_clear_error(tmp_path, case, match):
    if case == "one_genre":
        _write_collection(tmp_path / "m", tracks_per_genre=2)
        for g in GENRES[1:]:
            for f in (tmp_path / "m" / g).iterdir():
                f.unlink()
        with pytest.raises(UserError, match=match):
            collection.from_folder(tmp_path / "m")
        return
    frame = {
        "artist_without_column": pd.DataFrame({"path": ["a.wav", "b.wav"], "label": ["x", "y"]}),
        "missing_label": pd.DataFrame({"path": ["a.wav"], "genre": ["x"]}),
        "bad_split_value": pd.DataFrame({"path": ["a.wav", "b.wav"], "label": ["x", "y"], "split": ["train", "dev"]}),
    }
    frame[case].to_csv(tmp_path / "c.csv", index=False)
    split = {"artist_without_column": "artist", "bad_split_value": "given"}.get(case, "paper")
    with pytest.raises(UserError, match=match):
        collection.from_csv(tmp_path / "c.csv", split)


@pytest.mark.slow
def test_folder_per_genre_prepare_tune_evaluate_predict(tmp_path, run_module):
    """A user's own collection of wav/flac/ogg/au/mp3 files, as they would run it."""
    from mlflow.tracking import MlflowClient

    music = tmp_path / "music"
    files = _write_collection(music)
    env = {"MGC_HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1"}
    proc = run_module("mgc_ray.prepare", "--audio-dir", str(music), env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cache = proc.stdout.strip().splitlines()[-1]
    manifest = json.loads(open(os.path.join(cache, "manifest.json")).read())
    assert manifest["label_names"] == sorted(GENRES) and manifest["subset"] == "folder"
    assert sum(manifest["num_tracks"].values()) == len(files) and not manifest["bad_tracks"]

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run_module(
        "mgc_ray.tune",
        "--arch",
        "baseline_a_2d",
        "--audio-dir",
        str(music),
        "--smoke",
        "--num-samples",  # one trial of one epoch: the check is on the collection's path through every command
        "1",
        "--max-epochs",
        "1",
        "--no-dashboard",
        "--mlflow-uri",
        uri,
        "--results-dir",
        str(tmp_path / "results"),
        "--storage-path",
        str(tmp_path / "ray"),
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name("mgc_ray/baseline_a_2d/folder-music")
    runs = c.search_runs([exp.experiment_id], max_results=50)
    parent = [r for r in runs if r.data.tags.get("mgc.source") == "search"][0]
    assert parent.data.params["cache"] == cache, "tune found the cache prepare made: no second decode"

    out = tmp_path / "eval"
    proc = run_module(
        "mgc_ray.evaluate",
        "--run-id",
        parent.info.run_id,
        "--mlflow-uri",
        uri,
        "--out",
        str(out),
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["label_names"] == sorted(GENRES) and metrics["tracks"] == manifest["num_tracks"]["test"]

    some = [p for p in files if p.endswith((".ogg", ".au"))][:2]
    proc = run_module(
        "mgc_ray.predict", *some, "--run-id", parent.info.run_id, "--mlflow-uri", uri, "--json", env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    text = json.dumps(doc)
    assert all(os.path.basename(p) in text for p in some)
    assert any(g in text for g in GENRES), "predictions name the collection's own genres"
