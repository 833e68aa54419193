"""The built-in demo dataset: synthetic music in FMA's layout, real mp3 files.

    python -m mgc_ray.demo --out DIR [--tracks-per-genre 16] [--seconds 15] [--seed 0]

writes `DIR/fma_metadata/tracks.csv` and `genres.csv` in FMA's own format and
`DIR/fma_small/XXX/XXXXXX.mp3`, so the demo goes through the same loader and
cache code as the real dataset. The eight fma_small genres differ the way a
model has to learn (rhythm, tempo, timbre, harmony, texture: see `synth_track`),
while each track draws its own key, tempo, loudness, mix, EQ and noise floor,
so no single statistic such as loudness or spectral centroid tells them apart.

Most tracks are 22,050 Hz mono (the cache rate: small files, a no-op resample);
every eighth track of each genre is 44.1 kHz stereo like real FMA clips (made at
22,050 Hz and upsampled), so the decoder's downmix and the resampler run on the
demo too, on every genre alike. Same seed, same audio: every track draws from
its own seeded generator. The default set (128 tracks x 15 s) takes ~17 s on 2 idle cores.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Sequence

import numpy as np
import pandas as pd

from mgc_ray.config import home
from mgc_ray.data.fma import audio_path, metadata_dir
from mgc_ray.data.synth import GENRES, synth_track
from mgc_ray.errors import Parser, UserError, run_cli
from mgc_ray.files import atomic_text, atomic_write

# FMA's genre ids of the eight fma_small genres (genres.csv; all top level, parent 0).
GENRE_IDS = {
    "Electronic": 15,
    "Experimental": 38,
    "Folk": 17,
    "Hip-Hop": 21,
    "Instrumental": 1235,
    "International": 2,
    "Pop": 10,
    "Rock": 12,
}
MONO_RATE = 22_050  # the cache rate: mono files need no resampling
STEREO_RATE = 44_100  # real FMA clips: 44.1 kHz stereo
STEREO_EVERY = 8  # track j of a genre is stereo when j % 8 == 3 (one in 8, every genre)
MAX_TRACK_ID = 155_066  # the largest fma_small track id: demo ids look like real ones
SPLIT_SHARE = 0.1  # FMA's set.split: ~80/10/10 training/validation/test per genre
MAX_WORKERS = 8  # processes writing tracks; synthesis and mp3 encoding are CPU-bound
PARALLEL_SECONDS = 600  # below this much audio (~25 s of work) starting worker processes costs more than it saves
PARAMS_FILE = "demo.json"  # beside tracks.csv: the settings a demo folder was written with

# tracks.csv's columns, in FMA's order (52; read with header=[0, 1]).
COLUMNS = [
    (group, name)
    for group, names in (
        (
            "album",
            "comments date_created date_released engineer favorites id information listens producer "
            "tags title tracks type",
        ),
        (
            "artist",
            "active_year_begin active_year_end associated_labels bio comments date_created favorites id "
            "latitude location longitude members name related_projects tags website wikipedia_page",
        ),
        ("set", "split subset"),
        (
            "track",
            "bit_rate comments composer date_created date_recorded duration favorites genre_top genres "
            "genres_all information interest language_code license listens lyricist number publisher tags "
            "title",
        ),
    )
    for name in names.split()
]


def default_demo_dir() -> str:
    """Where the demo goes when no --out is given: `<$MGC_HOME>/demo/fma`, where the tune
    command looks for it when no data is given."""
    return str(home() / "demo" / "fma")


def official_splits(n: int, rng: np.random.Generator) -> np.ndarray:
    """FMA-style `set.split` for one genre's n tracks: ~80/10/10, val and test never empty for n >= 3.

    Args:
        n: tracks of the genre.
        rng: generator for the shuffle.

    Returns:
        (n,) array of "training" | "validation" | "test".
    """
    k = max(1, int(np.floor(SPLIT_SHARE * n + 0.5))) if n >= 3 else 0
    out = np.array(["training"] * n, dtype=object)
    order = rng.permutation(n)
    out[order[:k]] = "validation"
    out[order[k : 2 * k]] = "test"
    return out


def demo_tracks(tracks_per_genre: int, seconds: float, seed: int) -> pd.DataFrame:
    """The demo's tracks.csv rows (FMA's columns), indexed by track_id.

    Args:
        tracks_per_genre: tracks of each of the eight genres.
        seconds: clip length (becomes track.duration).
        seed: seed of track ids and splits.

    Returns:
        DataFrame with the MultiIndex columns of FMA's tracks.csv, plus the
        private columns ("demo", "index") (track number within its genre) and
        ("demo", "stereo"), which `write_demo` drops before writing.
    """
    rng = np.random.default_rng([seed, 2017])  # 2017: FMA's year, a fixed stream for ids and splits
    total = tracks_per_genre * len(GENRES)
    ids = np.sort(rng.choice(np.arange(2, MAX_TRACK_ID + 1), size=total, replace=False))
    ids = ids[rng.permutation(total)]  # ids in random order: no id range belongs to a genre
    rows = []
    for g, genre in enumerate(GENRES):
        splits = official_splits(tracks_per_genre, rng)
        for j in range(tracks_per_genre):
            tid = int(ids[g * tracks_per_genre + j])
            artist = g * 100 + j // 4 + 1  # four tracks per artist, as on an album
            gid = GENRE_IDS[genre]
            rows.append(
                {
                    ("album", "id"): artist,
                    ("album", "title"): f"Demo {genre} Album {j // 4 + 1}",
                    ("album", "tracks"): 4,
                    ("album", "type"): "Album",
                    ("artist", "id"): artist,
                    ("artist", "name"): f"Demo {genre} Artist {j // 4 + 1}",
                    ("set", "split"): splits[j],
                    ("set", "subset"): "small",
                    ("track", "bit_rate"): 64000,
                    ("track", "duration"): int(round(seconds)),
                    ("track", "genre_top"): genre,
                    ("track", "genres"): f"[{gid}]",
                    ("track", "genres_all"): f"[{gid}]",
                    ("track", "license"): "Synthetic audio written by mgc_ray.demo",
                    ("track", "number"): j % 4 + 1,
                    ("track", "title"): f"{genre} demo {j + 1:03d}",
                    ("track", "interest"): 0,
                    ("track", "listens"): 0,
                    ("track", "favorites"): 0,
                    ("track", "comments"): 0,
                    ("track", "tags"): "[]",
                    ("album", "tags"): "[]",
                    ("artist", "tags"): "[]",
                    ("demo", "index"): j,
                    ("demo", "stereo"): j % STEREO_EVERY == 3,
                    "track_id": tid,
                }
            )
    df = pd.DataFrame(rows).set_index("track_id").sort_index()
    df.columns = pd.MultiIndex.from_tuples(df.columns)
    return df.reindex(columns=COLUMNS + [("demo", "index"), ("demo", "stereo")])  # unfilled columns: empty


def write_track(root: str, track_id: int, genre: str, index: int, stereo: bool, seconds: float, seed: int) -> str:
    """Synthesise one demo track and write its mp3 atomically (skipped if already there).

    Stereo tracks are synthesised at 22,050 Hz and upsampled to 44.1 kHz: the cache
    rate's band is all a model sees, and the file still exercises the resampler.

    Args:
        root: the demo's FMA root.
        track_id, genre: from `demo_tracks`.
        index: the track's number within its genre (seeds its generator).
        stereo: write 44.1 kHz stereo instead of 22,050 Hz mono.
        seconds, seed: the demo's settings.

    Returns:
        The mp3 path.
    """
    import soundfile as sf
    from scipy.signal import resample_poly

    path = audio_path(root, track_id, "small")
    if os.path.exists(path):  # final names are only ever complete files
        return path
    rng = np.random.default_rng([seed, GENRES.index(genre), index])  # per track: independent of the others
    audio = synth_track(genre, seconds, MONO_RATE, rng, channels=2 if stereo else 1)
    if stereo:
        audio = np.clip(resample_poly(audio, STEREO_RATE // MONO_RATE, 1, axis=0), -1, 1).astype(np.float32)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, lambda tmp: sf.write(tmp, audio, STEREO_RATE if stereo else MONO_RATE, format="MP3"))
    return path


def _genres_csv(counts: dict[str, int]) -> str:
    rows = [(GENRE_IDS[g], counts[g], 0, g, GENRE_IDS[g]) for g in GENRES]
    df = pd.DataFrame(sorted(rows), columns=["genre_id", "#tracks", "parent", "title", "top_level"])
    return df.to_csv(index=False)


def write_demo(
    out: str | os.PathLike, tracks_per_genre: int = 16, seconds: float = 15.0, seed: int = 0, progress: bool = False
) -> str:
    """Write the demo dataset in FMA's layout (idempotent, atomic file by file).

    tracks.csv is written last: a folder with tracks.csv is a finished demo. A
    finished demo with the same settings is left as it is.

    Args:
        out: the demo's FMA root (created).
        tracks_per_genre: tracks of each of the eight genres (>= 3 so every split gets some).
        seconds: clip length in seconds (>= 1).
        seed: same seed, same ids, splits and audio.
        progress: print one line when done.

    Returns:
        The FMA root written (absolute path).

    Raises:
        UserError: bad sizes, or `out` holds other data (another demo or real FMA).
    """
    if tracks_per_genre < 3:
        raise UserError(
            f"--tracks-per-genre {tracks_per_genre} is too small: use 3 or more "
            "(every genre needs a track in training, validation and test)"
        )
    if not seconds >= 1.0:
        raise UserError(f"--seconds {seconds} is too short: use 1 or more (the cache drops clips under 2 s)")
    root = os.path.abspath(os.fspath(out))
    meta = metadata_dir(root)
    params = {"tracks_per_genre": int(tracks_per_genre), "seconds": float(seconds), "seed": int(seed)}
    params_path, tracks_csv = os.path.join(meta, PARAMS_FILE), os.path.join(meta, "tracks.csv")
    if os.path.exists(params_path):
        with open(params_path, encoding="utf-8") as f:
            old = json.load(f)
        if old != params:
            raise UserError(f"{root} holds a demo written with {old}, not {params}; use another --out")
        if os.path.isfile(tracks_csv):
            return root
    elif os.path.exists(tracks_csv):
        raise UserError(f"{root} already holds an FMA dataset that is not this demo; use another --out")
    try:
        os.makedirs(meta, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {root} cannot be created ({exc.strerror}): choose a writable folder") from None
    atomic_text(params_path, json.dumps(params, indent=1) + "\n")

    start = time.perf_counter()
    df = demo_tracks(tracks_per_genre, seconds, seed)
    jobs = [
        (
            root,
            int(tid),
            row[("track", "genre_top")],
            int(row[("demo", "index")]),
            bool(row[("demo", "stereo")]),
            float(seconds),
            int(seed),
        )
        for tid, row in df.iterrows()
    ]
    workers = min(os.cpu_count() or 1, MAX_WORKERS) if len(jobs) * seconds >= PARALLEL_SECONDS else 1
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: safe in a process that already runs threads (Ray, torch)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(write_track, *zip(*jobs)))
    else:
        for job in jobs:
            write_track(*job)
    counts = df[("track", "genre_top")].value_counts().to_dict()
    atomic_text(os.path.join(meta, "genres.csv"), _genres_csv(counts))
    atomic_text(tracks_csv, df[COLUMNS].to_csv())  # last: marks the demo finished
    if progress:
        print(
            f"wrote {len(df)} demo tracks ({tracks_per_genre} x {len(GENRES)} genres x {seconds:g} s) "
            f"to {root} in {time.perf_counter() - start:.1f} s",
            file=sys.stderr,
        )
    return root


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="python -m mgc_ray.demo", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None, help=f"FMA root to write (default {default_demo_dir()})")
    p.add_argument("--tracks-per-genre", type=int, default=16, help="tracks per genre (default 16)")
    p.add_argument("--seconds", type=float, default=15.0, help="clip length in seconds (default 15)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same dataset (default 0)")
    args = p.parse_args(argv)
    root = write_demo(args.out or default_demo_dir(), args.tracks_per_genre, args.seconds, args.seed, progress=True)
    print(root)
    return 0


if __name__ == "__main__":
    run_cli(main)
