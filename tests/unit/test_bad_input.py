"""Bad input to every command (tune, prepare, demo), through the CLI as a user meets it:
one line on stderr naming the problem and the fix, exit status 2, no traceback, and
nothing an earlier run wrote is touched. Most of it is refused before Ray starts
(a second each); the cases that need the cluster come last."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mgc_ray.config import CACHE_SAMPLE_RATE, CACHE_SCHEMA_VERSION, PAPER
from mgc_ray.files import sealed_json

SPACE_HEAD = "start: {lr: 1.0e-4, weight_decay: 1.0e-4, batch_size: 8, window: 512, n_mels: 32, crop_seconds: 2.0}\n"
SPACES = {
    "negative_lr": "space:\n  lr: {type: uniform, low: -1.0e-3, high: 1.0e-3}\n",
    "zero_lr": "space:\n  lr: {type: choice, values: [1.0e-4, 0.0]}\n",
    "negative_wd": "space:\n  weight_decay: {type: uniform, low: -0.1, high: 0.1}\n",
    "empty": "space: {}\n",
    "huge_batch": "space:\n  batch_size: {type: choice, values: [8, 4096]}\n",
}


def _manifest(**over) -> dict:
    """A complete manifest.json document of a cache (no shards), with fields overridden."""
    return {
        "schema_version": CACHE_SCHEMA_VERSION,
        "sample_rate": CACHE_SAMPLE_RATE,
        "subset": "small",
        "split_scheme": "paper",
        "data_seed": 0,
        "fma_root": "/nowhere",
        "label_names": ["a", "b"],
        "counts": {},
        "num_tracks": {"train": 26, "val": 3, "test": 3},
        "wave_mean": 0.0,
        "wave_std": 0.1,
        "bad_tracks": [],
        "shards": {},
        "min_track_seconds": 2.0,
        "silence_peak": 1e-4,
        "tracks_per_shard": 64,
        "track_list_sha1": "0" * 40,
        "shard_sha256": {},
        **over,
    }


def _fma_root(base: Path, demo_root: str, name: str, edit) -> Path:
    """A copy of the demo's metadata (no audio: these are refused before any is read), edited."""
    root = base / name
    shutil.copytree(Path(demo_root) / "fma_metadata", root / "fma_metadata")
    tracks = pd.read_csv(root / "fma_metadata" / "tracks.csv", index_col=0, header=[0, 1])
    edit(tracks).to_csv(root / "fma_metadata" / "tracks.csv")
    return root


@pytest.fixture(scope="module")
def bad(tmp_path_factory, demo_root):
    """Bad files of every kind, and a work folder whose earlier results must survive."""
    base = tmp_path_factory.mktemp("bad_input")
    for name, body in SPACES.items():
        (base / f"{name}.yaml").write_text(SPACE_HEAD + body)
    (base / "a_file").write_text("not a folder\n")
    caches = {
        "no_manifest": None,
        "old_schema": _manifest(schema_version=CACHE_SCHEMA_VERSION - 1),
        "16k": _manifest(sample_rate=16_000),
        "tiny": _manifest(num_tracks={"train": 5, "val": 1, "test": 1}),
    }
    for name, manifest in caches.items():
        (base / "caches" / name).mkdir(parents=True)
        if manifest:
            (base / "caches" / name / "manifest.json").write_text(sealed_json(manifest))
    genre = ("track", "genre_top")
    _fma_root(base, demo_root, "no_genre_column", lambda t: t.drop(columns=[genre]))
    _fma_root(base, demo_root, "one_genre", lambda t: t[t[genre] == t[genre].iloc[0]])
    _fma_root(base, demo_root, "two_tracks", lambda t: t.groupby(t[genre]).head(1).iloc[:2])
    _fma_root(base, demo_root, "metadata_only", lambda t: t)
    # What an earlier search left: it must come through every refusal untouched.
    work = base / "work"
    (work / "results" / "demo-smoke" / "densenet-demo-smoke-earlier").mkdir(parents=True)
    (work / "results" / "demo-smoke" / "densenet-demo-smoke-earlier" / "summary.md").write_text("earlier\n")
    (work / "ray" / "earlier").mkdir(parents=True)
    (work / "ray" / "earlier" / "experiment_state-x.json").write_text("{}\n")
    return base


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _tune(b: Path, *args: str) -> list[str]:
    w = b / "work"
    return [
        "mgc_ray.tune",
        "--mlflow-uri",
        f"sqlite:///{w / 'mlflow.db'}",
        "--results-dir",
        str(w / "results"),
        "--storage-path",
        str(w / "ray"),
        *args,
    ]


