"""Every benchmark script's --smoke mode runs and writes a complete report.

Speed is never asserted: these check that the scripts keep working
against the code they measure, that their reports name the machine and the
load, that CPU runs say "no GPU on this machine" instead of GPU figures, and
what can be checked without timing (both feature paths agree, Tune's running
time is still parsed, the summary gathers every target).

To stay near a minute on 2 cores, the benchmarks' `main(["--smoke", ...])` run in
this process on one shared local Ray (one Ray job, so its worker processes
start once, not five times), imported as `benchmarks.NAME` with the checkout
root on sys.path; `benchmarks.search`, which spends its time waiting on the
`python -m mgc_ray.tune` subprocess it measures, runs in a thread beside the
others. The command-line entry itself (`python -m benchmarks.NAME` from the
checkout root) is run as a subprocess by the last tests.
"""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]  # the checkout root: `benchmarks` is a package there
SCRIPTS = ("features", "pipeline", "trial", "search", "scale", "stream", "epoch_gap")
NO_GPU = "no GPU on this machine"
STATUSES = {"met", "not met", "not measured here", "measured (no target set)"}
HAS_GPU = torch.cuda.is_available()
pytestmark = pytest.mark.slow  # every script's smoke run: minutes together


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Every script's --smoke against one local Ray: {name: (error or None, report, markdown, seconds)}."""
    import ray

    from mgc_ray import cluster

    # our own Ray even while another test's cluster is up on this machine; 4 logical CPUs so
    # the search's Tune trial and the other scripts' Ray Data tasks fit side by side
    cluster.init(None, num_cpus=4, object_store_memory=256 * 2**20, logging_level="WARNING", log_to_driver=False)
    patch = pytest.MonkeyPatch()
    patch.syspath_prepend(str(REPO))  # `import benchmarks.X`, as `python -m benchmarks.X` from the root
    base = tmp_path_factory.mktemp("bench")
    address = ray.get_runtime_context().gcs_address
    results = {}

    def run(name: str) -> None:
        t0 = time.perf_counter()
        error = None
        try:
            importlib.import_module(f"benchmarks.{name}").main(
                ["--smoke", "--out", str(base / "out"), "--work", str(base / name), "--address", address]
            )
        except BaseException:  # noqa: BLE001 - reported by the test of that script
            error = traceback.format_exc()
        found = sorted((base / "out").glob(f"{name}_*.json"))
        report = json.loads(found[0].read_text()) if found else None
        md = found[0].with_suffix(".md").read_text() if found else ""
        results[name] = (error, report, md, time.perf_counter() - t0)

    try:
        search = threading.Thread(target=run, args=("search",))
        search.start()
        for name in SCRIPTS:
            if name != "search":
                run(name)
        search.join(timeout=600)
        results["_dir"] = base / "out"
        yield results
    finally:
        ray.shutdown()
        patch.undo()


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.parametrize("name", SCRIPTS)
def test_smoke_run_writes_a_complete_report(smoke, name):
    error, report, md, _ = smoke[name]
    assert error is None, error
    assert report is not None and report["name"] == name and report["smoke"] is True
    m = report["machine"]
    assert m["cpu"] and m["cores"] >= 1 and m["versions"]["torch"] and m["versions"]["ray"]
    assert m["load_avg_1min_at_start"] is not None and m["load_avg_1min_at_end"] is not None
    assert m["device"] == ("cuda" if HAS_GPU else "cpu")
    assert report["targets"] and all(t["status"] in STATUSES for t in report["targets"])
    assert "SMOKE RUN" in md and "load average" in md and "upper bounds on time" in md
    if not HAS_GPU:
        assert NO_GPU in md, "a CPU run says so where GPU figures would go"
        assert not any(t["status"] in ("met", "not met") and "GPU" in t["target"] for t in report["targets"])


