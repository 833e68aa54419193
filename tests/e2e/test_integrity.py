"""The cache checks itself: bytes flipped at random offsets in shards, sidecars and the manifest
(a bad disk, a partial copy between machines), and shards cut short, are every one found before
anything trains on them; prepare re-run rebuilds exactly the damaged shards; a search on a
damaged cache stops with one line naming the shard."""

import os
import shutil

import numpy as np
import pytest

from mgc_ray.data.cache import read_manifest, verify_shards
from mgc_ray.errors import UserError
from mgc_ray.prepare import finished_shard, plan_shards, prepare

PER_SHARD = 4
FLIPS = 400  # per kind of file below; each on a fresh copy of the bytes (one change at a time)


@pytest.fixture(scope="module")
def cache(demo_root, ray_local, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("integrity") / "cache")
    prepare(demo_root, out, tracks_per_shard=PER_SHARD)
    return out


def _files(cache: str, suffix: str) -> list[str]:
    d = os.path.join(cache, "shards")
    return sorted(os.path.join(d, n) for n in os.listdir(d) if n.endswith(suffix))


def _flip(path: str, rng: np.random.Generator) -> tuple[bytes, int]:
    """Change one byte at a random offset to another value; returns the original bytes and the offset."""
    data = open(path, "rb").read()
    at = int(rng.integers(len(data)))
    changed = bytearray(data)
    changed[at] = (changed[at] + int(rng.integers(1, 256))) % 256
    with open(path, "wb") as f:
        f.write(changed)
    return data, at


def _found(cache: str, path: str) -> str | None:
    """The error that reading the cache the way a search does gives (manifest, then every shard)."""
    try:
        verify_shards(read_manifest(cache))
    except UserError as exc:
        return str(exc)
    return None


def test_every_flipped_byte_in_a_shard_or_the_manifest_is_found(cache, faults):
    rng = np.random.default_rng(15)
    assert _found(cache, "") is None, "a clean cache passes"
    manifest = os.path.join(cache, "manifest.json")
    shards = _files(cache, ".parquet")
    missed = []
    for i in range(FLIPS):
        for path in (shards[int(rng.integers(len(shards)))], manifest):
            data, at = _flip(path, rng)
            try:
                err = _found(cache, path)
                if err is None or (path == manifest and "manifest.json" not in err and "schema" not in err):
                    missed.append((os.path.basename(path), at, err))
                elif path != manifest:
                    assert path in err and "damaged" in err and "mgc_ray.prepare" in err and "\n" not in err
            finally:
                open(path, "wb").write(data)
    assert not missed, f"changes not found: {missed[:5]}"
    assert _found(cache, "") is None
    faults.record(
        "a byte changed at a random offset in a cache shard",
        FLIPS,
        "found by the SHA-256 check before any read, one line naming the shard",
    )
    faults.record(
        "a byte changed at a random offset in manifest.json",
        FLIPS,
        "found by the manifest's own checksum, one line naming it",
    )


def test_truncated_and_missing_shards_are_found(cache, faults):
    rng = np.random.default_rng(1)
    shards = _files(cache, ".parquet")
    for i in range(50):
        path = shards[int(rng.integers(len(shards)))]
        data = open(path, "rb").read()
        try:
            with open(path, "r+b") as f:
                f.truncate(int(rng.integers(len(data))))
            assert path in (_found(cache, path) or "")
        finally:
            open(path, "wb").write(data)
    os.rename(shards[0], shards[0] + ".away")
    try:
        assert "cannot be read" in (_found(cache, shards[0]) or "")
    finally:
        os.rename(shards[0] + ".away", shards[0])
    faults.record("a cache shard truncated at a random length", 50, "found before any read, one line naming it")
    faults.record("a cache shard missing", 1, "found before any read, one line naming it")


def test_every_flipped_byte_in_a_sidecar_makes_prepare_redo_that_shard(cache, demo_root, faults):
    from mgc_ray.data import fma

    rng = np.random.default_rng(2)
    m = read_manifest(cache)
    settings = {
        k: getattr(m, k)
        for k in (
            "schema_version",
            "sample_rate",
            "subset",
            "split_scheme",
            "data_seed",
            "min_track_seconds",
            "silence_peak",
            "tracks_per_shard",
            "track_list_sha1",
        )
    }
    settings["label_names"] = list(m.label_names)
    plans = {p.name: p for p in plan_shards(fma.load_dataset(demo_root).tracks, PER_SHARD)}
    names = list(plans)
    assert all(finished_shard(cache, p, settings) is not None for p in plans.values()), "clean: all finished"
    for i in range(FLIPS):
        name = names[int(rng.integers(len(names)))]
        path = os.path.join(cache, "shards", name + ".json")
        data, at = _flip(path, rng)
        try:
            assert finished_shard(cache, plans[name], settings) is None, f"{name}.json byte {at} changed unnoticed"
        except UserError as exc:  # a flip inside the settings of a sidecar whose checksum still ... must not pass
            raise AssertionError(f"{name}.json byte {at}: {exc}") from None
        finally:
            open(path, "wb").write(data)
    faults.record(
        "a byte changed at a random offset in a shard's sidecar",
        FLIPS,
        "prepare re-run finds it and rebuilds that shard",
    )


