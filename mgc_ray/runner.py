"""Run one search end to end in the driver: Tuner -> test evaluation -> MLflow -> results/.

`tune.py` resolves the CLI into a `Plan`; this module owns everything Ray Tune and
takes nothing but the plan, the search space, the manifest and the trial resources.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from mgc_ray import report, search, study, tracking
from mgc_ray.cache import Manifest
from mgc_ray.callbacks import Progress, TrialLogger
from mgc_ray.cluster import TrialResources
from mgc_ray.config import TrainConfig, experiment_path
from mgc_ray.errors import UserError
from mgc_ray.metrics import prefixed
from mgc_ray.tracking import Tag

# Keep the best two checkpoints by validation loss (Tune always keeps the latest too,
# which a restarted trial resumes from).
KEEP_CHECKPOINTS = 2
# A trial whose worker or node dies is retried this many times from its last checkpoint.
# Tune retries any error; trainable.py makes an error the trial raised itself fail again
# at once on a retry (it would recur), so retries cost seconds, not epochs.
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


def _tuner(plan, space, trainable, param_space, concurrent: int, callbacks: list):
    from ray import tune

    run_config = tune.RunConfig(
        name=plan.name, storage_path=plan.storage_path, callbacks=callbacks,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS,
                                                checkpoint_score_attribute="val/loss",
                                                checkpoint_score_order="min"),
        failure_config=tune.FailureConfig(max_failures=MAX_FAILURES), verbose=1)
    if plan.resume:
        tuner = tune.Tuner.restore(experiment_path(plan.storage_path, plan.name), trainable=trainable, param_space=param_space,
                                   resume_unfinished=True, resume_errored=False)
        _use_callbacks(tuner, callbacks)
        return tuner
    if plan.paper_only:
        tune_config = tune.TuneConfig(metric=search.METRIC, mode=search.MODE, num_samples=1)
    else:
        tune_config = tune.TuneConfig(
            metric=search.METRIC, mode=search.MODE, num_samples=plan.num_samples,
            search_alg=make_study_searcher(plan, space), max_concurrent_trials=concurrent,
            scheduler=search.make_scheduler(plan.max_epochs, plan.grace_period))
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)


def make_study_searcher(plan, space):
    """The search's Optuna study (`mgc_ray.study`): PRUNED feedback, RDB storage, warm starts.
    `space`: one `search.SearchSpace`, or a list of them (one study over several archs)."""
    from mgc_ray.searcher import StudySearcher

    spaces = list(space) if isinstance(space, (list, tuple)) else [space]
    return StudySearcher(plan.optuna_storage, plan.name, spaces, plan.seed, plan.max_epochs,
                         metric=search.METRIC, mode=search.MODE, resume=plan.resume, warm_start=plan.warm_start)


def _use_callbacks(tuner, callbacks: list) -> None:
    """Tuner.restore brings back the callbacks pickled by the interrupted run; put this run's
    in their place (this run's MLflow URI, and what they record in memory). Ray 2.60 keeps
    the restored RunConfig on the Tuner's `_local_tuner` (no public setter)."""
    run_config = tuner._local_tuner.get_run_config()
    from mgc_ray.callbacks import ArchLoggers

    ours = (TrialLogger, Progress, ArchLoggers)
    run_config.callbacks = [cb for cb in run_config.callbacks or [] if not isinstance(cb, ours)] + list(callbacks)


def _report_errors(grid) -> None:
    """One line per failed trial (the full traceback is in the trial's error.txt and MLflow)."""
    for r in grid:
        if r.error is not None:
            lines = [ln for ln in str(r.error).strip().splitlines() if ln.strip()]
            print(f"mgc_ray: trial {report.trial_name(r)} failed: {lines[-1] if lines else type(r.error).__name__}",
                  file=sys.stderr, flush=True)


def run_search(plan, space: search.SearchSpace, manifest: Manifest, resources: TrialResources) -> dict:
    """Search (or one paper trial), then evaluate, log and write results. Returns the summary.

    The caller has checked the space's batch sizes against the manifest (`search.check_batches`,
    in `tune.main`, before Ray starts).

    Args:
        plan: `tune.Plan`, what this invocation does.
        resources: per trial and at once, from `cluster.resources`.
    Raises:
        KeyboardInterrupt: the search was interrupted (SIGINT); `--resume` finishes it.
    """
    from ray import tune

    from mgc_ray.data import CacheDatasets
    from mgc_ray.trainable import train_trial

    cpus, gpus, concurrent = resources.cpus, resources.gpus, resources.max_concurrent
    datasets = CacheDatasets.build(manifest)
    trainable = tune.with_resources(tune.with_parameters(train_trial, datasets=datasets, manifest=manifest),
                                    {"cpu": cpus, "gpu": gpus})
    fixed = {"arch": plan.arch, "max_epochs": plan.max_epochs, "seed": plan.seed}
    if plan.paper_only:
        param_space = {**fixed, **space.paper_point()}
    else:
        param_space = fixed  # the study draws the searched hyperparameters (searcher.StudySearcher)

    uri = plan.mlflow_uri
    c = tracking.client(uri)
    exp_name = tracking.experiment_name(plan.arch, plan.dataset)
    exp_id = tracking.experiment_id(c, exp_name, uri)
    tracking.ensure_paper_run(c, exp_id, plan.arch)
    parent = tracking.ensure_search_run(c, exp_id, plan.name, {
        "arch": plan.arch, "dataset": plan.dataset, "cache": plan.cache, "num_samples": plan.num_samples,
        "max_epochs": plan.max_epochs, "seed": plan.seed, "data_seed": manifest.data_seed,
        "paper_only": plan.paper_only, "first_trial_is_paper": space.starts_at_paper,
        "optuna_storage": None if plan.paper_only else plan.optuna_storage,
        "cpus_per_trial": cpus, "gpus_per_trial": gpus, "max_concurrent": concurrent,
        "split_scheme": manifest.split_scheme, "sample_rate": manifest.sample_rate,
        "n_classes": manifest.n_classes})
    logger, progress = TrialLogger(uri, exp_id, parent), Progress()
    status, stale = "FAILED", []
    try:
        # A driver killed with SIGKILL left its runs RUNNING: end them now; the trials Tune
        # resumes take theirs back (TrialLogger), the rest stay KILLED.
        stale = tracking.close_children(c, exp_id, parent, "KILLED") if plan.resume else []
        print(f"mgc_ray: MLflow {uri} experiment {exp_name!r} run {parent} "
              f"(mlflow ui --backend-store-uri {uri})", flush=True)
        print(f"mgc_ray: {plan.num_samples} trial(s) of {plan.arch}, up to {plan.max_epochs} epochs, "
              f"{concurrent} at once, {cpus:g} CPU + {gpus:g} GPU each; Tune state in "
              f"{experiment_path(plan.storage_path, plan.name)}", flush=True)
        if not plan.paper_only:
            print(f"mgc_ray: Optuna study {plan.name!r} in {plan.optuna_storage} "
                  f"({study.dashboard_command(plan.optuna_storage)})", flush=True)
        logging.getLogger("ray.tune.execution.experiment_state").addFilter(_BenignSyncRace())
        grid = _tuner(plan, space, trainable, param_space, concurrent, [logger, progress]).fit()
        if progress.interrupted(plan.num_samples):
            raise KeyboardInterrupt
        _report_errors(grid)
        summary = finish(plan, space, grid, datasets, manifest, c, exp_id, parent)
        status = "FINISHED"
        return summary
    except KeyboardInterrupt:
        status = "KILLED"
        print(f"mgc_ray: search {plan.name} interrupted; finish it with the same command and "
              f"--resume --experiment-name {plan.name} --storage-path {plan.storage_path}", file=sys.stderr,
              flush=True)
        raise
    finally:
        tracking.close_children(c, exp_id, parent, "KILLED")
        tracking.mark_lost(c, [rid for tid, rid in stale if tid not in logger.seen])
        c.set_terminated(parent, status)


def _paper_result(grid, space: search.SearchSpace):
    """The trial at the paper's settings (`SearchSpace.is_paper`), or None."""
    return next((r for r in grid if r.config and space.is_paper(r.config)), None)


def _evaluate(result, datasets):
    """Test-split scores of a trial's lowest-validation-loss checkpoint."""
    from mgc_ray import checkpoint as ckpt
    from mgc_ray.scoring import score_split

    best = result.get_best_checkpoint(metric="val/loss", mode="min")
    if best is None:
        raise UserError(f"trial {result.path} left no checkpoint to evaluate")
    with best.as_directory() as d:
        model, payload = ckpt.load_model(d)
        scores = score_split(model, datasets.test, list(payload.label_names),
                             crop_len=payload.model_config.crop_samples)
    return scores, payload, best.path


def _test_metrics(scores) -> dict:
    """Crop level under test/ (the paper's way), track level under test_track/."""
    return {**prefixed("test", scores.crop), **prefixed("test_track", scores.track)}


def _score_trial(result, datasets, c, exp_id, parent) -> dict:
    """Evaluate one trial on the test split and log the figures to its MLflow run."""
    scores, payload, ckpt_path = _evaluate(result, datasets)
    found = tracking.find_runs(c, exp_id, {Tag.PARENT: parent, Tag.TRIAL: result.metrics["trial_id"]})
    run_id = found[0].info.run_id if found else None
    if run_id:
        tracking.log_metrics(c, run_id, _test_metrics(scores))
        c.set_tag(run_id, Tag.CHECKPOINT, ckpt_path)
    return dict(result=result, scores=scores, payload=payload, checkpoint=ckpt_path, run_id=run_id)


def finish(plan, space, grid, datasets, manifest: Manifest, c, exp_id, parent, out: Path | None = None) -> dict:
    """Evaluate the best (and the paper) trial on the test split; log and write everything
    (under `out`, default <results_root>/<dataset>/<name>)."""
    ok = [r for r in grid if r.error is None and r.metrics and search.METRIC in r.metrics]
    if not ok:
        errors = "; ".join(str(r.error).splitlines()[0] for r in grid if r.error is not None)[:500]
        raise UserError(f"every trial failed ({errors}); see {experiment_path(plan.storage_path, plan.name)}")
    best = min(ok, key=lambda r: r.metrics[search.METRIC])
    paper = _paper_result(grid, space)
    out = out or Path(plan.results_root) / plan.dataset / plan.name
    rows = {"best": _score_trial(best, datasets, c, exp_id, parent)}
    if paper is not None:
        rows["paper"] = rows["best"] if paper is best else _score_trial(paper, datasets, c, exp_id, parent)
    test = _test_metrics(rows["best"]["scores"])
    tracking.log_metrics(c, parent, test)
    c.set_tag(parent, Tag.BEST_TRIAL, best.metrics["trial_id"])
    if paper is not None:
        c.set_tag(parent, Tag.PAPER_TRIAL, paper.metrics["trial_id"])  # compare.py's first rule
    c.set_tag(parent, Tag.CHECKPOINT, rows["best"]["checkpoint"])
    files = report.write_search_results(out, plan, grid, rows, manifest, space.space)
    best_run = rows["best"]["run_id"]
    for target in filter(None, {parent, best_run}):
        tracking.log_artifacts(c, target, files)
    summary = report.summary_rows(plan.arch, rows)
    print(report.summary_table(plan.arch, summary, plan.dataset), flush=True)
    totals = report.cost_totals(grid)
    print(report.cost_line(totals), flush=True)
    tracking.log_metrics(c, parent, {k: v for k, v in totals.items() if k.startswith("cost/")})
    print(f"mgc_ray: results in {out}", flush=True)
    return {"rows": summary, "results_dir": str(out), "best_config": TrainConfig.from_dict(best.config),
            "best_checkpoint": rows["best"]["checkpoint"], "parent_run_id": parent}
