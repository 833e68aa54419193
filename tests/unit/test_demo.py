"""The built-in demo: FMA's format, real mp3s, deterministic, learnable but not by one statistic."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from mgc_ray import demo
from mgc_ray.data import fma
from mgc_ray.errors import UserError


def decode_all(root):
    out = {}
    for tid, path in fma.load_dataset(root).tracks["path"].items():
        x, sr = sf.read(path, dtype="float32")
        out[tid] = (x, sr)
    return out


def test_tracks_csv_has_fma_header(demo_root, fma_samples):
    with open(os.path.join(demo_root, "fma_metadata", "tracks.csv")) as f:
        ours = [next(f) for _ in range(3)]
    with open(os.path.join(fma_samples, "fma_metadata", "tracks.csv")) as f:
        real = [next(f) for _ in range(3)]
    assert ours == real  # the same 52 columns in the same order, the same 3-row header


def test_loads_through_the_fma_loader(demo_root):
    raw = fma.read_tracks(os.path.join(demo_root, "fma_metadata", "tracks.csv"))
    assert raw.columns.tolist() == demo.COLUMNS
    ds = fma.load_dataset(demo_root)
    t = ds.tracks
    assert ds.label_names == sorted(demo.GENRES)
    assert t["genre"].value_counts().to_dict() == {g: 4 for g in demo.GENRES}
    assert t.index.is_unique and t.index.min() >= 2 and t.index.max() <= demo.MAX_TRACK_ID
    assert len({tid // 1000 for tid in t.index}) >= 8  # spread over many XXX folders
    for col in [("track", "duration"), ("track", "title"), ("artist", "name"), ("track", "genres")]:
        assert raw[col].notna().all(), col
    # FMA's set.split: training/validation/test in every genre
    per_genre = raw[("set", "split")].groupby(raw[("track", "genre_top")]).agg(set)
    assert all(s == {"training", "validation", "test"} for s in per_genre)
    assert (raw[("set", "subset")] == "small").all()
    genres = fma.read_genres(os.path.join(demo_root, "fma_metadata", "genres.csv"))
    assert set(genres["title"]) == set(demo.GENRES) and (genres["parent"] == 0).all()
    assert {g: int(i) for i, g in genres["title"].items()} == demo.GENRE_IDS


def test_audio_is_real_mp3_mono_and_stereo(demo_root):
    t = fma.load_dataset(demo_root).tracks
    kinds = set()
    for path in t["path"]:
        info = sf.info(path)
        assert info.format == "MP3"
        assert info.duration == pytest.approx(4.0, abs=0.05)
        kinds.add((info.samplerate, info.channels))
    assert kinds == {(22050, 1), (44100, 2)}
    stereo = t[[sf.info(p).channels == 2 for p in t["path"]]]
    assert sorted(stereo["genre"]) == sorted(demo.GENRES)  # one per genre: the decoder path is no cue
    names = [n for _, _, files in os.walk(demo_root) for n in files]
    assert not [n for n in names if ".tmp" in n]


def test_same_seed_same_audio(tmp_path, demo_root):
    again = demo.write_demo(tmp_path / "again", tracks_per_genre=4, seconds=4.0, seed=0)
    a, b = decode_all(demo_root), decode_all(again)
    assert a.keys() == b.keys()
    for tid in a:
        assert a[tid][1] == b[tid][1] and np.array_equal(a[tid][0], b[tid][0])
    assert set(demo.demo_tracks(4, 4.0, seed=1).index) != set(a)  # another seed: other ids, other audio
    x0, x1 = (demo.synth_track("Rock", 2.0, 22050, np.random.default_rng([s, 7, 0])) for s in (0, 1))
    assert not np.allclose(x0, x1)


def test_resumes_after_a_kill_and_refuses_other_data(tmp_path):
    root = demo.write_demo(tmp_path / "d", tracks_per_genre=3, seconds=2.0, seed=0)
    first = decode_all(root)
    victim = fma.load_dataset(root).tracks["path"].iloc[5]
    os.remove(victim)
    os.remove(os.path.join(root, "fma_metadata", "tracks.csv"))  # as if killed before the end
    demo.write_demo(root, tracks_per_genre=3, seconds=2.0, seed=0)
    again = decode_all(root)
    assert all(np.array_equal(first[t][0], again[t][0]) for t in first)
    with pytest.raises(UserError, match="another --out"):
        demo.write_demo(root, tracks_per_genre=3, seconds=3.0, seed=0)
    real = tmp_path / "real" / "fma_metadata"
    real.mkdir(parents=True)
    (real / "tracks.csv").write_text("x")
    with pytest.raises(UserError, match="not this demo"):
        demo.write_demo(real.parent)


@pytest.fixture(scope="module")
def synth_set():
    """6 clips of 3 s per genre, straight from the synthesiser (no mp3 round trip)."""
    sr, clips, labels = 22050, [], []
    for g, genre in enumerate(demo.GENRES):
        for j in range(6):
            clips.append(demo.synth_track(genre, 3.0, sr, np.random.default_rng([99, g, j])))
            labels.append(g)
    return sr, clips, np.array(labels)


def _spectra(x, w=1024):
    m = len(x) // w
    return np.abs(np.fft.rfft(x[: m * w].reshape(m, w) * np.hanning(w), axis=1)) ** 2


def test_no_single_statistic_separates_genres(synth_set):
    sr, clips, y = synth_set
    f = np.fft.rfftfreq(1024, 1 / sr)
    stats = {
        "rms": np.array([np.sqrt(np.mean(x**2)) for x in clips]),
        "centroid": np.array([np.mean((S * f).sum(1) / (S.sum(1) + 1e-12)) for S in map(_spectra, clips)]),
    }
    for name, v in stats.items():
        means = np.array([v[y == g].mean() for g in range(8)])
        acc = np.mean(np.argmin(np.abs(v[:, None] - means[None]), axis=1) == y)  # nearest genre mean, in sample
        assert acc < 0.45, f"{name} alone classifies {acc:.0%} of the demo (chance 12.5 %)"


def test_genres_are_learnable_from_the_spectrogram(synth_set):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    sr, clips, y = synth_set
    f = np.fft.rfftfreq(1024, 1 / sr)
    edges = np.geomspace(40, 11000, 25)

    def features(x):  # a crude log-mel: band levels, their spread and their frame-to-frame change
        S = _spectra(x)
        bands = np.stack([S[:, (f >= a) & (f < b)].sum(1) for a, b in zip(edges[:-1], edges[1:])], axis=1)
        L = 10 * np.log10(bands + 1e-10)
        return np.concatenate([L.mean(0) - L.mean(), L.std(0), np.abs(np.diff(L, axis=0)).mean(0)])

    X = np.array([features(x) for x in clips])
    X = (X - X.mean(0)) / (X.std(0) + 1e-9)
    acc = cross_val_score(LogisticRegression(max_iter=3000), X, y, cv=StratifiedKFold(3, shuffle=True, random_state=0))
    assert acc.mean() > 0.8


def test_cli_writes_and_errors_are_one_line(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "mgc_ray.demo", "--out", str(out), "--tracks-per-genre", "3", "--seconds", "1"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == str(out)
    assert len(pd.read_csv(out / "fma_metadata" / "tracks.csv", index_col=0, header=[0, 1])) == 24
    for bad in (["--tracks-per-genre", "x"], ["--tracks-per-genre", "2"], ["--seconds", "9"]):
        p = subprocess.run(cmd + bad, capture_output=True, text=True)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert p.stderr.startswith("error: ") and "Traceback" not in p.stderr
