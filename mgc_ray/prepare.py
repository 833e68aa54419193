"""Decode every track once into int16 Parquet shards with a manifest, as Ray tasks.

    python -m mgc_ray.prepare --fma-root DIR [--subset small] [--out CACHE] [--sample-rate 22050]
                              [--split paper|official] [--data-seed 0] [--address ADDR]
    python -m mgc_ray.prepare --audio-dir DIR | --csv FILE [--split paper|artist|given] ...

Any collection: --audio-dir (one sub-folder per genre) or --csv (path,label[,split][,artist]);
see `mgc_ray.data.collection`. The same cache and manifest follow.

One Ray task per shard (TRACKS_PER_SHARD tracks of one split, in a seeded
random order: neighbouring track ids often share a genre, so shards of
consecutive ids would give genre-correlated blocks), so a cluster shares the decoding; the driver only plans, tallies and
writes the manifest. Layout: see `mgc_ray.data.cache`.

Idempotent and atomic: each task writes its parquet, then a JSON sidecar (bad
tracks, sample sums, the parquet's SHA-256), both under temporary names renamed
into place; a shard counts as done only when both are there, the sidecar's own
checksum holds, the parquet's bytes match its SHA-256 and the settings agree, so
a re-run redoes exactly what a killed run left unfinished or a bad disk damaged.
manifest.json (sealed with its own checksum, see `mgc_ray.data.cache`) is written last. A cache made with other settings is refused, never mixed.

Decoding: `mgc_ray.data.audio.decode_audio`. Bad tracks (missing, empty, undecodable,
shorter than MIN_TRACK_SECONDS, silent) are reported and skipped.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from mgc_ray import cluster
from mgc_ray.config import (
    CACHE_SAMPLE_RATE,
    CACHE_SCHEMA_VERSION,
    FMA_ROOT_ENV,
    MIN_TRACK_SECONDS,
    SILENCE_PEAK,
    SPLITS,
    TRACKS_PER_SHARD,
    ray_address,
)
from mgc_ray.data import collection
from mgc_ray.data.audio import decode_audio
from mgc_ray.data.cache import (
    INT16_SCALE,
    MANIFEST,
    SHARD_DIR,
    Manifest,
    default_cache_dir,
    shard_sha256,
    to_int16,
)
from mgc_ray.data.collection import COLLECTION_SPLITS
from mgc_ray.data.fma import SPLIT_SCHEMES, SUBSETS, load_dataset
from mgc_ray.errors import Parser, UserError, run_cli
from mgc_ray.files import (
    Damaged,
    atomic_write,
    clean_temporaries,
    file_sha256,
    read_json,
    read_sealed_json,
    write_sealed_json,
)

# Tasks return small dicts and write their shards to disk: the object store barely
# holds anything, so a local Ray needs little of it (75 MiB is Ray's minimum).
OBJECT_STORE_BYTES = 128 * 2**20
TASK_RETRIES = 2  # a shard task whose worker died (OOM, node lost) is retried this often
SHARD_ORDER_STREAM = 12  # the shard order's own random stream beside the split's (same --data-seed, other draws)
BAD_KINDS = ("missing", "empty", "undecodable", "too short", "silent")  # the summary's order


@dataclass(frozen=True)
class ShardPlan:
    """One shard's work: its name, split and tracks (parallel tuples, in the shard's seeded order)."""

    name: str
    split: str
    track_ids: tuple[int, ...]
    labels: tuple[int, ...]
    paths: tuple[str, ...]


def plan_shards(tracks, tracks_per_shard: int = TRACKS_PER_SHARD, seed: int = 0) -> list[ShardPlan]:
    """Deterministic shard assignment: by split, then a seeded random order of the split's tracks, in chunks.

    FMA's neighbouring track ids share a genre far more often than chance (71 % of
    neighbouring fma_small training tracks), so a shard of consecutive ids is a block of
    few genres; in a seeded random order every shard holds every genre in about its
    share, and a bounded shuffle window over the blocks gives batches mixed as by
    independent sampling.

    Args:
        tracks: `fma.load_dataset(...).tracks` (index track_id; label, split, path).
        tracks_per_shard: tracks per shard (the last of a split may hold fewer).
        seed: the order's seed (prepare's --data-seed; the same tracks and seed give the same shards).

    Returns:
        Shards named `<split>-<NNNNN>`, numbered from 0 within each split.
    """
    plans = []
    for i, split in enumerate(SPLITS):
        rows = tracks[tracks["split"] == split].sort_index()
        rows = rows.iloc[np.random.default_rng((int(seed), SHARD_ORDER_STREAM, i)).permutation(len(rows))]
        for n, start in enumerate(range(0, len(rows), tracks_per_shard)):
            chunk = rows.iloc[start : start + tracks_per_shard]
            plans.append(
                ShardPlan(
                    f"{split}-{n:05d}",
                    split,
                    tuple(int(i) for i in chunk.index),
                    tuple(int(x) for x in chunk["label"]),
                    tuple(str(p) for p in chunk["path"]),
                )
            )
    return plans


def check_track(path: str, sample_rate: int) -> tuple[np.ndarray | None, str | None]:
    """Decode a track and judge it: (waveform, None) if good, (None, "kind: detail") if bad.

    Args:
        path: the track's audio file.
        sample_rate: the cache rate.

    Returns:
        The waveform or the reason it is bad; the kind is one of BAD_KINDS.
    """
    if not os.path.isfile(path):
        return None, "missing: no such file"
    if os.path.getsize(path) == 0:
        return None, "empty: 0-byte file"
    try:
        x = decode_audio(path, sample_rate)
    except ValueError as exc:
        return None, f"undecodable: {exc}"
    if len(x) == 0:
        return None, "empty: no audio frames"
    if len(x) < MIN_TRACK_SECONDS * sample_rate:
        return None, f"too short: {len(x) / sample_rate:.2f} s < {MIN_TRACK_SECONDS:g} s"
    peak = float(np.abs(x).max())
    if peak < SILENCE_PEAK:
        return None, f"silent: peak {peak:.1e} < {SILENCE_PEAK:.0e}"
    return x, None


def _shard_files(out: str, name: str) -> tuple[str, str]:
    base = os.path.join(out, SHARD_DIR, name)
    return base + ".parquet", base + ".json"


def write_shard(plan: ShardPlan, out: str, sample_rate: int, settings: dict) -> dict:
    """Decode one shard's tracks and write its parquet, then its sidecar (the Ray task body).

    Args:
        plan: the shard.
        out: the cache folder (must be reachable from the node running this).
        sample_rate: the cache rate.
        settings: the cache settings, stored in the sidecar.

    Returns:
        The sidecar: name, split, settings, track_ids (planned), good_track_ids, bad
        ([{track_id, path, reason}]), and exact integer sums of the int16 samples
        (sum, sumsq, count) for the training-set mean and std, parquet_sha256.
    """
    ids, labels, waves, bad = [], [], [], []
    for tid, label, path in zip(plan.track_ids, plan.labels, plan.paths):
        x, reason = check_track(path, sample_rate)
        if reason:
            bad.append({"track_id": tid, "path": path, "reason": reason})
        else:
            ids.append(tid)
            labels.append(label)
            waves.append(to_int16(x))
    parquet, sidecar = _shard_files(out, plan.name)
    values = write_parquet(parquet, plan.split, ids, labels, waves)
    v = values.astype(np.int64)
    info = {
        "name": plan.name,
        "split": plan.split,
        "settings": settings,
        "track_ids": list(plan.track_ids),
        "good_track_ids": ids,
        "bad": bad,
        "sum": int(v.sum()),
        "sumsq": int(v @ v),
        "count": int(v.size),
        "node_id": _node_id(),
        "parquet_sha256": file_sha256(parquet),
    }
    write_sealed_json(sidecar, info)
    return info


def write_parquet(path: str, split: str, ids: list[int], labels: list[int], waves: list[np.ndarray]) -> np.ndarray:
    """Write one shard's Parquet file (atomically) in the cache's layout; returns all its int16 samples.

    Args:
        path: the shard's .parquet path.
        split: the shard's split.
        ids, labels, waves: per track (int16 waveforms).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    lengths = np.array([len(w) for w in waves], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = np.concatenate(waves) if waves else np.zeros(0, np.int16)
    table = pa.table(
        {
            "track_id": pa.array(ids, pa.int64()),
            "label": pa.array(labels, pa.int32()),
            "split": pa.array([split] * len(ids), pa.string()),
            "num_samples": pa.array(lengths, pa.int64()),
            "samples": pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.int16())),
        }
    )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # int16 audio has up to 65,536 values: dictionary encoding and snappy save nothing on it (8.71 vs 8.73 MB
    # per column chunk); split bytes + zstd level 1 gave 11 % smaller shards read 1.5x faster (FINDINGS.md, bug 3)
    atomic_write(
        path,
        lambda p: pq.write_table(
            table,
            p,
            use_dictionary=False,
            compression="zstd",
            compression_level=1,
            column_encoding={"samples.list.element": "BYTE_STREAM_SPLIT"},
        ),
    )
    return values


