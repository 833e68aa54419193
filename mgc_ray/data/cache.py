"""The waveform cache, reading side: manifest, shard paths, checks, int16 scaling.

Layout (written by `mgc_ray.prepare`):

    CACHE/manifest.json                  written last: its presence means "complete"
    CACHE/shards/<split>-<NNNNN>.parquet track_id int64, label int32, split string,
                                         num_samples int64, samples list<int16>
    CACHE/shards/<split>-<NNNNN>.json    per-shard sidecar (bad tracks, sums, the parquet's SHA-256),
                                         written after the parquet

Samples are the decoded mono clip at the manifest's `sample_rate`, clipped to
[-1, 1] and stored as round(x * 32768) clipped to the int16 range; divide by
`INT16_SCALE` to get the float waveform back (what `wave_mean` / `wave_std` describe).
The manifest is read once into a frozen `Manifest` and checked.

Integrity: the manifest and every sidecar carry a SHA-256 of their own bytes
(`files.write_sealed_json`), and the manifest the SHA-256 of every shard it lists.
`read_manifest` refuses a manifest whose bytes changed; `verify_shards` hashes the
shards (in threads, at disk speed) before anything trains or scores on them, so a
bad disk or a partial copy is one line naming the shard, never silent damage;
`prepare` re-run on the same folder rebuilds exactly the damaged shards.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

import numpy as np

from mgc_ray.config import CACHE_SCHEMA_VERSION, home
from mgc_ray.errors import UserError
from mgc_ray.files import Damaged, file_sha256, read_json, read_sealed_json

INT16_SCALE = 32768.0  # int16 full scale: float = int16 / 32768, in [-1, 1)
MANIFEST = "manifest.json"
SHARD_DIR = "shards"


def to_int16(x: np.ndarray) -> np.ndarray:
    """Float waveform in [-1, 1] -> int16 (rounded, clipped: +1.0 becomes 32767)."""
    return np.clip(np.round(np.asarray(x, dtype=np.float64) * INT16_SCALE), -32768, 32767).astype(np.int16)


def default_cache_dir(fma_root: str | os.PathLike, subset: str, split: str, data_seed: int, sample_rate: int) -> str:
    """Where a cache goes when no --out is given: one folder per data set and settings.

    Args:
        fma_root: the FMA root (its absolute path is hashed into the name).
        subset, split, data_seed, sample_rate: the cache's settings (data_seed: the paper split's).

    Returns:
        `<$MGC_HOME or DEFAULT_HOME>/caches/<subset>-<split>-s<data_seed>-<rate>-<sha1(root)[:8]>`.
    """
    key = hashlib.sha1(os.path.realpath(os.fspath(fma_root)).encode()).hexdigest()[:8]
    return os.path.join(home(), "caches", f"{subset}-{split}-s{data_seed}-{sample_rate}-{key}")


@dataclass(frozen=True)
class Manifest:
    """A prepared cache's manifest.json, read once and checked (written by `mgc_ray.prepare`).

    Attributes:
        schema_version: CACHE_SCHEMA_VERSION of the code that wrote it.
        sample_rate: the cached waveforms' rate (Hz).
        subset, split_scheme, data_seed: what was cached and how it was split (data_seed: the
            paper split's seed, part of the cache's identity).
        fma_root: where the audio came from.
        label_names: genre names in label order (any number, at least two).
        counts: {split: {genre: tracks}}; num_tracks: {split: tracks}.
        wave_mean, wave_std: the training split's float waveform statistics (the 1D z-score).
        bad_tracks: [{track_id, path, reason, name}] left out; name: the file as its user gave it
            (a collection's path under its folder or as its CSV wrote it, FMA's 6-digit id), absent
            in a manifest written before it was added (`prepare.bad_name` reads either).
        shards: {split: [shard paths relative to the cache folder]}.
        shard_sha256: {shard path relative to the cache folder: SHA-256 of its bytes}.
        min_track_seconds, silence_peak, tracks_per_shard, track_list_sha1: prepare's settings.
        root: the cache folder it was read from (not stored in the file).
    """

    schema_version: int
    sample_rate: int
    subset: str
    split_scheme: str
    data_seed: int
    fma_root: str
    label_names: tuple[str, ...]
    counts: Mapping[str, Mapping[str, int]]
    num_tracks: Mapping[str, int]
    wave_mean: float
    wave_std: float
    bad_tracks: tuple[Mapping[str, Any], ...]
    shards: Mapping[str, tuple[str, ...]]
    min_track_seconds: float
    silence_peak: float
    tracks_per_shard: int
    track_list_sha1: str
    shard_sha256: Mapping[str, str]
    root: str = field(default="", compare=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], root: str = "") -> "Manifest":
        """Check a manifest document's fields and types.

        Raises:
            UserError: another schema version, or a field missing or of the wrong type.
        """
        where = os.path.join(root, MANIFEST) if root else MANIFEST
        version = d.get("schema_version") if isinstance(d, Mapping) else None
        if version != CACHE_SCHEMA_VERSION:
            raise UserError(
                f"{root or 'the cache'} was prepared with cache schema {version}, this code reads "
                f"{CACHE_SCHEMA_VERSION}; run python -m mgc_ray.prepare again into another --out"
            )
        names = [f.name for f in fields(cls) if f.name != "root"]
        missing = [n for n in names if n not in d]
        if missing:
            raise UserError(f"{where} lacks {', '.join(missing)}; prepare the cache again into another --out")
        try:
            m = cls(
                schema_version=int(d["schema_version"]),
                sample_rate=int(d["sample_rate"]),
                subset=str(d["subset"]),
                split_scheme=str(d["split_scheme"]),
                data_seed=int(d["data_seed"]),
                fma_root=str(d["fma_root"]),
                label_names=tuple(str(g) for g in d["label_names"]),
                counts={s: {str(g): int(n) for g, n in c.items()} for s, c in d["counts"].items()},
                num_tracks={s: int(n) for s, n in d["num_tracks"].items()},
                wave_mean=float(d["wave_mean"]),
                wave_std=float(d["wave_std"]),
                bad_tracks=tuple(dict(b) for b in d["bad_tracks"]),
                shards={s: tuple(str(x) for x in v) for s, v in d["shards"].items()},
                min_track_seconds=float(d["min_track_seconds"]),
                silence_peak=float(d["silence_peak"]),
                tracks_per_shard=int(d["tracks_per_shard"]),
                track_list_sha1=str(d["track_list_sha1"]),
                shard_sha256={str(k): str(v) for k, v in d["shard_sha256"].items()},
                root=root,
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise UserError(
                f"{where} has a malformed field ({exc}); prepare the cache again into another --out"
            ) from None
        if len(m.label_names) < 2 or not m.wave_std > 0:
            raise UserError(
                f"{where} holds {len(m.label_names)} genre(s) and waveform std {m.wave_std:g}; "
                "prepare the cache again into another --out"
            )
        return m

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (without `root`)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "root"}
        d["label_names"] = list(self.label_names)
        d["bad_tracks"] = [dict(b) for b in self.bad_tracks]
        d["shards"] = {s: list(v) for s, v in self.shards.items()}
        d["counts"] = {s: dict(c) for s, c in self.counts.items()}
        d["num_tracks"] = dict(self.num_tracks)
        d["shard_sha256"] = dict(self.shard_sha256)
        return d

    @property
    def n_classes(self) -> int:
        return len(self.label_names)

    def shard_paths(self, split: str) -> list[str]:
        """Absolute paths of one split's shards, in order (empty if none)."""
        return [os.path.join(self.root, rel) for rel in self.shards.get(split, ())]


