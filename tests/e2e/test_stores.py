"""Every store a command opens is checked before anything is written: the Optuna storage, the
MLflow store, Tune's folder and the cache. A damaged, locked, foreign or unreadable one is one
line naming the file and the fix, exit 2, and every store and folder stays exactly as it was
(bytes, modification times, listings). Real stores (an Optuna study and an MLflow experiment
made by the libraries), damaged the way disks, copies and people damage them; the real CLIs,
which refuse all of this before Ray starts (seconds each).

Unreadable by permissions cannot be shown here: the tests run as root, which reads a file of
mode 000. An unreadable store is shown instead as a folder where the store's file should be
(sqlite cannot open it either)."""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mgc_ray.config import CACHE_SCHEMA_VERSION
from mgc_ray.files import sealed_json
from mgc_ray.stores import LOCK_WAIT_S


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> Path:
    """A real MLflow store with an experiment and a real Optuna storage with a study, made once."""
    import optuna
    from mlflow.tracking import MlflowClient

    base = tmp_path_factory.mktemp("stores")
    MlflowClient(f"sqlite:///{base / 'mlflow.db'}").create_experiment("earlier")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=f"sqlite:///{base / 'optuna.db'}", study_name="earlier")
    for _ in range(20):  # a few pages of trials, so that cutting the file short cuts real rows
        study.tell(study.ask({"lr": optuna.distributions.FloatDistribution(1e-5, 1e-1)}), 0.5)
    app = sqlite3.connect(base / "app.db")
    app.executescript("CREATE TABLE users (id INTEGER, name TEXT); CREATE TABLE orders (id INTEGER);")
    app.close()
    return base


@pytest.fixture
def work(stores, tmp_path) -> Path:
    """A user's folder after an earlier search: its stores, results and Tune folder."""
    w = tmp_path / "work"
    w.mkdir()
    for name in ("mlflow.db", "optuna.db"):
        shutil.copy2(stores / name, w / name)
    (w / "results" / "earlier").mkdir(parents=True)
    (w / "results" / "earlier" / "summary.md").write_text("earlier\n")
    (w / "ray" / "earlier").mkdir(parents=True)
    (w / "ray" / "earlier" / "tuner.pkl").write_bytes(b"earlier")
    return w


def _snapshot(folder: Path) -> dict:
    """Every file's bytes and mtime and every folder, under `folder`."""
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.stat()
        out[str(p.relative_to(folder))] = (p.read_bytes(), st.st_mtime_ns) if p.is_file() else "dir"
    return out


