"""The search's Optuna study tells Optuna what Tune saw: a trial ASHA stopped is PRUNED with its
per-epoch values as intermediate values, a finished one COMPLETE, an error FAIL; the study
lives in its RDB storage, where `optuna.load_study` finds every trial of a real search."""

import math
import sys

import optuna
import pytest

from mgc_ray.config import METRIC, MODE
from mgc_ray.search import rungs, study
from mgc_ray.search.rungs import REDUCTION_FACTOR
from mgc_ray.search.space import Choice, LogUniform, SearchSpace

MAX_T = 4
SPACE = SearchSpace(
    arch="densenet",
    path="test",
    start={"lr": 1e-4, "weight_decay": 1e-4, "batch_size": 32, "window": 1976, "n_mels": 224, "crop_seconds": 10.0},
    space={"lr": LogUniform(1e-5, 1e-3), "batch_size": Choice((16, 32, 64))},
)


def _curve(config):
    """A learning curve from the config: lower lr -> lower loss; batch 64 raises (a trial error)."""
    from ray import tune

    if config["batch_size"] == 64:
        raise ValueError("batch 64 does not fit (test)")
    best = math.inf
    for epoch in range(config["max_epochs"]):
        best = min(best, math.log10(config["lr"]) + 6 + 1.0 / (epoch + 1))
        tune.report({METRIC: best, "epoch": epoch, rungs.TIME_ATTR: epoch + 1})  # one sample an epoch


def _search(tmp_path, name, n, **kw):
    from ray import cloudpickle, tune

    from mgc_ray.search.searcher import StudySearcher

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import a test module
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = StudySearcher(storage, name, [SPACE], 0, MAX_T, metric=METRIC, mode=MODE, **kw)
    grid = tune.Tuner(
        _curve,
        param_space={"max_epochs": MAX_T},
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode=MODE,
            num_samples=n,
            search_alg=searcher,
            max_concurrent_trials=2,
            reuse_actors=True,
            scheduler=rungs.SampleASHA(
                max_epochs=MAX_T, grace=1, per_epoch=1, chance=math.log(10), reduction_factor=REDUCTION_FACTOR
            ),
        ),
        run_config=tune.RunConfig(name=name, storage_path=str(tmp_path / "ray"), verbose=0),
    ).fit()
    return storage, grid


def test_study_states_and_intermediate_values_match_tune(tmp_path, ray_local):
    storage, grid = _search(tmp_path, "s", 10)
    trials = optuna.load_study(study_name="s", storage=storage).trials
    by_tune = {t.user_attrs[study.TUNE_ID_ATTR]: t for t in trials}
    assert len(trials) == len(grid) == 10 and len(by_tune) == 10
    assert trials[0].params == {"lr": 1e-4, "batch_size": 32}, "the first trial is the paper's settings"
    errors = [r for r in grid if r.error is not None]
    assert len([t for t in trials if t.state.name == "FAIL"]) == len(errors), "an error is FAIL"
    assert all(r.config["batch_size"] == 64 for r in errors)
    states = {"FAIL"} if errors else set()
    for r in grid:
        if r.error is not None:
            continue
        t = by_tune[r.metrics["trial_id"]]
        states.add(t.state.name)
        per_epoch = list(r.metrics_dataframe[METRIC])
        assert t.intermediate_values == {i + 1: v for i, v in enumerate(per_epoch)}
        if len(per_epoch) < MAX_T:
            assert t.state.name == "PRUNED", "a trial ASHA stopped is PRUNED, not COMPLETE"
            assert t.value == pytest.approx(per_epoch[-1])
        else:
            assert t.state.name == "COMPLETE" and t.value == pytest.approx(per_epoch[-1])
    assert states == {"COMPLETE", "PRUNED", "FAIL"}, states


def test_warm_start_adds_finished_trials_and_keeps_the_paper_trial_once(tmp_path, ray_local):
    storage, _ = _search(tmp_path, "first", 6)
    first = optuna.load_study(study_name="first", storage=storage)
    done = [t for t in first.trials if t.state.name == "COMPLETE"]
    storage, _ = _search(tmp_path, "second", 3, warm_start=["first"])
    second = optuna.load_study(study_name="second", storage=storage).trials
    warm = [t for t in second if "warm_start_from" in t.user_attrs]
    assert [(t.params, t.value) for t in warm] == [(t.params, t.value) for t in done]
    assert warm == second[: len(warm)], "the warm-start trials come before any draw"
    assert len(second) == len(warm) + 3
    assert all(t.params != {"lr": 1e-4, "batch_size": 32} for t in second[len(warm) :]), (
        "the paper's settings are not trained again when a warm-start trial holds them"
    )