# (id, argv builder from the bad-files folder, what the one line must say). Cheap ones: no Ray.
CASES = [
    ("tune-unknown-arch", lambda b: _tune(b, "--arch", "resnet"), "invalid choice: 'resnet'"),
    ("tune-zero-samples", lambda b: _tune(b, "--arch", "densenet", "--num-samples", "0"), "--num-samples must be >= 1"),
    (
        "tune-negative-gpus",
        lambda b: _tune(b, "--arch", "densenet", "--gpus-per-trial", "-1"),
        "--gpus-per-trial must be in [0, 1]",
    ),
    ("tune-two-gpus", lambda b: _tune(b, "--arch", "densenet", "--gpus-per-trial", "2"), "a trial trains on one GPU"),
    (
        "tune-negative-lr",
        lambda b: _tune(b, "--arch", "densenet", "--space", str(b / "negative_lr.yaml")),
        "learning rate must be > 0",
    ),
    (
        "tune-zero-lr",
        lambda b: _tune(b, "--arch", "densenet", "--space", str(b / "zero_lr.yaml")),
        "learning rate must be > 0",
    ),
    (
        "tune-negative-weight-decay",
        lambda b: _tune(b, "--arch", "densenet", "--space", str(b / "negative_wd.yaml")),
        "weight decay must be >= 0",
    ),
    (
        "tune-empty-space",
        lambda b: _tune(b, "--arch", "densenet", "--space", str(b / "empty.yaml")),
        "empty `space:` block",
    ),
    (
        "tune-foreign-dashboard-host",
        lambda b: _tune(b, "--arch", "densenet", "--dashboard-host", "192.0.2.1"),
        "not an address of this machine",
    ),
    (
        "tune-missing-space",
        lambda b: _tune(b, "--arch", "densenet", "--space", str(b / "nope.yaml")),
        "no search space",
    ),
    ("tune-missing-fma-root", lambda b: _tune(b, "--arch", "densenet", "--fma-root", str(b / "nope")), "--fma-root"),
    (
        "tune-unwritable-results",
        lambda b: _tune(b, "--arch", "densenet", "--results-dir", str(b / "a_file" / "r")),
        "--results-dir",
    ),
    (
        "tune-unwritable-storage",
        lambda b: _tune(b, "--arch", "densenet", "--storage-path", str(b / "a_file" / "s")),
        "--storage-path",
    ),
    (
        "tune-unwritable-mlflow",
        lambda b: _tune(b, "--arch", "densenet", "--mlflow-uri", f"sqlite:///{b / 'a_file' / 'm.db'}"),
        "--mlflow-uri folder",
    ),
    ("tune-missing-cache", lambda b: _tune(b, "--arch", "densenet", "--cache", str(b / "nope")), "--cache"),
    (
        "tune-unprepared-cache",
        lambda b: _tune(b, "--arch", "densenet", "--cache", str(b / "caches" / "no_manifest")),
        "not a prepared cache",
    ),
    (
        "tune-old-cache-schema",
        lambda b: _tune(b, "--arch", "densenet", "--cache", str(b / "caches" / "old_schema")),
        f"cache schema {CACHE_SCHEMA_VERSION - 1}",
    ),
    (
        "tune-cache-sample-rate",
        lambda b: _tune(b, "--arch", "densenet", "--cache", str(b / "caches" / "16k")),
        "16000 Hz audio, 22050 Hz is needed",
    ),
    (
        "tune-batch-larger-than-split",
        lambda b: _tune(
            b, "--arch", "densenet", "--cache", str(b / "caches" / "tiny"), "--space", str(b / "huge_batch.yaml")
        ),
        "larger than the training split",
    ),
    (
        "tune-tracks-csv-columns",
        lambda b: _tune(b, "--arch", "densenet", "--fma-root", str(b / "no_genre_column")),
        "lacks the column(s) track.genre_top",
    ),
    ("tune-one-genre", lambda b: _tune(b, "--arch", "densenet", "--fma-root", str(b / "one_genre")), "at least two"),
    ("tune-empty-split", lambda b: _tune(b, "--arch", "densenet", "--fma-root", str(b / "two_tracks")), "empty"),
    (
        "tune-resume-nothing",
        lambda b: _tune(b, "--arch", "baseline_b", "--smoke", "--resume"),
        "--resume: no earlier search",
    ),
    (
        "tune-name-taken",
        lambda b: _tune(b, "--arch", "densenet", "--cache", str(b / "caches" / "tiny"), "--experiment-name", "earlier"),
        "already exists",
    ),
    ("prepare-no-fma-root", lambda b: ["mgc_ray.prepare", "--fma-root", str(b / "nope")], "not a folder"),
    (
        "prepare-unwritable-out",
        lambda b: ["mgc_ray.prepare", "--fma-root", str(b / "metadata_only"), "--out", str(b / "a_file" / "c")],
        "--out",
    ),
    (
        "prepare-low-rate",
        lambda b: ["mgc_ray.prepare", "--fma-root", str(b / "one_genre"), "--sample-rate", "100"],
        "too low",
    ),
    (
        "prepare-tracks-csv-columns",
        lambda b: ["mgc_ray.prepare", "--fma-root", str(b / "no_genre_column")],
        "lacks the column(s)",
    ),
    ("prepare-empty-split", lambda b: ["mgc_ray.prepare", "--fma-root", str(b / "two_tracks")], "empty"),
    ("prepare-bad-flag", lambda b: ["mgc_ray.prepare", "--fma-root", str(b), "--subset", "tiny"], "invalid choice"),
    ("demo-too-few-tracks", lambda b: ["mgc_ray.demo", "--out", str(b / "d1"), "--tracks-per-genre", "2"], "too small"),
    ("demo-too-short", lambda b: ["mgc_ray.demo", "--out", str(b / "d2"), "--seconds", "0"], "too short"),
    (
        "demo-unwritable-out",
        lambda b: ["mgc_ray.demo", "--out", str(b / "a_file" / "d"), "--tracks-per-genre", "3", "--seconds", "1"],
        "cannot be created",
    ),
]


