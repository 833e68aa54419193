"""prepare: mp3 -> int16 Parquet shards + manifest, as Ray tasks; bad tracks reported; idempotent and atomic."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from mgc_ray.config import CACHE_SCHEMA_VERSION, MIN_TRACK_SECONDS, SPLITS
from mgc_ray.data import fma
from mgc_ray.data.audio import decode_audio
from mgc_ray.data.cache import INT16_SCALE, check_cache, read_manifest, to_int16
from mgc_ray.errors import UserError
from mgc_ray.files import sealed_json
from mgc_ray.prepare import check_track, plan_shards, prepare

SR = 22050
PER_SHARD = 4  # small shards: several per split even on the tiny demo
MANIFEST_KEYS = {
    "schema_version",
    "sample_rate",
    "subset",
    "split_scheme",
    "data_seed",
    "fma_root",
    "label_names",
    "counts",
    "num_tracks",
    "wave_mean",
    "wave_std",
    "bad_tracks",
    "shards",
    "min_track_seconds",
    "silence_peak",
    "tracks_per_shard",
    "track_list_sha1",
    "shard_sha256",
}
SCHEMA = pa.schema(
    [
        ("track_id", pa.int64()),
        ("label", pa.int32()),
        ("split", pa.string()),
        ("num_samples", pa.int64()),
        ("samples", pa.list_(pa.int16())),
    ]
)


def read_tracks(cache_dir) -> dict:
    """{track_id: (label, split, samples)} over every shard the manifest lists."""
    out = {}
    for split in SPLITS:
        for path in read_manifest(cache_dir).shard_paths(split):
            t = pq.read_table(path).to_pydict()
            for tid, lab, sp, n, s in zip(t["track_id"], t["label"], t["split"], t["num_samples"], t["samples"]):
                assert len(s) == n
                out[tid] = (lab, sp, np.asarray(s, np.int16))
    return out


def shard_files(cache_dir) -> dict:
    d = os.path.join(cache_dir, "shards")
    return {n: open(os.path.join(d, n), "rb").read() for n in sorted(os.listdir(d))}


@pytest.fixture(scope="module")
def clean(demo_root, ray_local, tmp_path_factory):
    """A clean cache of the tiny demo (4 tracks per shard) and its manifest."""
    out = str(tmp_path_factory.mktemp("clean") / "cache")
    return out, prepare(demo_root, out, tracks_per_shard=PER_SHARD).to_dict()


def test_real_fma_clip_decodes_to_30_s(fma_samples):
    path = os.path.join(fma_samples, "fma_small", "000", "000002.mp3")
    x = decode_audio(path, SR)  # 44.1 kHz stereo -> 22,050 Hz mono
    assert x.dtype == np.float32 and x.ndim == 1
    assert len(x) / SR == pytest.approx(29.98, abs=0.05)
    assert np.abs(x).max() <= 1.0
    raw, _ = sf.read(path, dtype="float32")
    assert np.abs(raw).max() > 1.0  # its raw decoded peak is 1.0033: clipping is needed
    good, reason = check_track(path, SR)
    assert reason is None and len(good) == len(x)


def test_over_full_scale_is_clipped(tmp_path):
    path = str(tmp_path / "loud.wav")
    t = np.arange(SR * 3) / SR
    sf.write(path, 1.5 * np.sin(2 * np.pi * 220 * t), SR, subtype="FLOAT")  # peaks at 1.5
    x = decode_audio(path, SR)
    assert x.max() == 1.0 and x.min() == -1.0
    q = to_int16(x)
    assert q.max() == 32767 and q.min() == -32768


def test_round_trip(clean, demo_root):
    out, m = clean
    assert set(m) == MANIFEST_KEYS
    assert m == read_manifest(out).to_dict() == check_cache(out, sample_rate=SR, split_scheme="paper").to_dict()
    ds = fma.load_dataset(demo_root)
    assert m["label_names"] == ds.label_names and m["schema_version"] == CACHE_SCHEMA_VERSION
    assert (m["sample_rate"], m["subset"], m["split_scheme"], m["data_seed"]) == (SR, "small", "paper", 0)
    assert m["fma_root"] == demo_root and m["min_track_seconds"] == MIN_TRACK_SECONDS and m["bad_tracks"] == []
    for split in SPLITS:
        want = ds.tracks[ds.tracks["split"] == split]["genre"].value_counts().to_dict()
        assert {g: n for g, n in m["counts"][split].items() if n} == want
        assert m["num_tracks"][split] == len(ds.tracks[ds.tracks["split"] == split])
    # shards: one split each, in chunks of PER_SHARD of the split's seeded (genre-mixed) order
    order = {
        s: [t for p in plan_shards(ds.tracks, PER_SHARD, m["data_seed"]) if p.split == s for t in p.track_ids]
        for s in SPLITS
    }
    for split in SPLITS:
        paths = read_manifest(out).shard_paths(split)
        assert all(os.path.isabs(p) for p in paths)
        names = [f"shards/{split}-{i:05d}.parquet" for i in range(len(paths))]
        assert [os.path.relpath(p, out) for p in paths] == names
        ids = []
        for p in paths:
            t = pq.read_table(p)
            assert t.schema.equals(SCHEMA, check_metadata=False)
            assert set(t["split"].to_pylist()) == {split}
            assert len(t) <= PER_SHARD
            ids += t["track_id"].to_pylist()
        assert sorted(ids) == sorted(ds.tracks.index[ds.tracks["split"] == split])
        assert ids == order[split] and (split != "train" or ids != sorted(ids)), "the seeded order, not the ids'"
    # the samples are the decoded clip, stereo files included
    cached = read_tracks(out)
    for tid in ds.tracks.index[:6]:
        lab, split, s = cached[tid]
        assert (lab, split) == (ds.tracks.loc[tid, "label"], ds.tracks.loc[tid, "split"])
        assert np.array_equal(s, to_int16(decode_audio(ds.tracks.loc[tid, "path"], SR)))
    stereo = [t for t, p in ds.tracks["path"].items() if sf.info(p).channels == 2]
    assert stereo and all(len(cached[t][2]) == pytest.approx(4.0 * SR, abs=2) for t in stereo)
    train = np.concatenate([s for _, sp, s in cached.values() if sp == "train"]).astype(np.float64) / INT16_SCALE
    assert m["wave_mean"] == pytest.approx(train.mean(), abs=1e-9)
    assert m["wave_std"] == pytest.approx(train.std(), rel=1e-6)


def test_prepare_reuses_the_running_ray(clean):
    import ray

    assert ray.is_initialized()  # prepare() did not shut down the Ray it found


def test_rerun_is_a_no_op_and_other_settings_are_refused(clean, demo_root):
    out, m = clean
    before = {n: os.stat(os.path.join(out, "shards", n)).st_mtime_ns for n in os.listdir(os.path.join(out, "shards"))}
    assert prepare(demo_root, out, tracks_per_shard=PER_SHARD).to_dict() == m
    after = {n: os.stat(os.path.join(out, "shards", n)).st_mtime_ns for n in os.listdir(os.path.join(out, "shards"))}
    assert after == before  # nothing rewritten
    for kw in (dict(data_seed=1), dict(sample_rate=16000), dict(split="official"), dict(tracks_per_shard=8)):
        with pytest.raises(UserError, match="other settings.*another --out"):
            prepare(demo_root, out, **{"tracks_per_shard": PER_SHARD, **kw})
    assert read_manifest(out).to_dict() == m and shard_files(out).keys() == {n for n in before}


def test_check_cache_errors(clean, tmp_path):
    out, m = clean
    with pytest.raises(UserError, match="not a prepared cache.*mgc_ray.prepare"):
        check_cache(tmp_path)
    for change, match in (
        (dict(schema_version=0), "schema 0"),
        (dict(sample_rate=16000), "16000 Hz"),
        (dict(split_scheme="official"), "official split"),
    ):
        d = tmp_path / match.replace(" ", "_")
        d.mkdir()
        (d / "manifest.json").write_text(sealed_json({**m, **change}))
        with pytest.raises(UserError, match=match):
            check_cache(d, sample_rate=SR, split_scheme="paper")


@pytest.fixture
def broken_root(demo_root, tmp_path):
    """A copy of the demo with seven broken training tracks; returns (root, {track_id: expected kind})."""
    root = str(tmp_path / "fma")
    shutil.copytree(demo_root, root)
    t = fma.load_dataset(root).tracks
    ids = list(t.index[t["split"] == "train"][:8])
    path = {tid: t.loc[tid, "path"] for tid in ids}
    rng = np.random.default_rng(0)
    clip = decode_audio(path[ids[3]], SR)
    open(path[ids[0]], "wb").close()  # zero bytes
    data = open(path[ids[1]], "rb").read()
    open(path[ids[1]], "wb").write(data[:300])  # truncated to its header: nothing to decode
    open(path[ids[2]], "wb").write(rng.bytes(20000))  # random bytes
    sf.write(path[ids[3]], clip, SR, format="WAV")  # a WAV named .mp3: soundfile reads it: a good track
    sf.write(path[ids[4]], clip[:SR], SR, format="MP3")  # 1 s
    sf.write(path[ids[5]], np.zeros(4 * SR, np.float32), SR, format="MP3")  # silence
    os.remove(path[ids[6]])  # missing from disk
    data = open(path[ids[7]], "rb").read()
    open(path[ids[7]], "wb").write(data[: int(0.7 * len(data))])  # cut at 70 %: ~2.8 s, short but usable
    kinds = {
        ids[0]: "empty",
        ids[1]: "undecodable",
        ids[2]: "undecodable",
        ids[4]: "too short",
        ids[5]: "silent",
        ids[6]: "missing",
    }
    return root, kinds, ids


def test_broken_tracks_are_reported_and_skipped(broken_root, ray_local, tmp_path):
    root, kinds, ids = broken_root
    out = tmp_path / "cache"
    cmd = [
        sys.executable,
        "-m",
        "mgc_ray.prepare",
        "--fma-root",
        root,
        "--out",
        str(out),
        "--tracks-per-shard",
        str(PER_SHARD),
        "--address",
        ray_local,
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    m = read_manifest(out).to_dict()
    got = {b["track_id"]: b["reason"].split(":")[0] for b in m["bad_tracks"]}
    assert got == kinds
    assert all(b["path"] == fma.audio_path(root, b["track_id"]) for b in m["bad_tracks"])
    assert all(b["name"] == f"{b['track_id']:06d}" for b in m["bad_tracks"]), "FMA's tracks go by their id"
    summary = [line.strip() for line in p.stderr.splitlines() if line.startswith("  ")]
    assert sorted(line.split(":")[0] for line in summary) == sorted(set(kinds.values()))  # one line per reason
    assert f"empty: 1 ({ids[0]:06d})" in summary and f"missing: 1 ({ids[6]:06d})" in summary
    assert "undecodable: 2" in p.stderr
    cached = read_tracks(out)
    assert sum(m["num_tracks"].values()) == len(cached) == 32 - len(kinds)
    assert not set(kinds) & set(cached)
    assert len(cached[ids[3]][2]) == 4 * SR  # the WAV: decoded, kept
    assert 2.0 * SR < len(cached[ids[7]][2]) < 3.5 * SR  # the cut mp3: shorter, kept
    assert sum(m["counts"]["train"].values()) == m["num_tracks"]["train"] == 26 - len(kinds)


def test_a_collections_bad_files_are_named_by_their_paths(ray_local, tmp_path, faults):
    """An empty .mp3 and a text file named .mp3 in a folder collection, then the same files listed
    in a CSV: prepare skips both and names them as the user gave them, in its output and the manifest."""
    music = tmp_path / "music"
    for g, genre in enumerate(("folk", "rock")):
        (music / genre / "live").mkdir(parents=True)
        t = np.arange(3 * SR) / SR
        for j in range(10):
            sf.write(music / genre / f"{j:02d}.wav", 0.3 * np.sin(2 * np.pi * (220 * (g + 1) + j) * t), SR)
    (music / "folk" / "empty.mp3").touch()
    (music / "rock" / "live" / "notes.mp3").write_text("setlist: not audio\n")
    bad = {"folk/empty.mp3": "empty", "rock/live/notes.mp3": "undecodable"}
    rows = [
        f"{p.relative_to(tmp_path)},{p.relative_to(music).parts[0]}" for p in sorted(music.rglob("*")) if p.is_file()
    ]
    (tmp_path / "list.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    given = {"--audio-dir": (str(music), ""), "--csv": (str(tmp_path / "list.csv"), "music/")}
    for flag, (source, prefix) in given.items():
        out = tmp_path / f"cache{flag}"
        cmd = [sys.executable, "-m", "mgc_ray.prepare", flag, source, "--out", str(out), "--address", ray_local]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-3000:]
        summary = [line.strip() for line in p.stderr.splitlines() if line.startswith("  ")]
        assert sorted(summary) == sorted(f"{kind}: 1 ({prefix}{name})" for name, kind in bad.items()), p.stderr
        m = read_manifest(out)
        assert {b["name"]: b["reason"].split(":")[0] for b in m.bad_tracks} == {prefix + n: k for n, k in bad.items()}
        assert all(b["path"] == str(music / n) for b, n in zip(m.bad_tracks, sorted(bad)))
        assert sum(m.num_tracks.values()) == 20, "every good file cached"
    faults.record(
        "a folder collection (then a CSV) holding an empty .mp3 and a text file named .mp3",
        len(given),
        "both skipped, named by their paths as given in prepare's output and the manifest; the good files cached",
    )


def test_an_older_manifests_bad_tracks_still_read(clean, tmp_path):
    """A manifest written before bad tracks carried their name loads, its checksum holds, and
    prepare's summary names those tracks by id."""
    from mgc_ray.prepare import bad_name

    out, m = clean
    old = {**m, "bad_tracks": [{"track_id": 7, "path": "/x/000007.mp3", "reason": "empty: 0-byte file"}]}
    (tmp_path / "manifest.json").write_text(sealed_json(old))
    got = read_manifest(tmp_path)
    assert got.to_dict() == old and [bad_name(b) for b in got.bad_tracks] == ["000007"]