def read_manifest(cache: str | os.PathLike) -> Manifest:
    """The manifest of a prepared cache, checked.

    Raises:
        UserError: the cache is not prepared (no manifest), its manifest is unreadable, of
            another schema version or malformed.
    """
    root = os.path.abspath(os.fspath(cache))
    path = os.path.join(root, MANIFEST)
    if not os.path.isfile(path):
        raise UserError(
            f"{cache} is not a prepared cache (no {MANIFEST}); run "
            f"python -m mgc_ray.prepare --fma-root DIR --out {cache}"
        )
    try:
        doc = read_sealed_json(path)
    except Damaged as exc:
        old = read_json(path)
        if isinstance(old, Mapping) and old.get("schema_version") != CACHE_SCHEMA_VERSION:
            Manifest.from_dict(old, root)  # another schema's (unsealed) manifest: that is the message
        raise UserError(f"{path} is damaged ({exc}): {_REPAIR.format(cache=root)}") from None
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror}); prepare the cache again into another --out") from None
    return Manifest.from_dict(doc, root)


_REPAIR = (
    "run the prepare that made it again on the same folder (python -m mgc_ray.prepare --fma-root DIR "
    "--out {cache}, or the same tune command with --fma-root): it rebuilds only what is damaged"
)
HASH_THREADS = 8  # hashing is I/O then C code that releases the GIL: a few threads keep a disk busy