def _node_id() -> str | None:
    """The Ray node that wrote a shard (None outside Ray): shows that a cluster shared the work."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def finished_shard(out: str, plan: ShardPlan, settings: dict) -> dict | None:
    """The sidecar of a shard a previous run finished with these settings, else None
    (never written, unfinished, or damaged since: its sidecar's or parquet's checksum fails).

    Raises:
        UserError: the shard was made with other settings (the cache must not mix them).
    """
    parquet, sidecar = _shard_files(out, plan.name)
    try:
        info = read_sealed_json(sidecar)
    except FileNotFoundError:
        return None
    except (OSError, Damaged) as exc:
        return _damaged(sidecar, exc)
    if info.get("settings") != settings or info.get("track_ids") != list(plan.track_ids):
        why = _diff(info.get("settings"), settings)
        raise UserError(
            f"{out} holds shards made with other settings or tracks ({why}); "
            "use another --out (or delete that folder to rebuild it)"
        )
    try:
        digest = shard_sha256(parquet)
    except FileNotFoundError:  # the sidecar of a shard whose parquet went missing
        return _damaged(parquet, "missing")
    except OSError as exc:
        return _damaged(parquet, exc.strerror)
    return info if digest == info.get("parquet_sha256") else _damaged(parquet, "its SHA-256 differs from its sidecar's")


def _damaged(path: str, why) -> None:
    """Say that a finished shard's file is damaged and will be rebuilt (returns None: redo it)."""
    print(f"prepare: {path} is damaged ({why}): rebuilding that shard", file=sys.stderr)
    return None


