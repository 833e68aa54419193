"""A synthetic waveform cache, written directly in the cache's format (no audio files, no decoding).

    python -m mgc_ray.synth_cache --out DIR [--tracks 8000] [--seconds 30] [--genres-csv FILE] [--data-seed 0]

For scale benchmarks and pipeline tests: FMA small's 8,000 x 30 s cache takes
hours to synthesise and encode as mp3 on 2 cores, and FMA medium's 25,000
tracks more; this writes the same Parquet shards, sidecars and manifest
(`mgc_ray.data.cache`'s layout, shards planned by `prepare.plan_shards`) from random
int16 noise in minutes. The tracks' labels can come from a real genre list
(`--genres-csv`, e.g. tests/data/fma_samples/derived/fma_small_genre_top.csv: filename,genre,
track ids from the file names), so the genre order of real track ids is kept.
The split is the paper's seeded stratified 80/10/10. Not a data set to learn from.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Sequence

import numpy as np
import pandas as pd

from mgc_ray.config import CACHE_SAMPLE_RATE, TRACKS_PER_SHARD
from mgc_ray.data.cache import MANIFEST, Manifest
from mgc_ray.data.fma import Dataset, paper_split
from mgc_ray.errors import Parser, UserError, run_cli
from mgc_ray.files import file_sha256, write_sealed_json
from mgc_ray.prepare import (
    _manifest,
    _shard_files,
    cache_settings,
    plan_shards,
    write_parquet,
)

SUBSET = "synthetic"  # the manifest's subset: no one mistakes this cache for FMA
NOISE_PEAK = 8192  # int16 noise in [-8192, 8192): a quarter of full scale, like loud music's level


def synthetic_dataset(n_tracks: int, n_genres: int = 8, seed: int = 0, genres_csv: str | None = None) -> Dataset:
    """Tracks (genre, label, split, path='') of a synthetic cache.

    Args:
        n_tracks: how many (the first n of `genres_csv` when given).
        n_genres: genres when no list is given (track i gets genre i % n_genres).
        seed: the paper split's seed.
        genres_csv: a `filename,genre` list (FMA's `000/000002.mp3` names give the track ids).
    """
    if genres_csv:
        rows = pd.read_csv(genres_csv).iloc[:n_tracks]
        ids = rows["filename"].str.extract(r"(\d+)\.\w+$")[0].astype("int64").to_numpy()
        genre = rows["genre"].astype(str).to_numpy()
    else:
        ids = np.arange(1, n_tracks + 1, dtype=np.int64)
        genre = np.array([f"genre_{i % n_genres}" for i in range(n_tracks)], dtype=object)
    label_names = sorted(set(genre))
    label = np.searchsorted(np.asarray(label_names), genre).astype(np.int64)
    tracks = pd.DataFrame(
        {"genre": genre, "label": label, "split": paper_split(label, seed).astype(str), "path": [""] * len(ids)},
        index=pd.Index(ids, name="track_id"),
    ).sort_index()
    return Dataset(tracks, label_names)


def _write_one(args) -> dict:
    plan, out, n_samples, settings, seed = args
    rng = np.random.default_rng((seed, int(plan.track_ids[0]) if plan.track_ids else 0, len(plan.track_ids)))
    waves = [rng.integers(-NOISE_PEAK, NOISE_PEAK, n_samples, dtype=np.int16) for _ in plan.track_ids]
    parquet, sidecar = _shard_files(out, plan.name)
    values = write_parquet(parquet, plan.split, list(plan.track_ids), list(plan.labels), waves).astype(np.int64)
    info = {
        "name": plan.name,
        "split": plan.split,
        "settings": settings,
        "track_ids": list(plan.track_ids),
        "good_track_ids": list(plan.track_ids),
        "bad": [],
        "sum": int(values.sum()),
        "sumsq": int(values @ values),
        "count": int(values.size),
        "node_id": None,
        "parquet_sha256": file_sha256(parquet),
    }
    write_sealed_json(sidecar, info)
    return info


def write_synthetic_cache(
    out: str | os.PathLike,
    ds: Dataset,
    seconds: float,
    *,
    sample_rate: int = CACHE_SAMPLE_RATE,
    tracks_per_shard: int = TRACKS_PER_SHARD,
    seed: int = 0,
    workers: int | None = None,
) -> Manifest:
    """Write a complete cache (shards, sidecars, manifest) of noise for `ds`'s tracks.

    Args:
        out: the cache folder (new or empty).
        ds: from `synthetic_dataset`.
        seconds: every clip's length.
        seed: the noise's and the shard order's seed.
        workers: processes writing shards (default: the CPU count).

    Returns:
        The `cache.Manifest` (as `prepare.prepare` writes it, sealed, with the shards' SHA-256).
    """
    out = os.path.abspath(os.fspath(out))
    if os.path.exists(os.path.join(out, MANIFEST)):
        raise UserError(f"{out} holds a cache already: choose another --out")
    settings = cache_settings(ds, sample_rate, SUBSET, "paper", seed, tracks_per_shard)
    plans = plan_shards(ds.tracks, tracks_per_shard, seed)
    n_samples = int(round(seconds * sample_rate))
    jobs = [(p, out, n_samples, settings, seed) for p in plans]
    # spawned, not forked: a caller (a benchmark) may hold CUDA or Ray threads that a fork would copy
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count(), mp_context=mp.get_context("spawn")) as pool:
        infos = {info["name"]: info for info in pool.map(_write_one, jobs)}
    manifest = _manifest(ds, plans, infos, settings, SUBSET, out)
    write_sealed_json(os.path.join(out, MANIFEST), manifest.to_dict())
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="python -m mgc_ray.synth_cache", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="the cache folder to write")
    p.add_argument("--tracks", type=int, default=8000, help="tracks (default 8000, FMA small's count)")
    p.add_argument("--seconds", type=float, default=30.0, help="clip length (default FMA's 30 s)")
    p.add_argument("--genres-csv", help="filename,genre list giving ids and labels (default: 8 genres in turn)")
    p.add_argument("--tracks-per-shard", type=int, default=TRACKS_PER_SHARD)
    p.add_argument("--data-seed", type=int, default=0, help="the split's and the noise's seed (as prepare's)")
    p.add_argument("--workers", type=int, help="writing processes (default: the CPU count)")
    args = p.parse_args(argv)
    if args.tracks < 10 or args.seconds <= 0:
        raise UserError("--tracks must be >= 10 (every split needs a track) and --seconds > 0")
    ds = synthetic_dataset(args.tracks, seed=args.data_seed, genres_csv=args.genres_csv)
    m = write_synthetic_cache(
        args.out, ds, args.seconds, tracks_per_shard=args.tracks_per_shard, seed=args.data_seed, workers=args.workers
    )
    print(f"synth_cache: {sum(m.num_tracks.values())} tracks x {args.seconds:g} s in {args.out}", file=sys.stderr)
    print(args.out)
    return 0


if __name__ == "__main__":
    run_cli(main)
