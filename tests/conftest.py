# ---- data fixtures: FMA samples, demo dataset, Ray (owner: fma/demo/prepare) ----
# Shared by tests/unit/test_fma.py, test_demo.py and tests/e2e/test_prepare.py; add other blocks below, not inside.
import dataclasses as _dataclasses
import json as _json
import os as _os
import signal as _signal
import subprocess as _subprocess
import sys as _sys
import time as _time
from pathlib import Path as _Path

import pytest as _pytest

# The real FMA files the tests read, inside the checkout (sources and licences in its SOURCES.md).
FMA_SAMPLES = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "data", "fma_samples")


def pytest_collection_modifyitems(config, items):
    """Files with the most end-to-end (`slow`) tests first: xdist hands out a file at a time in
    this order (`--no-loadscope-reorder`; by default it would hand out the files with the most
    tests first, leaving one-test end-to-end files for the end), so the long files start early
    and the short ones fill the end of the run."""
    slow: dict = {}
    for item in items:
        slow[item.path] = slow.get(item.path, 0) + bool(item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])  # stable: a file's tests keep their order


TINY_DEMO = dict(tracks_per_genre=4, seconds=4.0, seed=0)  # 32 tracks, ~1 s to write


@_pytest.fixture(scope="session")
def fma_samples() -> str:
    """The real FMA files in tests/data/fma_samples."""
    return FMA_SAMPLES


@_pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> str:
    """One tiny demo dataset per session (TINY_DEMO), in FMA's layout. Treat it as read-only."""
    from mgc_ray.demo import write_demo

    return write_demo(tmp_path_factory.mktemp("demo") / "fma", **TINY_DEMO)


@_pytest.fixture(scope="module")
def ray_local():
    """A local Ray (2 CPUs, no dashboard) for one test module; prepare() reuses it.

    Yields:
        The cluster's GCS address (for CLIs run with --address).
    """
    import ray

    from mgc_ray import cluster

    cluster.init(None, num_cpus=2, object_store_memory=128 * 2**20, logging_level="WARNING")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


# ---- end of data fixtures ----


# ---- one trained search for evaluate/predict/compare/plots (owner: evaluate/predict/compare/plots) ----
# A `--smoke` baseline_a_2d search run once per session, as a user runs it; its MLflow store,
# checkpoints, cache and results folder are shared by tests/e2e/test_evaluate.py, test_predict.py,
# test_compare.py and test_plots.py. Treat them as read-only, except that evaluate --run-id adds
# its artifacts to the search's runs (what it is for).


@_dataclasses.dataclass(frozen=True)
class SmokeSearch:
    """Where the session's smoke search left everything."""

    workdir: object  # pathlib.Path: the search's MGC_HOME, store and folders live under it
    uri: str  # sqlite MLflow URI
    parent_run_id: str  # the search run (mgc.source=search)
    best_run_id: str  # its best trial's run
    checkpoint: str  # the best trial's checkpoint directory (mgc.checkpoint)
    cache: str  # the search's waveform cache (22,050 Hz, demo-smoke)
    results: object  # pathlib.Path: the search's results folder
    name: str = ""  # the search's name (its search run's mgc.search tag)