def _diff(old: dict | None, new: dict) -> str:
    if not isinstance(old, dict):
        return "unreadable settings"
    keys = [k for k in new if old.get(k) != new[k]] or ["track list"]
    return ", ".join(
        f"{k}: {old.get(k)!r} here, {new[k]!r} asked" if k in old and k != "track_list_sha1" else k for k in keys
    )


def _track_list_sha1(tracks) -> str:
    lines = "".join(f"{t},{r.label},{r.split}\n" for t, r in tracks.sort_index().iterrows())
    return hashlib.sha1(lines.encode()).hexdigest()


def _run_tasks(
    todo: list[ShardPlan], out: str, sample_rate: int, settings: dict, address: str | None, done: int, total: int
) -> list[dict]:
    """Run `write_shard` for each plan as Ray tasks, with a progress bar over finished shards."""
    import ray
    from tqdm import tqdm

    started = not ray.is_initialized()
    if started:
        # a local Ray of its own needs little object store: tasks return small dicts
        cluster.init(ray_address(address), object_store_memory=OBJECT_STORE_BYTES, logging_level="WARNING")
    try:
        # SPREAD: decoding is CPU-bound, so shards go round the nodes even when they are fewer
        # than one node's CPUs (the default packs them onto the driver's node first).
        task = ray.remote(num_cpus=1, max_retries=TASK_RETRIES, scheduling_strategy="SPREAD")(write_shard)
        pending = {task.remote(p, out, sample_rate, settings): p for p in todo}
        infos = []
        with tqdm(total=total, initial=done, desc="prepare", unit="shard", file=sys.stderr) as bar:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                plan = pending.pop(ready[0])
                try:
                    info = ray.get(ready[0])
                except ray.exceptions.RayTaskError as exc:
                    cause = exc.cause if isinstance(getattr(exc, "cause", None), OSError) else None
                    if cause is None:
                        raise
                    raise UserError(
                        f"cannot write shard {plan.name} in {out}: {cause}; free space or pick another --out"
                    ) from None
                if not os.path.isfile(_shard_files(out, plan.name)[1]):
                    raise UserError(
                        f"shard {plan.name} was written on another node and is not visible here: "
                        "--out must be a folder every Ray node shares"
                    )
                infos.append(info)
                bar.update(1)
        return infos
    finally:
        if started:
            ray.shutdown()