def test_prepare_rebuilds_only_the_damaged_shards(cache, demo_root, tmp_path, capfd, faults):
    copy = str(tmp_path / "cache")
    shutil.copytree(cache, copy)
    shards = _files(copy, ".parquet")
    ref = {p: open(p, "rb").read() for p in _files(copy, "")}
    rng = np.random.default_rng(3)
    damaged = [shards[1], shards[-1]]
    for p in damaged:
        _flip(p, rng)
    _flip(os.path.join(copy, "shards", os.path.basename(shards[2])[: -len(".parquet")] + ".json"), rng)
    _flip(os.path.join(copy, "manifest.json"), rng)
    redo = set(damaged) | {shards[2]}
    kept = {p: os.stat(p).st_mtime_ns for p in shards if p not in redo}
    prepare(demo_root, copy, tracks_per_shard=PER_SHARD)
    err = capfd.readouterr().err
    assert all(f"{p} is damaged" in err for p in damaged) and "manifest.json is damaged" in err
    assert {p: os.stat(p).st_mtime_ns for p in kept} == kept, "undamaged shards are not rewritten"
    assert {p: open(p, "rb").read() for p in _files(copy, "")} == ref, "rebuilt byte for byte"
    assert _found(copy, "") is None
    faults.record(
        "damaged shards, a damaged sidecar and a damaged manifest, then prepare re-run",
        1,
        "exactly the damaged shards rebuilt, byte for byte; the rest untouched",
    )


@pytest.mark.slow
@pytest.mark.parametrize("archs", ["baseline_a_2d", "baseline_a_2d,baseline_a_1d"], ids=["one-arch", "two-archs"])
def test_a_search_on_a_damaged_cache_stops_before_training(cache, tmp_path, smoke_home, run_module, rel, faults, archs):
    copy = str(tmp_path / "cache")
    shutil.copytree(cache, copy)
    victim = _files(copy, ".parquet")[0]
    with open(victim, "r+b") as f:  # 2,000 bytes changed in place, as the bad disk did
        f.seek(len(f.read()) // 2)
        f.write(os.urandom(2000))
    p = run_module(
        "mgc_ray.tune",
        *rel.args(tmp_path, "--smoke", "--no-dashboard", "--cache", copy, arch=archs),
        env=rel.env(smoke_home),
        cwd=tmp_path,
    )
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-3000:]
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and victim in errors[0] and "damaged" in errors[0], p.stderr[-3000:]
    assert "Traceback" not in p.stdout + p.stderr
    exp = rel.experiment_dir(tmp_path)
    assert exp is None or not rel.trial_results(exp), "no trial trained on the damaged cache"
    faults.record(
        f"2,000 bytes of a shard overwritten, then a search of {archs}",
        1,
        "exit 2 with one line naming the shard, before any trial",
    )


def test_a_shard_is_hashed_once_per_process_until_it_is_written_again(tmp_path):
    """prepare's confirmation and the search's check share one hash of a settled shard; a write
    after it (even one that keeps the size) hashes again, and a just-written file is never remembered."""
    from mgc_ray.data.cache import _sha256_once

    old = tmp_path / "old.parquet"
    old.write_bytes(bytes(range(256)) * 64)
    os.utime(old, ns=(os.stat(old).st_atime_ns, os.stat(old).st_mtime_ns - 10**10))  # written 10 s ago
    digest, fresh = _sha256_once(str(old))
    assert fresh and _sha256_once(str(old)) == (digest, False)
    data = bytearray(old.read_bytes())
    data[100] ^= 0xFF
    old.write_bytes(bytes(data))  # same size, changed in place, moments after the hash
    changed, fresh = _sha256_once(str(old))
    assert fresh and changed != digest
    assert _sha256_once(str(old)) == (changed, True), "a file written within the last second is hashed every time"
