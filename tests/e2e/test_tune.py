"""`python -m mgc_ray.tune` end to end, as a user runs it: real Ray, real MLflow (sqlite),
real mp3s from the demo generator, real Parquet."""

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mgc_ray.cluster import DASHBOARD_PORT
from mgc_ray.config import PAPER

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One MGC_HOME (demo data generated on first use), MLflow store and results folder."""
    return tmp_path_factory.mktemp("tune")


def run_tune(workdir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "MGC_HOME": str(workdir / "home"), "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "mgc_ray.tune",
        *args,
        "--smoke",
        "--mlflow-uri",
        f"sqlite:///{workdir / 'mlflow.db'}",
        "--results-dir",
        str(workdir / "results"),
        "--storage-path",
        str(workdir / "ray"),
    ]
    proc = subprocess.run(cmd, env=env, cwd=workdir, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def mlflow_runs(workdir: Path, arch: str):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    exp = c.get_experiment_by_name(f"mgc_ray/{arch}/demo-smoke")
    assert exp is not None, "the driver creates one experiment per arch and dataset"
    return c, c.search_runs([exp.experiment_id], max_results=1000)


def by_source(runs, source):
    return [r for r in runs if r.data.tags.get("mgc.source") == source]


def check_search(workdir: Path, arch: str, out: str, n_trials: int, max_epochs: int) -> dict:
    c, runs = mlflow_runs(workdir, arch)
    assert all(r.info.status != "RUNNING" for r in runs), "every run ends FINISHED or FAILED"
    paper = by_source(runs, "paper")
    assert len(paper) == 1, "the paper's Table 1 row is logged once per experiment"
    for k, v in PAPER[arch].table1.items():
        assert paper[0].data.metrics[f"test/{k}"] == pytest.approx(v)
    parents = by_source(runs, "search")
    parent = parents[-1]
    assert parent.info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == n_trials
    for child in children:
        assert child.info.status == "FINISHED"
        history = c.get_metric_history(child.info.run_id, "val/loss")
        assert 1 <= len(history) <= max_epochs
        assert [m.step for m in history] == list(range(len(history))), "step = epoch"
        assert "val/macro_f1" in child.data.metrics and "val/paper_f1" in child.data.metrics
        assert any(k.startswith("val/f1/") for k in child.data.metrics), "per-class F1 per epoch"
        assert child.data.params["arch"] == arch
        assert child.data.tags["mgc.device"] == "cpu", "no GPU here: every trial names the CPU"
    best_id = parent.data.tags["mgc.best_trial"]
    best = [r for r in children if r.data.tags["mgc.trial_id"] == best_id][0]
    for run in (parent, best):
        for k in ("paper_f1", "paper_accuracy", "macro_precision", "macro_recall", "macro_f1", "top1_accuracy"):
            assert 0.0 <= run.data.metrics[f"test/{k}"] <= 1.0
        assert "test_track/macro_f1" in run.data.metrics
    artifacts = {a.path for a in c.list_artifacts(parent.info.run_id)}
    assert {"confusion_matrix.png", "per_class_f1.png", "best_config.yaml"} <= artifacts

    results = sorted((workdir / "results" / "demo-smoke").glob(f"{arch}-*"))[-1]
    for name in ("leaderboard.csv", "best_config.yaml", "summary.md", "test_metrics.json"):
        assert (results / name).is_file(), name
    for png in ("confusion_matrix.png", "per_class_f1.png"):
        assert (results / png).read_bytes()[:8] == PNG_MAGIC
    board = (results / "leaderboard.csv").read_text().strip().splitlines()
    assert len(board) == 1 + n_trials
    device_col = board[0].split(",").index("device")
    assert {row.split(",")[device_col] for row in board[1:]} == {"cpu"}
    summary = (results / "summary.md").read_text()
    assert f"paper Table 1 ({PAPER[arch].label})" in summary and "top1_accuracy" in summary
    # every figure of ours with its 95 % interval, and the difference from the paper's in words
    # (a smoke search on the demo's few test tracks: lower than the paper's, or too few tracks to tell)
    assert "95 % intervals (bootstrap over the test tracks, seeded)" in summary
    assert re.search(r"\| ours, best searched \|( \d\.\d{3}–\d\.\d{3} \|){6}", summary), summary
    ref = f"the paper's {PAPER[arch].table1['paper_f1']:.3f}"
    assert re.search(rf"- ours, best searched: paper_f1 (lower than|no clear difference from) {ref}", summary)
    for k in ("paper_f1", "top1_accuracy"):
        low, high = best.data.metrics[f"test_ci95/{k}/low"], best.data.metrics[f"test_ci95/{k}/high"]
        assert low <= best.data.metrics[f"test/{k}"] <= high
    assert f"paper Table 1 ({PAPER[arch].label})" in out, "the comparison table is printed"
    assert "MLflow" in out
    return yaml.safe_load((results / "best_config.yaml").read_text())


@pytest.mark.slow
def test_densenet_search_end_to_end(workdir):
    with socket.socket() as held:  # Ray's default dashboard port taken (another search, a `ray start` head)
        try:
            held.bind(("127.0.0.1", DASHBOARD_PORT))
            held.listen()
        except OSError:
            pass  # already held by another process: the same situation
        proc = run_tune(workdir, "--arch", "densenet")
    out = proc.stdout + proc.stderr
    assert "writing the built-in demo dataset" in out
    port = re.search(r"Ray dashboard at http://127\.0\.0\.1:(\d+)", out)
    assert port and int(port.group(1)) != DASHBOARD_PORT, "a busy dashboard port moves the dashboard, not the search"
    check_search(workdir, "densenet", out, n_trials=2, max_epochs=2)


@pytest.mark.slow
def test_paper_mode_runs_exactly_one_trial_with_the_paper_settings(workdir):
    # --paper keeps the paper's batch: 2D Baseline A's is DenseNet's logic at a fifth of a CPU's time
    proc = run_tune(workdir, "--arch", "baseline_a_2d", "--paper", "--no-dashboard")
    out = proc.stdout + proc.stderr
    c, runs = mlflow_runs(workdir, "baseline_a_2d")
    parent = [r for r in by_source(runs, "search") if "-paper-" in r.info.run_name][-1]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 1
    assert parent.data.tags["mgc.paper_trial"] == children[0].data.tags["mgc.trial_id"], "compare finds it by tag"
    params = children[0].data.params
    preset = PAPER["baseline_a_2d"]
    assert float(params["lr"]) == preset.lr
    assert float(params["weight_decay"]) == preset.weight_decay
    assert int(params["batch_size"]) == preset.batch_size
    assert "using the built-in demo dataset" in out, "the demo is generated once and reused"


@pytest.mark.slow
def test_fusion_search_end_to_end(workdir):
    proc = run_tune(workdir, "--arch", "fusion", "--no-dashboard")
    best = check_search(workdir, "fusion", proc.stdout + proc.stderr, n_trials=2, max_epochs=2)
    assert best["config"]["arch"] == "fusion"