def _summarise_bad(bad: list[dict], out: str) -> None:
    """Bad tracks by kind, each named as its user knows it (`bad_name`)."""
    if not bad:
        return
    print(
        f"prepare: skipped {len(bad)} bad track(s) (every one is listed in {os.path.join(out, MANIFEST)}):",
        file=sys.stderr,
    )
    for kind in BAD_KINDS:
        ids = [bad_name(b) for b in bad if b["reason"].startswith(kind + ":")]
        if ids:
            more = f", ... {len(ids) - 5} more" if len(ids) > 5 else ""
            print(f"  {kind}: {len(ids)} ({', '.join(ids[:5])}{more})", file=sys.stderr)


def bad_name(bad: dict) -> str:
    """A manifest's bad track as its user knows it: its `name` (a collection's file as given, FMA's
    id), or, in a manifest written before bad tracks carried one, its id."""
    return str(bad.get("name") or f"{bad['track_id']:06d}")


def prepare(
    fma_root: str | os.PathLike,
    out: str | os.PathLike,
    subset: str = "small",
    sample_rate: int = CACHE_SAMPLE_RATE,
    split: str = "paper",
    data_seed: int = 0,
    address: str | None = None,
    tracks_per_shard: int = TRACKS_PER_SHARD,
    tracks_csv: str | os.PathLike | None = None,
    dataset=None,
) -> Manifest:
    """Build (or finish, or confirm) the waveform cache of an FMA subset.

    Uses the Ray already initialised in this process if there is one; else joins
    `address`, else starts a small local Ray (no dashboard) and stops it after.
    Ray is only started when some shard is left to do.

    Args:
        fma_root: folder holding fma_metadata/ and fma_<subset>/.
        out: the cache folder.
        subset: "small", "medium" or "large".
        sample_rate: cache rate in Hz.
        split: "paper" or "official" (see `fma.load_dataset`).
        data_seed: the paper split's seed (part of the cache's identity; the search's own
            --seed never changes the data).
        address: a Ray cluster to join (None: $RAY_ADDRESS, else a local Ray of its own).
        tracks_per_shard: tracks per Parquet shard.
        tracks_csv: another tracks.csv (default `<fma_root>/fma_metadata/tracks.csv`).
        dataset: `fma.load_dataset(fma_root, subset, split, data_seed)` when the caller has it already
            (the tune CLI checks the metadata before Ray starts; tracks.csv is slow to read twice).

    Returns:
        The `cache.Manifest` it wrote (shards: those with at least one track).

    Raises:
        UserError: bad arguments or metadata, a cache made with other settings, no good tracks.
    """
    if sample_rate < 1000:
        raise UserError(f"--sample-rate {sample_rate} is too low: use e.g. {CACHE_SAMPLE_RATE}")
    if tracks_per_shard < 1:
        raise UserError(f"--tracks-per-shard {tracks_per_shard} must be at least 1")
    fma_root = os.path.abspath(os.fspath(fma_root))
    if dataset is None and not os.path.isdir(fma_root):
        raise UserError(f"--fma-root {fma_root} is not a folder; point it at the folder holding fma_metadata/")
    out = os.path.abspath(os.fspath(out))
    ds = dataset if dataset is not None else load_dataset(fma_root, subset, split, data_seed, tracks_csv=tracks_csv)
    settings = cache_settings(ds, sample_rate, subset, split, data_seed, tracks_per_shard)
    old = _old_manifest(out)
    if old is not None and any(old.get(k) != v for k, v in settings.items()):
        raise UserError(
            f"{out} holds a cache made with other settings ({_diff(old, settings)}); "
            "use another --out (or delete that folder to rebuild it)"
        )
    try:
        os.makedirs(os.path.join(out, SHARD_DIR), exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out} cannot be created ({exc.strerror}): choose a writable folder") from None
    clean_temporaries(os.path.join(out, SHARD_DIR))  # leftovers of a killed run: never trusted

    plans = plan_shards(ds.tracks, tracks_per_shard, data_seed)
    infos = {p.name: finished_shard(out, p, settings) for p in plans}
    todo = [p for p in plans if infos[p.name] is None]
    if todo:
        for info in _run_tasks(todo, out, sample_rate, settings, address, len(plans) - len(todo), len(plans)):
            infos[info["name"]] = info

    manifest = _manifest(ds, plans, infos, settings, fma_root, out)
    _summarise_bad(manifest.bad_tracks, out)
    n = manifest.num_tracks
    if sum(n.values()) == 0:
        raise UserError(
            f"no track of {fma_root} could be used (all {len(ds.tracks)} are bad, see above); "
            "check that fma_<subset>/ holds the mp3 files"
        )
    empty = [s for s in SPLITS if n[s] == 0]
    if empty:
        raise UserError(f"no good track left in {', '.join(empty)} (see above); use more tracks or another --split")
    write_sealed_json(os.path.join(out, MANIFEST), manifest.to_dict())
    print(
        f"prepare: {sum(n.values())} tracks cached in {out} "
        f"({', '.join(f'{s} {n[s]}' for s in SPLITS)}; {len(manifest.bad_tracks)} bad)",
        file=sys.stderr,
    )
    return manifest