def _run_module(module: str, *args: str, env: dict | None = None, cwd=None, timeout: int = 600):
    """`python -m <module> args...` as a user runs it; returns the CompletedProcess (text)."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env={**_os.environ, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@_pytest.fixture(scope="session")
def run_module():
    """The function `run_module(module, *args, env=None, cwd=None, timeout=600)` -> CompletedProcess."""
    return _run_module


@_pytest.fixture(scope="session")
def smoke_search(tmp_path_factory) -> SmokeSearch:
    """`python -m mgc_ray.tune --arch baseline_a_2d --smoke` (2 trials x 2 epochs, ~45 s on 2 cores),
    run once per test run: pytest-xdist's processes share it through their common temp folder."""
    from mlflow.tracking import MlflowClient

    from mgc_ray.files import locked

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if _os.environ.get("PYTEST_XDIST_WORKER") else base
    work = shared / "smoke_search"
    uri = f"sqlite:///{work / 'mlflow.db'}"
    with locked(shared / "smoke_search.lock"):
        if not (work / "done").is_file():
            work.mkdir(exist_ok=True)
            proc = _run_module(
                "mgc_ray.tune",
                "--arch",
                "baseline_a_2d",
                "--smoke",
                "--no-dashboard",
                "--mlflow-uri",
                uri,
                "--results-dir",
                str(work / "results"),
                "--storage-path",
                str(work / "ray"),
                env={"MGC_HOME": str(work / "home"), "PYTHONUNBUFFERED": "1"},
                cwd=work,
            )
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
            (work / "done").write_text("ok\n")
    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name("mgc_ray/baseline_a_2d/demo-smoke")
    runs = c.search_runs([exp.experiment_id], max_results=100)
    parent = [r for r in runs if r.data.tags.get("mgc.source") == "search"][0]
    best_id = parent.data.tags["mgc.best_trial"]
    best = [r for r in runs if r.data.tags.get("mgc.trial_id") == best_id][0]
    results = sorted((work / "results" / "demo-smoke").glob("baseline_a_2d-*"))[-1]
    return SmokeSearch(
        workdir=work,
        uri=uri,
        parent_run_id=parent.info.run_id,
        best_run_id=best.info.run_id,
        checkpoint=parent.data.tags["mgc.checkpoint"],
        cache=parent.data.params["cache"],
        results=results,
        name=parent.data.tags["mgc.search"],
    )


# ---- end of the trained-search fixtures ----


# ---- reliability: CLI runs watched while they run, a Ray cluster, fault injection ----
# (owner: search/driver, trial/trainable) Used by tests/e2e/test_cluster.py, test_faults.py,
# test_resume.py and test_bad_input.py.

RELIABILITY_ARCH = "baseline_a_2d"  # the cheapest 2D model: these tests are about Ray, not models
# lr 1e8 makes 2D Baseline A's loss NaN in its first epoch (a diverged trial); 1e-4 is the paper's.
DIVERGING_SPACE = """# tests: the paper's lr trains, lr 1e8 diverges (NaN loss) in epoch 0
start: {lr: 1.0e-4, weight_decay: 1.0e-4, batch_size: 8, window: 512, n_mels: 32, crop_seconds: 2.0}
space:
  lr: {type: choice, values: [1.0e-4, 1.0e+8]}
"""
CALM_SPACE = """# tests: only lr and weight decay are searched, in ranges that train
start: {lr: 1.0e-4, weight_decay: 1.0e-4, batch_size: 8, window: 512, n_mels: 32, crop_seconds: 2.0}
space:
  lr: {type: loguniform, low: 1.0e-5, high: 1.0e-3}
  weight_decay: {type: loguniform, low: 1.0e-6, high: 1.0e-2}
"""


def _children_of() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in _Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    return kids