def test_warm_start_from_a_study_without_the_recipe_options_takes_them_as_off(tmp_path):
    """A study recorded before spec_mask, mixup and label_smoothing were searched trained with them off."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    old = optuna.create_study(study_name="old", storage=storage)
    old_space = {k: SPACE.space[k] for k in ("lr", "batch_size")}
    old.add_trial(
        optuna.trial.create_trial(
            params={"lr": 3e-4, "batch_size": 16},
            value=1.5,
            distributions=study.distributions([SearchSpace("densenet", SPACE.start, old_space, "old")], False),
        )
    )
    recipe = {"spec_mask": Choice((0.0, 0.1)), "mixup": Choice((0.0, 0.2))}
    now = SearchSpace("densenet", SPACE.start, {**old_space, **recipe}, "now")
    (t,) = study.warm_trials(storage, ["old"], [now], False)
    assert t.params == {"lr": 3e-4, "batch_size": 16, "spec_mask": 0.0, "mixup": 0.0} and t.value == 1.5
    assert now.start["label_smoothing"] == 0.0, "a space built in code has the options off"


def test_a_new_search_refuses_an_existing_study_name(tmp_path, ray_local):
    from mgc_ray.errors import UserError
    from mgc_ray.search.searcher import StudySearcher

    _search(tmp_path, "taken", 1)
    with pytest.raises(UserError, match="already exists"):
        StudySearcher(f"sqlite:///{tmp_path / 'optuna.db'}", "taken", [SPACE], 0, MAX_T, metric=METRIC, mode=MODE)


def test_smoke_search_study_holds_every_trial(smoke_search):
    """`optuna.load_study` on the default storage (beside the MLflow store) sees every trial."""
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=smoke_search.uri)
    parent = c.get_run(smoke_search.parent_run_id)
    name = parent.data.tags["mgc.search"]
    assert parent.data.params["optuna_storage"] == study.default_storage(smoke_search.uri, smoke_search.workdir)
    s = optuna.load_study(study_name=name, storage=f"sqlite:///{smoke_search.workdir / 'optuna.db'}")
    children = c.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert {t.user_attrs[study.TUNE_ID_ATTR] for t in s.trials} == {r.data.tags["mgc.trial_id"] for r in children}
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in s.trials), [t.state for t in s.trials]
    assert all(t.intermediate_values for t in s.trials)


@pytest.mark.slow
def test_all_archs_is_one_study_with_a_row_per_arch(tmp_path, run_module):
    """`--arch all --smoke`: one study holding trials of all five archs (the paper's settings of each
    first), each arch's best beside its Table 1 row in summary.md and in `compare`."""
    from mgc_ray.config import PAPER

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run_module(
        "mgc_ray.tune",
        "--arch",
        "all",
        "--smoke",
        "--no-dashboard",
        "--mlflow-uri",
        uri,
        "--results-dir",
        str(tmp_path / "results"),
        "--storage-path",
        str(tmp_path / "ray"),
        "--experiment-name",
        "every-arch",
        env={"MGC_HOME": str(tmp_path / "home")},
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert f"optuna-dashboard sqlite:///{tmp_path / 'optuna.db'}" in proc.stdout
    s = optuna.load_study(study_name="every-arch", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.params["arch"] for t in s.trials] == sorted(PAPER), "each arch's paper trial, one each"
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in s.trials)
    summary = (tmp_path / "results" / "demo-smoke" / "every-arch" / "summary.md").read_text()
    for arch in PAPER:
        assert f"| {arch} | ours, best searched |" in summary and f"| {arch} | paper Table 1" in summary
    assert "Best overall" in summary
    out = tmp_path / "comparison.md"
    proc = run_module("mgc_ray.compare", "--mlflow-uri", uri, "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = out.read_text().split("95 % intervals of ours")[0]  # the figures' table, not the intervals'
    best_rows = [ln for ln in figures.splitlines() if ln.startswith("|") and "| ours, best searched |" in ln]
    assert len(best_rows) == len(PAPER), out.read_text()