def _old_manifest(out: str) -> dict | None:
    """The manifest an earlier run wrote in `out`, None if none; a damaged one (its own checksum fails)
    is rebuilt from the shards' sidecars, so it counts as none."""
    path = os.path.join(out, MANIFEST)
    try:
        return read_sealed_json(path)
    except FileNotFoundError:
        return None
    except (OSError, Damaged) as exc:
        old = read_json(path)
        if isinstance(old, dict) and old.get("schema_version") != CACHE_SCHEMA_VERSION:
            return old  # another schema's (unsealed) manifest: refused as other settings
        print(f"prepare: {path} is damaged ({exc}): rebuilding it from the shards", file=sys.stderr)
        return None


def cache_settings(ds, sample_rate: int, subset: str, split: str, data_seed: int, tracks_per_shard: int) -> dict:
    """What a cache's shards and manifest must agree on (stored in every sidecar)."""
    return {
        "schema_version": CACHE_SCHEMA_VERSION,
        "sample_rate": int(sample_rate),
        "subset": subset,
        "split_scheme": split,
        "data_seed": int(data_seed),
        "label_names": ds.label_names,
        "min_track_seconds": MIN_TRACK_SECONDS,
        "silence_peak": SILENCE_PEAK,
        "tracks_per_shard": int(tracks_per_shard),
        "track_list_sha1": _track_list_sha1(ds.tracks),
    }


