"""Run one search end to end in the driver: Tuner -> test evaluation -> MLflow -> results/.

`plan.py` resolves the CLI into a `Plan`; this module owns everything Ray Tune and
takes nothing but the plan, the search space, the manifest and the trial resources.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

from mgc_ray.cluster import TrialResources
from mgc_ray.config import METRIC, MODE, VAL_LOSS, TrainConfig, experiment_path
from mgc_ray.data.cache import Manifest
from mgc_ray.errors import UserError
from mgc_ray.files import LOW_FREE_BYTES, atomic_text
from mgc_ray.metrics import interval_metrics, prefixed
from mgc_ray.results import report
from mgc_ray.search import budget, study, tracking
from mgc_ray.search.callbacks import ArchLoggers, DiskGuard, Progress, TrialLogger
from mgc_ray.search.plan import search_folders
from mgc_ray.search.rungs import make_scheduler
from mgc_ray.search.space import SearchSpace
from mgc_ray.search.tracking import Tag

# Keep the best two checkpoints by validation loss (Tune always keeps the latest too,
# which a restarted trial resumes from).
KEEP_CHECKPOINTS = 2
# A trial whose worker or node dies is retried this many times from its last checkpoint.
# Tune retries any error; trainable.py makes an error the trial raised itself fail again
# at once on a retry (it would recur), so retries cost seconds, not epochs.
MAX_FAILURES = 2
# A stopped trial (ASHA) gets this long to end before Tune kills its actor and frees its GPU
# share for the next trial (Tune's default: 600 s). Our trial reports once per epoch and holds
# nothing to flush: its checkpoint is written before it reports.
TRIAL_CLEANUP_S = 5


class _BenignSyncRace(logging.Filter):
    """Ray 2.60 writes the searcher state while an earlier sync of the same folder may
    still be copying it (experiment_state.py: save_fn runs before wait_for_sync), so that
    sync can miss a renamed temp file and logs a traceback. The next sync copies the whole
    folder again and Tune ends with a forced, waited-for sync, so nothing is lost: say so
    in one line instead of a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Saving experiment state to storage") and record.exc_info:
            record.exc_info, record.exc_text = None, None
            record.msg, record.args = (
                (
                    "experiment state sync skipped a file that was being rewritten; "
                    "the next sync carries it (Ray 2.60 race, harmless)"
                ),
                (),
            )
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