def _cmdline(pid: int) -> str:
    try:
        return (_Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = (_Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class CliRun:
    """`python -m <module> args` in a subprocess, its stdout and stderr in one file, watched while it runs.

    Every process it starts (its local Ray: gcs, raylet, workers) is its descendant; `stop()`
    ends those, by pid, if the command left any behind.
    """

    def __init__(self, module: str, *args: str, cwd, env: dict):
        self.cwd = _Path(cwd)
        self.log = self.cwd / f"{module.rsplit('.', 1)[-1]}-{_time.time_ns()}.log"
        self._out = open(self.log, "w")
        self.proc = _subprocess.Popen(
            [_sys.executable, "-m", module, *args],
            cwd=cwd,
            env=env,
            stdout=self._out,
            stderr=_subprocess.STDOUT,
            text=True,
        )
        self.tree: dict[int, str] = {}  # pid -> command line when seen: a reused pid is not ours

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, n: int = 6000) -> str:
        return f"--- output of {self.log} (last {n} chars) ---\n" + self.output[-n:]

    def descendants(self) -> list[int]:
        kids, out, todo = _children_of(), [], [self.proc.pid]
        while todo:
            for k in kids.get(todo.pop(), []):
                out.append(k)
                todo.append(k)
        for pid in out:
            self.tree.setdefault(pid, _cmdline(pid))
        return out

    def _ours_alive(self) -> list[int]:
        return [p for p, cmd in self.tree.items() if _alive(p) and _cmdline(p) == cmd]

    def wait_until(self, check, timeout: float, what: str):
        """Poll `check()` until it returns something truthy; fail if the command ends first."""
        end = _time.monotonic() + timeout
        while _time.monotonic() < end:
            self.descendants()
            value = check()
            if value:
                return value
            if self.proc.poll() is not None:
                raise AssertionError(f"the command ended (rc {self.proc.returncode}) before {what}\n{self.tail()}")
            _time.sleep(0.2)
        self.stop()
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.tail()}")

    def wait(self, timeout: float = 600) -> int:
        try:
            return self.proc.wait(timeout)
        except _subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"the command ran past {timeout:.0f} s\n{self.tail()}") from None
        finally:
            self._out.close()

    def signal(self, sig: int) -> None:
        self.descendants()
        self.proc.send_signal(sig)

    def leftovers(self, grace: float = 20.0) -> list[int]:
        """Processes of this command still alive `grace` s after it ended (its Ray should go with it)."""
        end = _time.monotonic() + grace
        while True:
            alive = self._ours_alive()
            if not alive or _time.monotonic() > end:
                return alive
            _time.sleep(0.5)

    def stop(self) -> None:
        """SIGKILL this command and everything it started (by pid: only our own processes)."""
        if self.proc.poll() is None:
            self.descendants()
            self.proc.kill()
        for pid in self._ours_alive():
            try:
                _os.kill(pid, _signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.proc.wait(10)
        except _subprocess.TimeoutExpired:
            pass


@_pytest.fixture
def cli_runs():
    """Start CLIs with `cli_runs(module, *args, cwd=..., env=...)`; any left running are stopped."""
    runs: list[CliRun] = []

    def start(module: str, *args: str, cwd, env: dict) -> CliRun:
        run = CliRun(module, *args, cwd=cwd, env=env)
        runs.append(run)
        return run

    yield start
    for run in runs:
        if run.proc.poll() is None or run.leftovers(grace=0):
            run.stop()


@_pytest.fixture(scope="session")
def smoke_home(tmp_path_factory) -> _Path:
    """One MGC_HOME for the reliability tests: `--smoke` writes its demo and cache there once."""
    return tmp_path_factory.mktemp("reliability_home")


def tune_env(home) -> dict:
    return {**_os.environ, "MGC_HOME": str(home), "PYTHONUNBUFFERED": "1"}


def tune_args(work, *args: str, arch: str = RELIABILITY_ARCH) -> list[str]:
    """The tune CLI's flags for a search under `work` (MLflow store, results, Tune storage)."""
    work = _Path(work)
    return [
        "--arch",
        arch,
        "--mlflow-uri",
        f"sqlite:///{work / 'mlflow.db'}",
        "--results-dir",
        str(work / "results"),
        "--storage-path",
        str(work / "ray"),
        *args,
    ]


def experiment_dir(work, name: str | None = None) -> _Path | None:
    """The (newest, or named) Tune experiment folder under `work`/ray."""
    found = sorted((p for p in (_Path(work) / "ray").glob(name or "*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def trial_results(exp: _Path) -> dict[str, list[dict]]:
    """{trial id: the results Tune's driver logged to the trial's progress.csv, in order}.

    Numbers come back as floats (epoch and restored_epochs as ints). Not result.json: Ray 2.60's
    JSON logger loses the last line before a trial's worker dies (the CSV and MLflow keep it).
    """
    import csv

    out = {}
    for d in sorted(_Path(exp).glob("train_trial_*")):
        rows = []
        if (d / "progress.csv").is_file():
            with open(d / "progress.csv", newline="") as f:
                for row in csv.DictReader(f):
                    rows.append({k: _number(v) for k, v in row.items()})
        out[d.name.split("_")[2]] = rows
    return out


def _number(v: str):
    try:
        x = float(v)
    except (TypeError, ValueError):
        return v
    return int(x) if x.is_integer() else x


def tune_state(exp: _Path) -> dict[str, str]:
    """{trial id: status} from Tune's last saved experiment state ({} before the first save)."""
    files = sorted(_Path(exp).glob("experiment_state-*.json"))  # one per driver session, named by its start
    if not files:
        return {}
    try:
        data = _json.loads(files[-1].read_text())
    except ValueError:  # being rewritten
        return {}
    return {t["trial_id"]: t["status"] for t in (_json.loads(entry[0]) for entry in data["trial_data"])}


def searcher_study(exp: _Path):
    """The search's Optuna study, from its default storage beside `work`/mlflow.db (None before it exists)."""
    import optuna

    storage = f"sqlite:///{_Path(exp).parent.parent / 'optuna.db'}"  # exp is work/ray/<name>
    try:
        return optuna.load_study(study_name=_Path(exp).name, storage=storage)
    except KeyError:
        return None


def mlflow_search(work, arch: str = RELIABILITY_ARCH, dataset: str = "demo-smoke", name: str | None = None):
    """(client, parent run, child runs) of the newest (or named) search in `work`/mlflow.db."""
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=f"sqlite:///{_Path(work) / 'mlflow.db'}")
    exp = c.get_experiment_by_name(f"mgc_ray/{arch}/{dataset}")
    assert exp is not None, f"no MLflow experiment mgc_ray/{arch}/{dataset}"
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    parents = [
        r
        for r in runs
        if r.data.tags.get("mgc.source") == "search" and (name is None or r.data.tags.get("mgc.search") == name)
    ]
    parent = max(parents, key=lambda r: r.info.start_time)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return c, parent, children


@_pytest.fixture(scope="session")
def rel():
    """The reliability helpers above, as attributes (tests import nothing from conftest)."""
    import types

    return types.SimpleNamespace(
        DIVERGING_SPACE=DIVERGING_SPACE,
        CALM_SPACE=CALM_SPACE,
        env=tune_env,
        args=tune_args,
        experiment_dir=experiment_dir,
        trial_results=trial_results,
        tune_state=tune_state,
        searcher_study=searcher_study,
        mlflow_search=mlflow_search,
        cmdline=_cmdline,
        alive=_alive,
    )


# ---- end of the reliability fixtures ----


# ---- the reliability ledger: every fault and bad input a test injects (owner: reliability) ----
# `faults.record(fault, times, survived)` appends one line to $MGC_RELIABILITY_LOG (JSON lines) when
# set; benchmarks/reliability.py runs the tests with it and renders results/reliability.md.
RELIABILITY_LOG_ENV = "MGC_RELIABILITY_LOG"


class _Ledger:
    def __init__(self, test: str):
        self.test = test

    def record(self, fault: str, times: int, survived: str) -> None:
        """One kind of fault injected `times` times; `survived`: what held every time (checked by the test)."""
        path = _os.environ.get(RELIABILITY_LOG_ENV)
        if path:
            with open(path, "a", encoding="utf-8") as f:
                f.write(
                    _json.dumps({"test": self.test, "fault": fault, "times": int(times), "survived": survived}) + "\n"
                )


@_pytest.fixture
def faults(request) -> _Ledger:
    """The reliability ledger for this test (records nothing unless $MGC_RELIABILITY_LOG is set)."""
    return _Ledger(request.node.nodeid)


# ---- end of the reliability ledger ----