def test_features_both_ways_give_the_same_features(smoke):
    report = smoke["features"][1]
    for row in report["rows"]:
        assert _finite_positive(row["paper"]["clips_per_s"])
        ours = row["ours"]["cpu"]
        assert _finite_positive(ours["clips_per_s"]) and _finite_positive(ours["stft_ms_per_clip"])
        # same crops, librosa vs our torch front end: z-scored features agree
        assert ours["zscore_abs_diff_median"] < 0.05
        assert ours["logmel_csr_max_abs_db_diff"] < 0.01, "the sparse (CSR) mel product gives the dense one's features"
    assert report["prepare"]["tracks"] == report["settings"]["clips"]


def test_pipeline_times_all_three_ways(smoke):
    runs = smoke["pipeline"][1]["runs"]
    assert set(runs) == {"ours_augment", "ours_no_augment", "dataloader_mp3"}
    for r in runs.values():
        assert r["batches"] >= 2 and _finite_positive(r["samples_per_s"])
        assert r["batches"] == sum(e["batches"] for e in r["epochs"])


def test_trial_covers_every_arch_and_the_data_wait(smoke):
    from mgc_ray.models import list_models

    report = smoke["trial"][1]
    assert {r["arch"] for r in report["speed"]} == set(list_models())
    assert all(_finite_positive(r["samples_per_s"]) for r in report["speed"])
    for w in report["wait"]:
        for e in w["epochs"]:
            assert e["batches"] >= 1 and 0 <= e["wait_share"] <= 1
            assert e["wait_s"] <= e["seconds"] + 1e-6


def test_search_runs_the_tune_command_and_reads_its_time(smoke):
    report = smoke["search"][1]
    (run,) = report["runs"]
    assert run["command"].startswith("python -m mgc_ray.tune --arch baseline_a_2d")
    assert _finite_positive(run["trials_per_hour"])
    assert run["tune_running_s"] is not None, "Tune's 'Total running time' line is no longer parsed"


def test_scale_reports_cache_size_and_labels_the_projection(smoke):
    _, report, md, _ = smoke["scale"]
    assert report["prepare"]["cache_bytes"] > 0 and report["epoch"]["batches"] >= 1
    assert report["projection_to_fma_small"] is not None
    assert "Not measured: FMA small's 8,000 clips" in md
    assert report["targets"][0]["status"] == "not measured here"


def test_stream_times_every_mode_and_watches_the_object_store(smoke):
    report = smoke["stream"][1]
    assert [r["mode"] for r in report["runs"]] == ["streamed", "materialised", "before"]
    for r in report["runs"]:
        assert all(e["batches"] >= 1 and e["first_batch_s"] > 0 for e in r["epochs"])
        assert r["object_store_peak_bytes"] > 0, "the store watcher saw the blocks"
    assert len(report["runs"][0]["epochs"]) == report["settings"]["epochs"]


def test_epoch_gap_times_both_modes_both_ways(smoke):
    report = smoke["epoch_gap"][1]
    s = report["settings"]
    assert [(r["mode"], r["way"]) for r in report["runs"]] == [
        (m, w) for m in ("streamed", "materialised") for w in ("before", "after")
    ]
    for r in report["runs"]:
        assert [e["epoch"] for e in r["epochs"]] == list(range(s["epochs"]))
        assert all(e["first_batch_wait_s"] > 0 and e["samples"] == s["train_tracks"] // 32 * 32 for e in r["epochs"])
        assert all(e["ready_at_start"] == 0 for e in r["epochs"][:1]), "nothing is read ahead of the first epoch"
    assert {(r["mode"], r["way"]) for r in report["summary"]} == {(r["mode"], r["way"]) for r in report["runs"]}
    assert all(r["n"] == s["epochs"] - 1 for r in report["summary"]), "the waits between epochs, not the first"


def test_summary_gathers_every_target(smoke):
    out = smoke["_dir"]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.summary", "--results", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    readme = (out / "README.md").read_text()
    for name in SCRIPTS:
        for t in smoke[name][1]["targets"]:
            assert t["target"] in readme


@pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_one_clear_line():
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.trial", "--smoke", "--device", "cuda"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert NO_GPU in proc.stderr and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