def _manifest(ds, plans: list[ShardPlan], infos: dict, settings: dict, fma_root: str, out: str) -> Manifest:
    genre_of = ds.tracks["genre"]
    counts = {s: {g: 0 for g in ds.label_names} for s in SPLITS}
    shards: dict[str, list[str]] = {s: [] for s in SPLITS}
    digests: dict[str, str] = {}
    bad, total, sumsq, count = [], 0, 0, 0
    for p in plans:
        info = infos[p.name]
        for tid in info["good_track_ids"]:
            counts[p.split][genre_of.loc[tid]] += 1
        bad.extend({**b, "name": ds.track_name(b["track_id"])} for b in info["bad"])
        if info["good_track_ids"]:
            shards[p.split].append(f"{SHARD_DIR}/{p.name}.parquet")
            digests[f"{SHARD_DIR}/{p.name}.parquet"] = info["parquet_sha256"]
        if p.split == SPLITS[0]:
            total, sumsq, count = total + info["sum"], sumsq + info["sumsq"], count + info["count"]
    mean = total / count / INT16_SCALE if count else 0.0
    var = sumsq / count / INT16_SCALE**2 - mean**2 if count else 1.0
    return Manifest(
        schema_version=CACHE_SCHEMA_VERSION,
        sample_rate=settings["sample_rate"],
        subset=settings["subset"],
        split_scheme=settings["split_scheme"],
        data_seed=settings["data_seed"],
        fma_root=fma_root,
        label_names=tuple(ds.label_names),
        counts=counts,
        num_tracks={s: sum(counts[s].values()) for s in SPLITS},
        wave_mean=float(mean),
        wave_std=float(np.sqrt(max(var, 0.0))),
        bad_tracks=tuple(sorted(bad, key=lambda b: b["track_id"])),
        shards={s: tuple(v) for s, v in shards.items()},
        min_track_seconds=MIN_TRACK_SECONDS,
        silence_peak=SILENCE_PEAK,
        tracks_per_shard=settings["tracks_per_shard"],
        track_list_sha1=settings["track_list_sha1"],
        shard_sha256=digests,
        root=out,
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="python -m mgc_ray.prepare", description=__doc__.split("\n")[0])
    p.add_argument(
        "--fma-root",
        default=os.environ.get(FMA_ROOT_ENV),
        help=f"folder holding fma_metadata/ and fma_<subset>/ (default ${FMA_ROOT_ENV})",
    )
    p.add_argument("--audio-dir", help="instead of FMA: a folder with one sub-folder of audio files per genre")
    p.add_argument("--csv", help="instead of FMA: a CSV of path,label[,split][,artist] (paths from its folder)")
    p.add_argument("--subset", default="small", choices=SUBSETS)
    p.add_argument("--out", help="cache folder (default: one per data set and settings under $MGC_HOME/caches)")
    p.add_argument("--sample-rate", type=int, default=CACHE_SAMPLE_RATE, help=f"Hz (default {CACHE_SAMPLE_RATE})")
    p.add_argument(
        "--split",
        default="paper",
        choices=SPLIT_SCHEMES + COLLECTION_SPLITS[1:],
        help="paper: seeded 80/10/10 shuffle; official: FMA's set.split; artist: each artist in one "
        "split (--csv with artists); given: the CSV's split column (default paper)",
    )
    p.add_argument(
        "--data-seed",
        type=int,
        default=0,
        help="the paper split's and the shard order's seed (default 0); part of the cache's identity",
    )
    p.add_argument("--address", help="join this Ray cluster (default: a local Ray); --out must be shared")
    p.add_argument(
        "--tracks-per-shard",
        type=int,
        default=TRACKS_PER_SHARD,
        help=f"tracks per Parquet shard (default {TRACKS_PER_SHARD})",
    )
    p.add_argument("--tracks-csv", help="another tracks.csv (default FMA_ROOT/fma_metadata/tracks.csv)")
    args = p.parse_args(argv)
    if args.audio_dir and args.csv:
        raise UserError("give one of --audio-dir and --csv")
    if args.audio_dir or args.csv:
        source = args.audio_dir or args.csv
        ds = collection.load(args.audio_dir, args.csv, args.split, args.data_seed)
        kind = collection.source_kind(args.audio_dir)
        out = args.out or default_cache_dir(source, kind, args.split, args.data_seed, args.sample_rate)
        prepare(
            source,
            out,
            kind,
            args.sample_rate,
            args.split,
            args.data_seed,
            args.address,
            args.tracks_per_shard,
            dataset=ds,
        )
        print(out)
        return 0
    if args.split not in SPLIT_SCHEMES:
        raise UserError(
            f"--split {args.split} is for a collection (--audio-dir or --csv); FMA takes {' or '.join(SPLIT_SCHEMES)}"
        )
    if not args.fma_root:
        raise UserError(
            f"--fma-root is required: the folder holding fma_metadata/ and fma_{args.subset}/ "
            f"(or set ${FMA_ROOT_ENV}; python -m mgc_ray.demo --out DIR writes a demo one)"
        )
    out = args.out or default_cache_dir(args.fma_root, args.subset, args.split, args.data_seed, args.sample_rate)
    prepare(
        args.fma_root,
        out,
        args.subset,
        args.sample_rate,
        args.split,
        args.data_seed,
        args.address,
        args.tracks_per_shard,
        args.tracks_csv,
    )
    print(out)
    return 0


if __name__ == "__main__":
    run_cli(main)