def test_nothing_usable_is_an_error(demo_root, ray_local, tmp_path, capsys):
    root = tmp_path / "fma"
    shutil.copytree(os.path.join(demo_root, "fma_metadata"), root / "fma_metadata")  # metadata, no audio
    with pytest.raises(UserError, match="no track .* could be used"):
        prepare(root, tmp_path / "cache", tracks_per_shard=16)
    assert "missing: 32" in capsys.readouterr().err
    assert not (tmp_path / "cache" / "manifest.json").exists()


def test_interrupted_run_is_completed_identically(clean, demo_root, tmp_path):
    out, m = clean
    ref = shard_files(out)
    b = str(tmp_path / "cache")
    shutil.copytree(out, b)
    d = os.path.join(b, "shards")
    os.remove(os.path.join(b, "manifest.json"))
    os.remove(os.path.join(d, "train-00001.json"))  # parquet renamed into place, sidecar not yet
    with open(os.path.join(d, "train-00002.parquet"), "r+b") as f:
        f.truncate(100)  # a shard the sidecar no longer matches
    os.remove(os.path.join(d, "val-00000.parquet"))
    os.remove(os.path.join(d, "val-00000.json"))
    with open(os.path.join(d, ".tmp-test-00000.parquet-999"), "wb") as f:
        f.write(b"PAR1 half")  # a temporary file a kill left behind
    kept = os.stat(os.path.join(d, "train-00000.parquet")).st_mtime_ns
    assert prepare(demo_root, b, tracks_per_shard=PER_SHARD).to_dict() == m
    assert shard_files(b) == ref  # byte for byte, no leftovers
    assert os.stat(os.path.join(d, "train-00000.parquet")).st_mtime_ns == kept  # finished shards skipped


