"""Two seeds: --data-seed fixes the data (split, cache, test set), --seed drives the search.

Searches that differ only in --seed share one cache and one test set, so their test figures
are comparable; both seeds are recorded in MLflow and in the results.
"""

import json

import pytest
from mlflow.tracking import MlflowClient


def _search_run(uri: str):
    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name("mgc_ray/baseline_a_2d/demo-smoke")
    return [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("mgc.source") == "search"][0]


@pytest.mark.slow
def test_another_seed_shares_the_cache_and_the_test_set(smoke_search, run_module):
    work = smoke_search.workdir
    uri = f"sqlite:///{work / 'seed1.db'}"
    proc = run_module(
        "mgc_ray.tune",
        "--arch",
        "baseline_a_2d",
        "--smoke",
        "--no-dashboard",
        "--seed",
        "1",
        "--num-samples",  # one trial of one epoch: the check is on the cache, the test set and the seeds
        "1",
        "--max-epochs",
        "1",
        "--mlflow-uri",
        uri,
        "--results-dir",
        str(work / "results-seed1"),
        "--storage-path",
        str(work / "ray-seed1"),
        env={"MGC_HOME": str(work / "home"), "PYTHONUNBUFFERED": "1"},
        cwd=work,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    caches = sorted(
        p.name for p in (work / "home" / "demo-smoke").iterdir() if p.name.startswith("cache") and p.is_dir()
    )
    assert caches == ["cache-s0"], "one cache for both seeds"
    first = json.loads((smoke_search.results / "test_metrics.json").read_text())
    (results,) = (work / "results-seed1" / "demo-smoke").glob("baseline_a_2d-*")
    second = json.loads((results / "test_metrics.json").read_text())
    assert (first["seed"], second["seed"]) == (0, 1) and first["data_seed"] == second["data_seed"] == 0
    assert first["cache"] == second["cache"] == smoke_search.cache
    assert first["test_track_ids"] == second["test_track_ids"] and len(first["test_track_ids"]) > 0
    params = _search_run(uri).data.params
    assert (params["seed"], params["data_seed"]) == ("1", "0")
    assert _search_run(smoke_search.uri).data.params["data_seed"] == "0"
    assert "seed 1, data seed 0" in (results / "summary.md").read_text()


def test_data_seed_names_another_cache(tmp_path, monkeypatch):
    """--data-seed is the cache's identity: another data seed never reuses (or clashes with) a cache."""
    from mgc_ray import tune
    from mgc_ray.search import plan

    monkeypatch.setenv("MGC_HOME", str(tmp_path))
    caches = {
        plan.resolve_data(tune.build_parser().parse_args(["--arch", "densenet", *extra]))[0]
        for extra in ([], ["--seed", "7"], ["--data-seed", "0"], ["--data-seed", "3"])
    }
    assert len(caches) == 2 and any(c.endswith("cache-s3") for c in caches)
