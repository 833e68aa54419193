"""Run one search end to end in the driver: Tuner -> test evaluation -> MLflow -> results/.

`tune.py` resolves the CLI into a Plan; this module owns everything Ray Tune.
"""
from __future__ import annotations

import logging
from pathlib import Path

from mgc_ray import report, search, tracking
from mgc_ray.config import TrainConfig
from mgc_ray.errors import UserError

# Keep the best two checkpoints by validation loss (Tune always keeps the latest too,
# which a restarted trial resumes from).
KEEP_CHECKPOINTS = 2
# A trial whose worker dies is retried this many times from its last checkpoint.
MAX_FAILURES = 2


class _BenignSyncRace(logging.Filter):
    """Ray 2.60 writes the searcher state while an earlier sync of the same folder may
    still be copying it (experiment_state.py: save_fn runs before wait_for_sync), so that
    sync can miss a renamed temp file and logs a traceback. The next sync copies the whole
    folder again and Tune ends with a forced, waited-for sync, so nothing is lost: say so
    in one line instead of a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Saving experiment state to storage") and record.exc_info:
            record.exc_info, record.exc_text = None, None
            record.msg, record.args = ("experiment state sync skipped a file that was being rewritten; "
                                       "the next sync carries it (Ray 2.60 race, harmless)"), ()
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def _check_batches(space: search.SearchSpace, n_train: int, paper_only: bool) -> None:
    spec = space.space.get("batch_size")
    sizes = [space.paper["batch_size"]] + ([] if paper_only or spec is None else list(spec.get("values", [])))
    if max(sizes) > n_train:
        raise UserError(f"batch size {max(sizes)} is larger than the training split ({n_train} tracks): "
                        "use more data or smaller batch sizes in the search space")


def _tuner(plan, space, trainable, param_space, concurrent: int, callbacks, restore: bool):
    from ray import tune

    run_config = tune.RunConfig(
        name=plan.name, storage_path=plan.storage_path, callbacks=callbacks,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS,
                                                checkpoint_score_attribute="val/loss",
                                                checkpoint_score_order="min"),
        failure_config=tune.FailureConfig(max_failures=MAX_FAILURES), verbose=1)
    path = str(Path(plan.storage_path) / plan.name)
    if restore:
        if not tune.Tuner.can_restore(path):
            raise UserError(f"--resume: {path} holds no Tune state to resume: "
                            "check --storage-path and --experiment-name")
        return tune.Tuner.restore(path, trainable=trainable, param_space=param_space,
                                  resume_unfinished=True, resume_errored=True)
    if plan.paper_only:
        tune_config = tune.TuneConfig(metric=search.METRIC, mode=search.MODE, num_samples=1)
    else:
        tune_config = tune.TuneConfig(
            metric=search.METRIC, mode=search.MODE, num_samples=plan.num_samples,
            search_alg=search.make_searcher(space, plan.seed), max_concurrent_trials=concurrent,
            scheduler=search.make_scheduler(plan.max_epochs, plan.grace_period))
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)


def run_search(plan, space: search.SearchSpace, manifest: dict, *, args, results_root: Path) -> dict:
    """Search (or one paper trial), then evaluate, log and write results. Returns the summary."""
    from ray import tune

    from mgc_ray.data import CacheDatasets
    from mgc_ray.trainable import train_trial
    from mgc_ray.tune import resources

    n_train = int(manifest["num_tracks"]["train"])
    _check_batches(space, n_train, plan.paper_only)
    cpus, gpus, concurrent = resources(args, n_train)
    datasets = CacheDatasets.build(plan.cache, manifest)
    trainable = tune.with_resources(tune.with_parameters(train_trial, datasets=datasets, manifest=manifest),
                                    {"cpu": cpus, "gpu": gpus})
    fixed = {"arch": plan.arch, "max_epochs": plan.max_epochs, "seed": plan.seed}
    if plan.paper_only:
        param_space = {**fixed, **space.paper_point()}
    else:
        param_space = search.param_space(space, fixed)

    c = tracking.client(args.mlflow_uri)
    exp_name = f"mgc_ray/{plan.arch}/{plan.dataset}"
    exp_id = tracking.experiment_id(c, exp_name, args.mlflow_uri)
    tracking.ensure_paper_run(c, exp_id, plan.arch)
    parent = tracking.ensure_search_run(c, exp_id, plan.name, {
        "arch": plan.arch, "dataset": plan.dataset, "cache": plan.cache, "num_samples": plan.num_samples,
        "max_epochs": plan.max_epochs, "seed": plan.seed, "paper_only": plan.paper_only,
        "cpus_per_trial": cpus, "gpus_per_trial": gpus, "max_concurrent": concurrent,
        "split_scheme": manifest.get("split_scheme"), "sample_rate": manifest["sample_rate"]})
    print(f"mgc_ray: MLflow {args.mlflow_uri} experiment {exp_name!r} run {parent} "
          f"(mlflow ui --backend-store-uri {args.mlflow_uri})", flush=True)
    print(f"mgc_ray: {plan.num_samples} trial(s) of {plan.arch}, up to {plan.max_epochs} epochs, "
          f"{concurrent} at once, {cpus:g} CPU + {gpus:g} GPU each; Tune state in "
          f"{Path(plan.storage_path) / plan.name}", flush=True)
    logging.getLogger("ray.tune.execution.experiment_state").addFilter(_BenignSyncRace())
    status = "FAILED"
    try:
        tuner = _tuner(plan, space, trainable, param_space, concurrent,
                       [tracking.TrialLogger(args.mlflow_uri, exp_id, parent)], restore=args.resume)
        grid = tuner.fit()
        summary = finish(plan, space, grid, datasets, manifest, c, exp_id, parent, results_root)
        status = "FINISHED"
        return summary
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracking.close_children(c, exp_id, parent, "KILLED")
        c.set_terminated(parent, status)


def _paper_result(grid, space: search.SearchSpace):
    point = space.paper_point()
    for r in grid:
        if r.config and all(r.config.get(k) == v for k, v in point.items()):
            return r
    return None


def _evaluate(result, datasets, manifest: dict) -> tuple[dict, dict, str]:
    """Test-split scores of a trial's lowest-validation-loss checkpoint."""
    from mgc_ray import checkpoint as ckpt
    from mgc_ray.scoring import score_split

    best = result.get_best_checkpoint(metric="val/loss", mode="min")
    if best is None:
        raise UserError(f"trial {result.path} left no checkpoint to evaluate")
    with best.as_directory() as d:
        model, payload = ckpt.load_model(d)
        scores = score_split(model, datasets.test, payload["label_names"],
                             crop_len=ckpt.model_config_of(payload).crop_samples)
    return scores, payload, best.path