class _TrialFailureLine(logging.Filter):
    """Tune logs a failed trial task (a worker or node lost, an error the trial raised) with its
    traceback, then its own "Trial ... errored" lines name the trial's error.txt, where the whole
    traceback is kept: the log gets the exception's one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Trial task failed for trial") and record.exc_info:
            exc = record.exc_info[1]
            text = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
            record.msg, record.args = f"{record.getMessage()}: {type(exc).__name__}: {text[0] if text else ''}", ()
            record.exc_info, record.exc_text = None, None
        return True


def quiet_tune_logs() -> None:
    """Tune's log lines above in one line each (the tune CLI's single- and multi-arch searches)."""
    for name, kind in (
        ("ray.tune.execution.experiment_state", _BenignSyncRace),
        ("ray.tune.execution.tune_controller", _TrialFailureLine),
    ):
        log = logging.getLogger(name)
        if not any(isinstance(f, kind) for f in log.filters):
            log.addFilter(kind())


def _tuner(plan, spaces: list, manifest: Manifest, trainable, param_space, concurrent: int, callbacks: list):
    """The Tuner (a new search, its paper trial alone, or the interrupted search restored);
    `spaces`: one `SearchSpace` per arch (one study over all of them)."""
    from ray import tune

    run_config = tune.RunConfig(
        name=plan.name,
        storage_path=plan.storage_path,
        callbacks=callbacks,
        stop=budget.BudgetStopper(),
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=KEEP_CHECKPOINTS, checkpoint_score_attribute=VAL_LOSS, checkpoint_score_order=MODE
        ),
        failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
        verbose=1,
    )
    if plan.resume:
        tuner = tune.Tuner.restore(
            experiment_path(plan.storage_path, plan.name),
            trainable=trainable,
            param_space=param_space,
            resume_unfinished=True,
            # a trial that failed on a full disk or a lost node continues from its
            # checkpoint; one that raised itself stops again at once (trainable.py)
            resume_errored=True,
        )
        _use_callbacks(tuner, callbacks)
        return tuner
    if plan.paper_only:
        tune_config = tune.TuneConfig(metric=METRIC, mode=MODE, num_samples=1)
    else:
        # Not reuse_actors, though a new worker per trial costs ~4 s of imports on 2 cores: with it,
        # tests/e2e/test_faults.py saw a diverged trial's retries run its epoch again instead of stopping
        # at the note of its own error (trainable.FAILURE_NOTE, found through the worker's
        # tune.get_context()). Off until that is understood.
        tune_config = tune.TuneConfig(
            metric=METRIC,
            mode=MODE,
            num_samples=plan.num_samples,
            search_alg=budget.BudgetLimiter(make_study_searcher(plan, spaces), max_concurrent=concurrent),
            scheduler=make_scheduler(spaces, manifest, plan.max_epochs, plan.grace_period),
        )
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)


def make_study_searcher(plan, spaces: list):
    """The search's Optuna study (`mgc_ray.search.study`) over `spaces` (one per arch): PRUNED feedback,
    RDB storage, warm starts."""
    from mgc_ray.search.searcher import StudySearcher

    return StudySearcher(
        plan.optuna_storage,
        plan.name,
        list(spaces),
        plan.seed,
        plan.max_epochs,
        metric=METRIC,
        mode=MODE,
        resume=plan.resume,
        warm_start=plan.warm_start,
    )


def _use_callbacks(tuner, callbacks: list) -> None:
    """Tuner.restore brings back the callbacks pickled by the interrupted run; put this run's
    in their place (this run's MLflow URI, and what they record in memory). Ray 2.60 keeps
    the restored RunConfig on the Tuner's `_local_tuner` (no public setter)."""
    run_config = tuner._local_tuner.get_run_config()
    ours = (TrialLogger, Progress, budget.Budget, DiskGuard, ArchLoggers)
    run_config.callbacks = [cb for cb in run_config.callbacks or [] if not isinstance(cb, ours)] + list(callbacks)


def _report_errors(grid) -> None:
    """One line per failed trial (the full traceback is in the trial's error.txt and MLflow)."""
    for r in grid:
        if r.error is not None:
            lines = [ln for ln in str(r.error).strip().splitlines() if ln.strip()]
            print(
                f"mgc_ray: trial {report.trial_name(r)} failed: {lines[-1] if lines else type(r.error).__name__}",
                file=sys.stderr,
                flush=True,
            )


def placed_trainable(datasets, manifest: Manifest, resources: TrialResources):
    """`train_trial` with its data, in a placement group of `resources.bundles()` on one node: the trainable
    in the first bundle, its Ray Data reads in the second (`data.pipeline.trial_reads`)."""
    from ray import tune

    from mgc_ray.trial.trainable import train_trial

    return tune.with_resources(
        tune.with_parameters(train_trial, datasets=datasets, manifest=manifest, gpu_share=resources.gpus),
        tune.PlacementGroupFactory(resources.bundles(), strategy="STRICT_PACK"),
    )


def run_search(plan, spaces: list[SearchSpace], manifest: Manifest, resources: TrialResources) -> dict:
    """Search one arch or several (or run one paper trial), then evaluate, log and write results.

    One code path for any number of archs: the cache's hashes, the GPU share, the budgets, the
    disk guard, the trial clean-up and Ctrl+C hold for all. With several archs the study draws
    `arch` first (one study, one Tuner, ASHA across all); each arch keeps its MLflow experiment
    `mgc_ray/<arch>/<dataset>` with a search run of this search's name, and its own folder under
    results/<dataset>/<search>/ beside an overall summary.md.

    The caller has checked the spaces' batch sizes against the manifest (`check_batches`,
    in `tune.main`, before Ray starts).

    Args:
        plan: `plan.Plan`, what this invocation does (`plan.archs` set: several archs).
        spaces: one `SearchSpace` per arch searched.
        resources: per trial and at once, from `cluster.resources`.
    Returns:
        One arch: `finish`'s summary. Several: {"archs": {arch: summary}, "best_arch", "results_dir"}.
    Raises:
        KeyboardInterrupt: the search was interrupted (SIGINT); `--resume` finishes it.
    """
    from mgc_ray.data.pipeline import CacheDatasets

    several = len(spaces) > 1
    cpus, gpus, concurrent = resources.cpus, resources.gpus, resources.max_concurrent
    os.environ.setdefault("TUNE_FORCE_TRIAL_CLEANUP_S", str(TRIAL_CLEANUP_S))  # read by Tune's controller
    _verify_cache(manifest)
    datasets = CacheDatasets.build(manifest)
    trainable = placed_trainable(datasets, manifest, resources)
    param_space = {"max_epochs": plan.max_epochs, "seed": plan.seed, "compile": plan.compile}
    if not several:  # several: the study draws `arch` too
        param_space["arch"] = plan.arch
    if plan.paper_only:
        param_space.update(spaces[0].paper_point())  # else the study draws the searched hyperparameters

    uri = plan.mlflow_uri
    c = tracking.client(uri)
    runs = {
        s.arch: _search_run(c, plan, s, manifest, resources, datasets.mode) for s in spaces
    }  # arch -> (experiment, run)
    logger = ArchLoggers({a: TrialLogger(uri, e, p) for a, (e, p) in runs.items()})
    progress = Progress()
    guard = DiskGuard(search_folders(plan.storage_path, plan.results_root, plan.mlflow_uri), LOW_FREE_BYTES)
    status, stale, ledger = dict.fromkeys(runs, "FAILED"), [], None
    scorer = SplitScorer(gpus, cpus)
    try:
        # A driver killed with SIGKILL left its runs RUNNING: end them now; the trials Tune
        # resumes take theirs back (TrialLogger), the rest stay KILLED.
        if plan.resume:
            stale = [x for e, p in runs.values() for x in tracking.close_children(c, e, p, "KILLED")]
        where = ", ".join(f"{tracking.experiment_name(a, plan.dataset)!r} run {p}" for a, (_, p) in runs.items())
        print(f"mgc_ray: MLflow {uri}: {where} (mlflow ui --backend-store-uri {uri})", flush=True)
        print(
            f"mgc_ray: {plan.num_samples} trial(s) of {', '.join(runs)}, up to {plan.max_epochs} epochs, "
            f"{concurrent} at once, {cpus:g} CPU + {gpus:g} GPU each (and {resources.data_cpus:g} CPU for its "
            f"Ray Data reads); Tune state in "
            f"{experiment_path(plan.storage_path, plan.name)}",
            flush=True,
        )
        if not plan.paper_only:
            print(
                f"mgc_ray: Optuna study {plan.name!r} in {plan.optuna_storage} "
                f"({study.dashboard_command(plan.optuna_storage)})",
                flush=True,
            )
        quiet_tune_logs()
        ledger = _budget(plan)  # last, so that its clock starts with the search
        tuner = _tuner(plan, spaces, manifest, trainable, param_space, concurrent, [logger, progress, guard, ledger])
        grid = tuner.fit()
        if progress.interrupted(plan.num_samples, budget_ended=ledger.ended is not None):
            raise KeyboardInterrupt
        _report_errors(grid)
        budget_note = _log_budget(c, [p for _, p in runs.values()], ledger, len(grid), plan.num_samples)
        chance = _chance_note(tuner)  # one scheduler across the archs: its note goes to each
        if not several:
            exp_id, parent = runs[plan.arch]
            summary = finish(
                plan,
                spaces[0],
                grid,
                datasets,
                manifest,
                c,
                exp_id,
                parent,
                budget_note=budget_note,
                chance_note=chance,
                scorer=scorer,
            )
            status[plan.arch] = "FINISHED"
            return summary
        return _finish_archs(plan, spaces, list(grid), datasets, manifest, c, runs, status, budget_note, chance, scorer)
    except KeyboardInterrupt:
        status = dict.fromkeys(runs, "KILLED")
        if guard.full is not None:
            path, what, free = guard.full
            raise UserError(
                f"{what} {path} is nearly full ({free / 2**20:.1f} MiB free): the search stopped as with "
                f"Ctrl+C; free space there, then finish it with the same command and --resume "
                f"--experiment-name {plan.name} --storage-path {plan.storage_path}"
            ) from None
        print(
            f"mgc_ray: search {plan.name} interrupted; finish it with the same command and "
            f"--resume --experiment-name {plan.name} --storage-path {plan.storage_path}",
            file=sys.stderr,
            flush=True,
        )
        raise
    finally:
        for a, (e, p) in runs.items():
            tracking.close_children(c, e, p, "KILLED")
        tracking.mark_lost(c, [rid for tid, rid in stale if tid not in logger.seen])
        for a, (_, p) in runs.items():
            if ledger is not None:  # what the search has spent so far, every session of it
                tracking.log_metrics(c, p, {"search/wall_s": ledger.wall(), "search/gpu_hours": ledger.gpu() / 3600})
                if ledger.limited():
                    c.set_tag(p, Tag.BUDGET, ledger.describe())
            c.set_terminated(p, status[a])


def _search_run(
    c, plan, space: SearchSpace, manifest: Manifest, resources: TrialResources, data_mode: str
) -> tuple[str, str]:
    """(experiment id, search run id) of `space.arch` in MLflow, made (or, resumed, found) here.

    `data_mode`: `CacheDatasets.mode` ("materialised" or "streamed"), as the driver decided it; each
    trial's run tags the mode its epochs used (mgc.data_mode)."""
    exp_id = tracking.experiment_id(c, tracking.experiment_name(space.arch, plan.dataset), plan.mlflow_uri)
    tracking.ensure_paper_run(c, exp_id, space.arch)
    params = {
        "arch": space.arch,
        "dataset": plan.dataset,
        "cache": plan.cache,
        "num_samples": plan.num_samples,
        "max_epochs": plan.max_epochs,
        "seed": plan.seed,
        "data_seed": manifest.data_seed,
        "paper_only": plan.paper_only,
        "first_trial_is_paper": space.starts_at_paper,
        "optuna_storage": None if plan.paper_only else plan.optuna_storage,
        "cpus_per_trial": resources.cpus,
        "gpus_per_trial": resources.gpus,
        "max_concurrent": resources.max_concurrent,
        "data_cpus_per_trial": resources.data_cpus,
        "split_scheme": manifest.split_scheme,
        "sample_rate": manifest.sample_rate,
        "n_classes": manifest.n_classes,
        "data_mode": data_mode,
    }
    if plan.archs:
        params["archs"] = ",".join(plan.archs)
    return exp_id, tracking.ensure_search_run(c, exp_id, plan.name, params)


def _finish_archs(
    plan,
    spaces: list,
    results: list,
    datasets,
    manifest: Manifest,
    c,
    runs: dict,
    status: dict,
    budget_note: str | None,
    chance: str | None,
    scorer: SplitScorer,
) -> dict:
    """A search over several archs: finish each arch as a one-arch search would (in its own folder),
    then the best overall. Sets each arch's run status in `status`."""
    root = Path(plan.results_root) / plan.dataset / plan.name
    done: dict[str, dict] = {}
    best_loss: dict[str, float] = {}
    for s in spaces:
        mine = [r for r in results if (r.config or {}).get("arch") == s.arch]
        ok = [r for r in mine if r.error is None and r.metrics and METRIC in r.metrics]
        exp_id, parent = runs[s.arch]
        if not ok:
            print(
                f"mgc_ray: {s.arch}: {'no trial finished' if mine else 'no trial drew it'}; no row for it",
                file=sys.stderr,
                flush=True,
            )
            status[s.arch] = "FINISHED" if not mine else "FAILED"
            continue
        arch_plan = dataclasses.replace(plan, arch=s.arch, archs=(), num_samples=len(mine))
        done[s.arch] = finish(
            arch_plan,
            s,
            mine,
            datasets,
            manifest,
            c,
            exp_id,
            parent,
            out=root / s.arch,
            budget_note=budget_note,
            chance_note=chance,
            scorer=scorer,
        )
        best_loss[s.arch] = min(r.metrics[METRIC] for r in ok)
        status[s.arch] = "FINISHED"
    if not done:
        raise UserError(f"every trial failed; see {experiment_path(plan.storage_path, plan.name)}")
    best_arch = min(best_loss, key=best_loss.get)
    for _, parent in runs.values():
        c.set_tag(parent, Tag.BEST_OVERALL, best_arch)
    text = report.overall_summary(plan, done, best_loss, best_arch, budget_note)
    atomic_text(root / "summary.md", text)
    print(text, flush=True)
    print(f"mgc_ray: results in {root}", flush=True)
    return {"archs": done, "best_arch": best_arch, "results_dir": str(root)}


def _chance_note(tuner) -> str | None:
    """What the search's scheduler said of rungs that cut at chance (Ray 2.60 keeps the TuneConfig
    it ran, restored or not, on the Tuner's `_local_tuner`, with no public getter)."""
    from mgc_ray.search.rungs import chance_note

    config = getattr(tuner._local_tuner, "_tune_config", None)
    return chance_note(getattr(config, "scheduler", None))


def _budget(plan) -> budget.Budget:
    """This command's budget: the flags' (`--time-budget`, `--gpu-hours`), or what is left of the demo's
    deadline (`plan.search_ends_by`), or none (a resumed search then keeps the budget it had)."""
    time_s = plan.time_budget_s
    if plan.search_ends_by is not None:
        time_s = max(1.0, plan.search_ends_by - time.monotonic())
    return budget.Budget(
        time_s=time_s,
        gpu_s=plan.gpu_hours * 3600 if plan.gpu_hours else None,
        min_trials=plan.budget_min_trials,
        plan_ahead=plan.search_ends_by is not None,
    )


def _log_budget(c, parents: list[str], ledger: budget.Budget, n_trials: int, num_samples: int) -> str | None:
    """If the budget ended the search: say so on the console and in MLflow; return the sentence."""
    if ledger.ended is None:
        return None
    stopped = ", ".join(f"{t} after epoch {e}" for t, e in ledger.stopped.items())
    gpu = f" and {ledger.gpu() / 3600:.3g} GPU-hours" if ledger.gpu() else ""
    note = (
        f"{ledger.ended[0].upper()}{ledger.ended[1:]} after {budget.fmt_duration(ledger.wall())}{gpu} of search: "
        f"it ended the search with {n_trials} of {num_samples} trials"
        + (f"; stopped at a report: {stopped}" if stopped else "")
        + "."
    )
    print(f"mgc_ray: {note}", flush=True)
    for parent in parents:
        c.set_tag(parent, Tag.BUDGET_ENDED, note)
    return note


def _verify_cache(manifest: Manifest) -> None:
    """Every shard's bytes against the manifest's SHA-256, before any trial trains on them."""
    from mgc_ray.data.cache import verify_shards

    size, hashed, seconds = verify_shards(manifest)
    how = (
        f"{seconds:.1f} s, {hashed / 1e6 / max(seconds, 1e-9):.0f} MB/s"
        if hashed == size
        else f"{(size - hashed) / 1e6:.1f} MB of it hashed by prepare just before, unchanged since"
    )
    print(
        f"mgc_ray: cache checked: {sum(len(v) for v in manifest.shards.values())} shards, {size / 1e6:.1f} MB "
        f"match their SHA-256 ({how})",
        flush=True,
    )


def _paper_result(grid, space: SearchSpace):
    """The trial at the paper's settings (`SearchSpace.is_paper`), or None."""
    return next((r for r in grid if r.config and space.is_paper(r.config)), None)


@dataclasses.dataclass(frozen=True)
class SplitScorer:
    """Where the test split is scored: with GPUs per trial, in a Ray task holding one trial's GPU
    share and CPUs (a head node without a GPU would score every searched arch on its CPU); without,
    here in the driver, as the trials trained."""

    gpus: float = 0.0
    cpus: float = 1.0

    def __call__(self, checkpoint, ds):
        """(Scores, payload) of `checkpoint` on the split `ds` (`scoring.score_checkpoint`)."""
        from mgc_ray.trial.scoring import score_checkpoint

        if self.gpus > 0:
            return score_on_worker(checkpoint, ds, self.gpus, self.cpus)
        return score_checkpoint(checkpoint, ds)


def score_on_worker(checkpoint, ds, gpus: float, cpus: float):
    """`scoring.score_checkpoint` in a Ray task holding `gpus` of a GPU and `cpus`; the driver only
    gathers the figures."""
    import ray

    from mgc_ray.trial.scoring import score_checkpoint

    task = ray.remote(score_checkpoint).options(num_gpus=gpus, num_cpus=cpus, name="mgc_ray.score_test")
    return ray.get(task.remote(checkpoint, ds, gpus))


def best_intact(result):
    """A trial's lowest-validation-loss checkpoint (`resume.Intact`); when that one is damaged (its files
    no longer match their seal), the best intact one Tune kept, with one line on stderr saying so.

    Raises:
        UserError: the trial kept no checkpoint; DamagedCheckpoint: every one it kept is damaged.
    """
    from mgc_ray.models import checkpoint as ckpt
    from mgc_ray.trial.resume import first_intact

    kept = [(c, m) for c, m in result.best_checkpoints or [] if m.get(VAL_LOSS) is not None]
    if not kept:
        raise UserError(f"trial {result.path} left no checkpoint to evaluate")
    ranked = [c for c, _ in sorted(kept, key=lambda cm: cm[1][VAL_LOSS], reverse=MODE == "max")]
    found, passed = first_intact(ranked)
    if found is None:
        path, reason = passed[0]
        others = f", and the {len(passed) - 1} other(s) the trial kept too" if len(passed) > 1 else ""
        raise ckpt.DamagedCheckpoint(path, reason + others)
    if passed:
        print(
            f"mgc_ray: checkpoint {passed[0][0]} is damaged ({passed[0][1]}): the test evaluation scores "
            f"the trial's best intact one, {found.checkpoint.path} (epoch {found.payload.epoch})",
            file=sys.stderr,
            flush=True,
        )
    return found


def _evaluate(result, datasets, scorer: SplitScorer):
    """Test-split scores of a trial's best intact checkpoint (`best_intact`), where `scorer` says."""
    found = best_intact(result)
    scores, payload = scorer(found.checkpoint, datasets.test)
    return scores, payload, found.checkpoint.path


def _test_metrics(scores) -> dict:
    """Crop level under test/ (the paper's way), track level under test_track/, each figure's 95 %
    interval under test_ci95/<metric>/low|high and test_track_ci95/... (`metrics.interval_metrics`)."""
    return {
        **prefixed("test", scores.crop),
        **prefixed("test_track", scores.track),
        **interval_metrics("test", scores.crop_ci),
        **interval_metrics("test_track", scores.track_ci),
    }


def _score_trial(result, datasets, c, exp_id, parent, scorer: SplitScorer) -> dict:
    """Evaluate one trial on the test split and log the figures to its MLflow run."""
    scores, payload, ckpt_path = _evaluate(result, datasets, scorer)
    found = tracking.find_runs(c, exp_id, {Tag.PARENT: parent, Tag.TRIAL: result.metrics["trial_id"]})
    run_id = found[0].info.run_id if found else None
    if run_id:
        tracking.log_metrics(c, run_id, _test_metrics(scores))
        c.set_tag(run_id, Tag.CHECKPOINT, ckpt_path)
    return dict(result=result, scores=scores, payload=payload, checkpoint=ckpt_path, run_id=run_id)


def _ensemble(plan, ok: list, rows: dict, datasets, c, exp_id, parent, scorer: SplitScorer) -> dict | None:
    """The `plan.ensemble` trials with the lowest validation loss, scored together on the test split
    (`scoring.ensemble_scores`: their mean probabilities), or None when fewer than 2 trials finished
    or the plan asks for the best alone. A member whose every checkpoint is damaged is left out with
    one line; members already scored (the best, the paper trial) are not scored again."""
    from mgc_ray.models.checkpoint import DamagedCheckpoint
    from mgc_ray.trial.scoring import ensemble_scores

    top = sorted(ok, key=lambda r: r.metrics[METRIC], reverse=MODE == "max")[: max(plan.ensemble, 1)]
    if len(top) < 2:
        return None
    done = {row["result"].metrics["trial_id"]: row for row in rows.values()}
    members = []
    for r in top:
        trial = r.metrics["trial_id"]
        try:
            row = done.get(trial) or _score_trial(r, datasets, c, exp_id, parent, scorer)
        except (DamagedCheckpoint, UserError) as exc:
            print(f"mgc_ray: the ensemble leaves out trial {trial}: {exc}", file=sys.stderr, flush=True)
            continue
        members.append(row)
    if len(members) < 2:
        return None
    label_names = list(members[0]["payload"].label_names)
    return dict(
        scores=ensemble_scores([m["scores"] for m in members], label_names),
        payload=members[0]["payload"],
        members=[
            {
                "trial": m["result"].metrics["trial_id"],
                "checkpoint": str(m["checkpoint"]),
                "run_id": m["run_id"],
                "val_loss": float(m["result"].metrics[METRIC]),
            }
            for m in members
        ],
        run_id=None,
    )


def finish(
    plan,
    space,
    grid,
    datasets,
    manifest: Manifest,
    c,
    exp_id,
    parent,
    budget_note: str | None = None,
    out: Path | None = None,
    chance_note: str | None = None,
    scorer: SplitScorer = SplitScorer(),
) -> dict:
    """Evaluate the best (and the paper) trial on the test split; log and write everything
    (under `out`, default <results_root>/<dataset>/<name>); `scorer`: where the test split is scored.

    `budget_note`: why the budget ended the search, if it did; `chance_note`: rungs that cut
    among trials all at chance, if any did (both into summary.md and the search run's tags).
    """
    ok = [r for r in grid if r.error is None and r.metrics and METRIC in r.metrics]
    if not ok:
        errors = "; ".join(str(r.error).splitlines()[0] for r in grid if r.error is not None)[:500]
        raise UserError(f"every trial failed ({errors}); see {experiment_path(plan.storage_path, plan.name)}")
    best = min(ok, key=lambda r: r.metrics[METRIC])
    paper = _paper_result(grid, space)
    out = out or Path(plan.results_root) / plan.dataset / plan.name
    rows = {"best": _score_trial(best, datasets, c, exp_id, parent, scorer)}
    if paper is not None:
        rows["paper"] = rows["best"] if paper is best else _score_trial(paper, datasets, c, exp_id, parent, scorer)
    ensemble = _ensemble(plan, ok, rows, datasets, c, exp_id, parent, scorer)
    if ensemble is not None:
        rows["ensemble"] = ensemble
        tracking.log_metrics(c, parent, {f"ensemble_{k}": v for k, v in _test_metrics(ensemble["scores"]).items()})
        c.set_tag(parent, Tag.ENSEMBLE, json.dumps(ensemble["members"]))
    test = _test_metrics(rows["best"]["scores"])
    tracking.log_metrics(c, parent, test)
    c.set_tag(parent, Tag.BEST_TRIAL, best.metrics["trial_id"])
    if paper is not None:
        c.set_tag(parent, Tag.PAPER_TRIAL, paper.metrics["trial_id"])  # compare.py's first rule
    c.set_tag(parent, Tag.CHECKPOINT, rows["best"]["checkpoint"])
    if chance_note:
        c.set_tag(parent, Tag.CHANCE_CUTS, chance_note)
    files = report.write_search_results(
        out, plan, grid, rows, manifest, space.space, notes=[n for n in (budget_note, chance_note) if n]
    )
    best_run = rows["best"]["run_id"]
    for target in filter(None, {parent, best_run}):
        tracking.log_artifacts(c, target, files)
    summary = report.summary_rows(plan.arch, rows)
    print(report.summary_table(plan.arch, summary, plan.dataset), flush=True)
    totals = report.cost_totals(grid)
    print(report.cost_line(totals), flush=True)
    tracking.log_metrics(c, parent, {k: v for k, v in totals.items() if k.startswith("cost/")})
    print(f"mgc_ray: results in {out}", flush=True)
    return {
        "rows": summary,
        "results_dir": str(out),
        "best_config": TrainConfig.from_dict(best.config),
        "best_checkpoint": rows["best"]["checkpoint"],
        "parent_run_id": parent,
        "budget_ended": budget_note,
    }