def test_tune_offers_every_arch_with_paper_settings_and_a_model():
    from mgc_ray.models import list_models
    from mgc_ray.search.plan import arch_list
    from mgc_ray.tune import build_parser

    archs = arch_list("all")
    assert set(archs) == set(PAPER) and set(archs) <= set(list_models())
    assert build_parser().parse_args(["--arch", "densenet,fusion"]).arch == ("densenet", "fusion")


def _run(argv: list[str], home: Path, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MGC_HOME": str(home), **(env or {})}
    cwd = next(p for p in home.parents if p.is_dir())  # the nearest folder that exists
    return subprocess.run(
        [sys.executable, "-m", *argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def _check_refused(proc: subprocess.CompletedProcess, needle: str) -> str:
    assert proc.returncode == 2, f"rc {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and proc.stderr.rstrip().endswith(errors[0]), proc.stderr[-3000:]
    assert needle in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize("argv, needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(bad, tmp_path, argv, needle, faults, request):
    before = _snapshot(bad / "work")
    proc = _run(argv(bad), home=tmp_path / "home")
    _check_refused(proc, needle)
    assert _snapshot(bad / "work") == before, "an earlier run's files are untouched"
    faults.record(f"bad input: {request.node.callspec.id}", 1, "exit 2, one line naming it; earlier results untouched")


def test_existing_cache_of_other_settings_is_kept(demo_root, tmp_path, faults):
    """prepare into a cache made at another sample rate: refused, the cache as it was."""
    out = tmp_path / "cache"
    (out / "shards").mkdir(parents=True)
    manifest = _manifest(sample_rate=16_000, subset="small", data_seed=0)
    (out / "manifest.json").write_text(sealed_json(manifest))
    (out / "shards" / "train-00000.parquet").write_bytes(b"earlier shard")
    before = _snapshot(out)
    proc = _run(["mgc_ray.prepare", "--fma-root", demo_root, "--out", str(out)], home=tmp_path / "home")
    _check_refused(proc, "other settings")
    assert _snapshot(out) == before
    faults.record("bad input: prepare into a cache of other settings", 1, "exit 2, one line; the cache untouched")


def test_more_gpus_than_any_node_is_refused_before_prepare(demo_root, tmp_path):
    """Needs Ray (the cluster's GPUs): refused right after Ray starts, before any shard is decoded.
    The same run has Ray's token authentication turned off by the user: warned about."""
    home = tmp_path / "home"
    proc = _run(
        _tune(tmp_path, "--arch", "densenet", "--fma-root", demo_root, "--gpus-per-trial", "1", "--no-dashboard"),
        home=home,
        env={"RAY_AUTH_MODE": "disabled"},
    )
    _check_refused(proc, "--gpus-per-trial 1 is more than any node has (0 GPUs)")
    assert not list(home.glob("caches/*/shards/*.parquet")), "nothing prepared"
    assert "warning: RAY_AUTH_MODE=disabled turns off Ray's token authentication" in proc.stderr


def test_unwritable_home_is_refused(demo_root, tmp_path):
    """$MGC_HOME (where the cache of an --fma-root goes) under a file: refused before Ray."""
    (tmp_path / "a_file").write_text("x\n")
    proc = _run(_tune(tmp_path, "--arch", "densenet", "--fma-root", demo_root), home=tmp_path / "a_file" / "home")
    _check_refused(proc, "the cache folder")
