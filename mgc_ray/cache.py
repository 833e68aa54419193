"""The waveform cache, reading side: manifest, shard paths, checks, int16 scaling.

Layout (written by `mgc_ray.prepare`):

    CACHE/manifest.json                  written last: its presence means "complete"
    CACHE/shards/<split>-<NNNNN>.parquet track_id int64, label int32, split string,
                                         num_samples int64, samples list<int16>
    CACHE/shards/<split>-<NNNNN>.json    per-shard sidecar (bad tracks, sums), written after the parquet

Samples are the decoded mono clip at the manifest's `sample_rate`, clipped to
[-1, 1] and stored as round(x * 32768) clipped to the int16 range; divide by
`INT16_SCALE` to get the float waveform back (what `wave_mean` / `wave_std` describe).
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from mgc_ray.config import CACHE_SCHEMA_VERSION, home
from mgc_ray.errors import UserError

INT16_SCALE = 32768.0  # int16 full scale: float = int16 / 32768, in [-1, 1)
MANIFEST = "manifest.json"
SHARD_DIR = "shards"


def to_int16(x: np.ndarray) -> np.ndarray:
    """Float waveform in [-1, 1] -> int16 (rounded, clipped: +1.0 becomes 32767)."""
    return np.clip(np.round(np.asarray(x, dtype=np.float64) * INT16_SCALE), -32768, 32767).astype(np.int16)


def to_float(samples: np.ndarray) -> np.ndarray:
    """int16 samples -> float32 waveform in [-1, 1)."""
    return np.asarray(samples, dtype=np.int16).astype(np.float32) / np.float32(INT16_SCALE)


def default_cache_dir(fma_root: str | os.PathLike, subset: str, split: str, seed: int, sample_rate: int) -> str:
    """Where a cache goes when no --out is given: one folder per data set and settings.

    Args:
        fma_root: the FMA root (its absolute path is hashed into the name).
        subset, split, seed, sample_rate: the cache's settings.

    Returns:
        `<$MGC_HOME or DEFAULT_HOME>/caches/<subset>-<split>-s<seed>-<rate>-<sha1(root)[:8]>`.
    """
    key = hashlib.sha1(os.path.realpath(os.fspath(fma_root)).encode()).hexdigest()[:8]
    return os.path.join(home(), "caches", f"{subset}-{split}-s{seed}-{sample_rate}-{key}")


def read_manifest(cache: str | os.PathLike) -> dict:
    """The manifest of a prepared cache.

    Args:
        cache: the cache folder.

    Returns:
        The manifest dict (keys: see `mgc_ray.prepare.prepare`).

    Raises:
        UserError: the cache is not prepared (no manifest) or its manifest is unreadable.
    """
    path = os.path.join(os.fspath(cache), MANIFEST)
    if not os.path.isfile(path):
        raise UserError(f"{cache} is not a prepared cache (no {MANIFEST}); run "
                        f"python -m mgc_ray.prepare --fma-root DIR --out {cache}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path} ({exc}); prepare the cache again into another --out") from None


def shard_paths(cache: str | os.PathLike, split: str) -> list[str]:
    """Absolute paths of one split's shards, in order.

    Args:
        cache: the cache folder.
        split: "train", "val" or "test".

    Returns:
        The shard paths the manifest lists for `split` (empty if none).
    """
    manifest = read_manifest(cache)
    root = os.path.abspath(os.fspath(cache))
    return [os.path.join(root, rel) for rel in manifest["shards"].get(split, [])]


def check_cache(cache: str | os.PathLike, sample_rate: int | None = None, split_scheme: str | None = None) -> dict:
    """Check that a cache is prepared, of this code's layout and of the settings asked for.

    Args:
        cache: the cache folder.
        sample_rate: the rate the caller needs (None: any).
        split_scheme: "paper" or "official" (None: any).

    Returns:
        The manifest.

    Raises:
        UserError: no manifest, another schema version, another sample rate or split scheme.
    """
    manifest = read_manifest(cache)
    version = manifest.get("schema_version")
    if version != CACHE_SCHEMA_VERSION:
        raise UserError(f"{cache} was prepared with cache schema {version}, this code reads {CACHE_SCHEMA_VERSION}; "
                        "run python -m mgc_ray.prepare again into another --out")
    if sample_rate is not None and int(manifest["sample_rate"]) != int(sample_rate):
        raise UserError(f"{cache} holds {manifest['sample_rate']} Hz audio, {sample_rate} Hz is needed; "
                        f"run python -m mgc_ray.prepare --sample-rate {sample_rate} into another --out")
    if split_scheme is not None and manifest["split_scheme"] != split_scheme:
        raise UserError(f"{cache} uses the {manifest['split_scheme']} split, not {split_scheme}; "
                        f"run python -m mgc_ray.prepare --split {split_scheme} into another --out")
    return manifest