_HASHED: dict[str, tuple[tuple[int, int, int], str]] = {}  # path -> (its stat key, SHA-256), this process
SETTLED_NS = 1_000_000_000  # a file last written this long before it was hashed is remembered (see below)


def shard_sha256(path: str) -> str:
    """A shard's SHA-256, hashed once per process while the file stays the same.

    `tune --fma-root` confirms the cache (prepare hashes every finished shard) and then
    verifies it before training: without this a 9 GB cache is read twice in a row. A digest
    is remembered only for a file last written over a second before it was hashed, so any
    later write moves its mtime past the remembered one even on a coarse file-system clock;
    a changed inode, size or mtime hashes again.
    """
    return _sha256_once(path)[0]


def _sha256_once(path: str) -> tuple[str, bool]:
    """(SHA-256, whether it was hashed now rather than remembered from earlier in this process)."""
    path = os.path.realpath(path)
    st = os.stat(path)
    key = (st.st_ino, st.st_size, st.st_mtime_ns)
    seen = _HASHED.get(path)
    if seen is not None and seen[0] == key:
        return seen[1], False
    started = time.time_ns()
    digest = file_sha256(path)
    if st.st_mtime_ns < started - SETTLED_NS:
        _HASHED[path] = (key, digest)
    else:
        _HASHED.pop(path, None)
    return digest, True


def verify_shards(manifest: Manifest, splits=None) -> tuple[int, int, float]:
    """Hash every shard of `splits` (default all) against the manifest, before anything reads it.

    Returns:
        (bytes checked, bytes hashed now (the rest was hashed unchanged earlier in this process),
        seconds taken).

    Raises:
        UserError: a shard is missing, truncated or changed: one line naming it and the fix.
    """
    from concurrent.futures import ThreadPoolExecutor

    rels = [rel for s in (splits or manifest.shards) for rel in manifest.shards.get(s, ())]
    start = time.perf_counter()

    def check(rel: str) -> int:
        path = os.path.join(manifest.root, rel)
        want = manifest.shard_sha256.get(rel)
        try:
            got, fresh = _sha256_once(path)
        except OSError as exc:
            raise UserError(
                f"shard {path} cannot be read ({exc.strerror}): {_REPAIR.format(cache=manifest.root)}"
            ) from None
        if got != want:
            raise UserError(
                f"shard {path} is damaged (its SHA-256 differs from the manifest's: changed or "
                f"truncated since prepare wrote it): {_REPAIR.format(cache=manifest.root)}"
            )
        return os.path.getsize(path), fresh

    with ThreadPoolExecutor(max_workers=min(HASH_THREADS, max(1, len(rels)))) as pool:
        sizes = list(pool.map(check, rels))
    return sum(n for n, _ in sizes), sum(n for n, fresh in sizes if fresh), time.perf_counter() - start


def check_cache(cache: str | os.PathLike, sample_rate: int | None = None, split_scheme: str | None = None) -> Manifest:
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
    if sample_rate is not None and manifest.sample_rate != int(sample_rate):
        raise UserError(
            f"{cache} holds {manifest.sample_rate} Hz audio, {sample_rate} Hz is needed; "
            f"run python -m mgc_ray.prepare --sample-rate {sample_rate} into another --out"
        )
    if split_scheme is not None and manifest.split_scheme != split_scheme:
        raise UserError(
            f"{cache} uses the {manifest.split_scheme} split, not {split_scheme}; "
            f"run python -m mgc_ray.prepare --split {split_scheme} into another --out"
        )
    return manifest