def test_killed_process_then_rerun(clean, demo_root, ray_local, tmp_path):
    out = tmp_path / "cache"
    cmd = [
        sys.executable,
        "-m",
        "mgc_ray.prepare",
        "--fma-root",
        demo_root,
        "--out",
        str(out),
        "--tracks-per-shard",
        "1",
        "--address",
        ray_local,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards, deadline = out / "shards", time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        if shards.is_dir() and any(n.endswith(".json") for n in os.listdir(shards)):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if (out / "manifest.json").exists():
        pytest.skip("the run finished before it could be killed")
    done = len([n for n in os.listdir(shards) if n.endswith(".json")])
    assert 1 <= done < 32
    time.sleep(1.0)  # let Ray reap the dead driver's tasks
    m = prepare(demo_root, out, tracks_per_shard=1).to_dict()
    ref_out, ref = clean
    got, want = read_tracks(out), read_tracks(ref_out)  # other shard sizes: compare track by track
    assert got.keys() == want.keys()
    assert all(got[t][:2] == want[t][:2] and np.array_equal(got[t][2], want[t][2]) for t in want)
    assert {k: m[k] for k in ("counts", "num_tracks", "wave_mean", "wave_std")} == {
        k: ref[k] for k in ("counts", "num_tracks", "wave_mean", "wave_std")
    }
    assert not [n for n in os.listdir(shards) if n.startswith(".tmp-")]


def test_cli_without_fma_root_is_one_line():
    env = {k: v for k, v in os.environ.items() if k != "MGC_FMA_ROOT"}
    p = subprocess.run([sys.executable, "-m", "mgc_ray.prepare"], capture_output=True, text=True, env=env)
    assert p.returncode == 2
    assert p.stderr.startswith("error: --fma-root is required") and len(p.stderr.strip().splitlines()) == 1
    p = subprocess.run(
        [sys.executable, "-m", "mgc_ray.prepare", "--fma-root", "/nonexistent/fma"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