def _cli(module: str, *args: str, home: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MGC_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", module, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


def _tune(w: Path, *args: str, home: Path) -> subprocess.CompletedProcess:
    return _cli(
        "mgc_ray.tune",
        "--arch",
        "baseline_a_2d",
        "--smoke",
        "--no-dashboard",
        "--mlflow-uri",
        f"sqlite:///{w / 'mlflow.db'}",
        "--results-dir",
        str(w / "results"),
        "--storage-path",
        str(w / "ray"),
        *args,
        home=home,
        cwd=w,
    )


def _refused(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, f"rc {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and proc.stderr.rstrip().endswith(errors[0]), proc.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _cut_short(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def _page_garbage(path: Path) -> None:
    """A page of zeros over the last table page: the header and the size stay right, the tree breaks."""
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[-page:] = bytes(page)
    path.write_bytes(bytes(data))


def _foreign_tune(w: Path) -> None:
    """An experiment of another Tune program where the search to resume should be."""
    exp = w / "ray" / "earlier"
    trial = '{"trainable_name": "train_other_model", "trial_id": "0"}'
    state = {"trial_data": [[trial, "{}"]], "runner_data": {}, "stats": {}}
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(state))


def _damaged_tune(w: Path) -> None:
    (w / "ray" / "earlier" / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": [["{')


# (id, damage done to the work folder, extra tune flags from the work folder, what the one line says)
CASES = [
    ("optuna-cut-short", lambda w: _cut_short(w / "optuna.db"), lambda w: [], ["--optuna-storage", "is cut short"]),
    ("mlflow-garbage", lambda w: _garbage(w / "mlflow.db"), lambda w: [], ["--mlflow-uri", "not a sqlite database"]),
    ("optuna-bad-page", lambda w: _page_garbage(w / "optuna.db"), lambda w: [], ["--optuna-storage", "is damaged"]),
    (
        "mlflow-store-as-optuna",
        lambda w: None,
        lambda w: ["--optuna-storage", f"sqlite:///{w / 'mlflow.db'}"],
        ["is the MLflow store's own file"],
    ),
    (
        "optuna-storage-as-mlflow",
        lambda w: shutil.copy2(w / "optuna.db", w / "studies.db"),
        lambda w: ["--mlflow-uri", f"sqlite:///{w / 'studies.db'}", "--optuna-storage", f"sqlite:///{w / 'o2.db'}"],
        ["--mlflow-uri", "holds an Optuna storage, not an MLflow store"],
    ),
    (
        "mlflow-store-of-another-copy-as-optuna",
        lambda w: shutil.copy2(w / "mlflow.db", w / "runs.db"),
        lambda w: ["--optuna-storage", f"sqlite:///{w / 'runs.db'}"],
        ["--optuna-storage", "holds an MLflow store, not an Optuna storage"],
    ),
    (
        "foreign-sqlite-as-optuna",
        lambda w: None,
        lambda w: ["--optuna-storage", f"sqlite:///{w / 'app.db'}"],
        ["another program's sqlite database", "orders, users"],
    ),
    (
        "folder-as-mlflow",
        lambda w: (w / "runs").mkdir(),
        lambda w: ["--mlflow-uri", f"sqlite:///{w / 'runs'}", "--optuna-storage", f"sqlite:///{w / 'o2.db'}"],
        ["--mlflow-uri", "is a folder"],
    ),
    (
        "storage-path-is-a-file",
        lambda w: (w / "ray.txt").write_text("notes\n"),
        lambda w: ["--storage-path", str(w / "ray.txt")],
        ["--storage-path", "is a file, not a folder"],
    ),
    (
        "resume-foreign-tune-experiment",
        _foreign_tune,
        lambda w: ["--resume", "--experiment-name", "earlier", "--mlflow-uri", f"sqlite:///{w / 'm2.db'}"],
        ["another program's Tune experiment", "train_other_model"],
    ),
    (
        "resume-damaged-tune-state",
        _damaged_tune,
        lambda w: ["--resume", "--experiment-name", "earlier", "--mlflow-uri", f"sqlite:///{w / 'm2.db'}"],
        ["Tune's state", "is damaged"],
    ),
]


@pytest.mark.parametrize("damage, flags, needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_store_is_refused_before_anything_is_written(stores, work, tmp_path, damage, flags, needles, request):
    shutil.copy2(stores / "app.db", work / "app.db")
    damage(work)
    before = _snapshot(work)
    proc = _tune(work, *flags(work), home=tmp_path / "home")
    line = _refused(proc, *needles)
    assert str(work) in line, "the line names the file"
    assert _snapshot(work) == before, "every store and folder as it was"
    request.getfixturevalue("faults").record(
        f"store: {request.node.callspec.id}", 1, "exit 2 before Ray, one line naming the file; nothing written"
    )


def test_a_store_locked_by_another_process_is_refused_after_the_wait(work, tmp_path, faults):
    """Another program holds the Optuna storage in an exclusive transaction (a sqlite3 shell in
    BEGIN EXCLUSIVE): refused after LOCK_WAIT_S, not waited on forever, nothing written."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            f"c = sqlite3.connect({str(work / 'optuna.db')!r}, isolation_level=None)\n"
            "c.execute('BEGIN EXCLUSIVE'); print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _snapshot(work)
        start = time.monotonic()
        proc = _tune(work, home=tmp_path / "home")
        took = time.monotonic() - start
    finally:
        holder.stdin.close()
        holder.wait(60)
    _refused(proc, "--optuna-storage", str(work / "optuna.db"), "is locked by another process")
    assert took >= LOCK_WAIT_S, "it waited for the lock to go first"
    assert _snapshot(work) == before
    faults.record(
        "store: Optuna storage locked by another process", 1, f"exit 2 after {LOCK_WAIT_S:g} s; nothing written"
    )


def test_evaluate_predict_and_compare_refuse_a_damaged_store(stores, work, tmp_path, faults):
    _garbage(work / "mlflow.db")
    before = _snapshot(work)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    home = tmp_path / "home"
    for argv in (
        ["mgc_ray.evaluate", "--run-id", "0" * 32, "--mlflow-uri", uri],
        ["mgc_ray.predict", "--run-id", "0" * 32, "--mlflow-uri", uri, str(work / "song.mp3")],
        ["mgc_ray.compare", "--mlflow-uri", uri, "--out", str(tmp_path / "compare" / "compare.md")],
    ):
        proc = _cli(*argv, home=home, cwd=work)
        _refused(proc, f"--mlflow-uri {work / 'mlflow.db'}", "not a sqlite database")
        assert _snapshot(work) == before and not (tmp_path / "compare").exists()
    faults.record(
        "store: a damaged MLflow store read by evaluate, predict, compare", 3, "exit 2, one line; nothing written"
    )


def test_a_damaged_cache_manifest_is_refused_before_anything_is_written(work, tmp_path, faults):
    cache = tmp_path / "cache"
    cache.mkdir()
    text = sealed_json({"schema_version": CACHE_SCHEMA_VERSION, "sample_rate": 22050})
    (cache / "manifest.json").write_text(text.replace("22050", "22051"))
    before = _snapshot(work), _snapshot(cache)
    proc = _tune(work, "--cache", str(cache), home=tmp_path / "home")
    _refused(proc, str(cache / "manifest.json"), "is damaged")
    assert (_snapshot(work), _snapshot(cache)) == before
    faults.record("store: a cache manifest changed on disk", 1, "exit 2, one line naming it; nothing written")