def _test_metrics(scores: dict) -> dict:
    """Crop level under test/ (the paper's way), track level under test_track/."""
    return {**{f"test/{k}": v for k, v in scores["crop"].items()},
            **{f"test_track/{k}": v for k, v in scores["track"].items()}}


def _score_trial(result, datasets, manifest, c, exp_id, parent) -> dict:
    """Evaluate one trial on the test split and log the figures to its MLflow run."""
    scores, payload, ckpt_path = _evaluate(result, datasets, manifest)
    found = tracking.find_runs(c, exp_id, {tracking.PARENT_TAG: parent,
                                           tracking.TRIAL_TAG: result.metrics["trial_id"]})
    run_id = found[0].info.run_id if found else None
    if run_id:
        tracking.log_metrics(c, run_id, _test_metrics(scores))
        c.set_tag(run_id, "mgc.checkpoint", ckpt_path)
    return dict(result=result, scores=scores, payload=payload, checkpoint=ckpt_path, run_id=run_id)


def finish(plan, space, grid, datasets, manifest, c, exp_id, parent, results_root: Path) -> dict:
    """Evaluate the best (and the paper) trial on the test split; log and write everything."""
    ok = [r for r in grid if r.error is None and r.metrics and search.METRIC in r.metrics]
    if not ok:
        errors = "; ".join(str(r.error).splitlines()[0] for r in grid if r.error is not None)[:500]
        raise UserError(f"every trial failed ({errors}); see {Path(plan.storage_path) / plan.name}")
    best = min(ok, key=lambda r: r.metrics[search.METRIC])
    paper = _paper_result(grid, space)
    label_names = list(manifest["label_names"])
    out = Path(results_root) / plan.dataset / plan.name
    rows = {"best": _score_trial(best, datasets, manifest, c, exp_id, parent)}
    if paper is not None:
        rows["paper"] = rows["best"] if paper is best else _score_trial(paper, datasets, manifest, c, exp_id, parent)
    test = _test_metrics(rows["best"]["scores"])
    tracking.log_metrics(c, parent, test)
    c.set_tag(parent, "mgc.best_trial", best.metrics["trial_id"])
    c.set_tag(parent, "mgc.checkpoint", rows["best"]["checkpoint"])
    files = report.write_search_results(out, plan, grid, rows, label_names)
    best_run = rows["best"]["run_id"]
    for target in filter(None, {parent, best_run}):
        tracking.log_artifacts(c, target, files)
    summary = report.summary_rows(plan.arch, rows)
    print(report.summary_table(plan.arch, summary), flush=True)
    print(f"mgc_ray: results in {out}", flush=True)
    return {"rows": summary, "results_dir": str(out), "best_config": TrainConfig.from_dict(best.config),
            "best_checkpoint": rows["best"]["checkpoint"], "parent_run_id": parent}
