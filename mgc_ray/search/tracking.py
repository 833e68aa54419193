"""MLflow: experiments, the paper's reference runs, search and trial runs, reading them back.

Layout in the tracking store:
  experiment  `mgc_ray/<arch>/<dataset>` (one per arch and dataset; created by the driver,
              never by trials, which would race on creating it)
  run         `paper Table 1: <label>`  tag mgc.source=paper: the paper's test metrics
              under our names (test/paper_f1, ...), logged once per experiment
  run         `<search name>`  tag mgc.source=search: the parent of every trial
  run         `<trial id>`  tag mgc.source=trial, mlflow.parentRunId=<search>: params,
              per-epoch metrics (step = epoch), final best/* metrics
All trial runs are written from the driver (`callbacks.TrialLogger`, a Tune callback),
so only the driver needs to reach the tracking store, and every run ends FINISHED,
FAILED or KILLED, never RUNNING.

The runner tags the runs a user may want a model from with `mgc.checkpoint` (the
lowest-validation-loss checkpoint directory of the trial): the best trial's run, the
paper-settings trial's run and the parent search run (which carries the best trial's).
The search run's `cache` param names the waveform cache the trials trained on.
`evaluate`, `predict` and `compare` read them back through `resolve_run` and `open_store`.

Several searches (and evaluate, compare) may share one sqlite store at once: the first to
open a new store creates its tables under a lock beside it (two creating them together
fail), and a write that meets "database is locked" (another process's transaction) waits
and tries again (`_Retrying`).

No Ray here; MLflow is imported only when called.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from mgc_ray.config import PAPER, SEARCHED
from mgc_ray.errors import UserError
from mgc_ray.files import sqlite_path, store_lock


class Tag:
    """Every MLflow tag name this project writes or reads, defined once."""

    SOURCE = "mgc.source"  # paper | search | trial
    ARCH = "mgc.arch"
    SEARCH = "mgc.search"  # a search run's name
    TRIAL = "mgc.trial_id"  # a trial run's Tune trial id
    PARENT = "mlflow.parentRunId"  # MLflow's own: a trial run's search run
    NOTE = "mlflow.note.content"  # MLflow's own: the run's description in the UI
    CHECKPOINT = "mgc.checkpoint"  # the run's model: a checkpoint directory
    BEST_TRIAL = "mgc.best_trial"  # on a search run: the trial id with the lowest val loss
    PAPER_TRIAL = "mgc.paper_trial"  # on a search run: the trial id at the paper's settings
    LOST = "mgc.lost"
    NODE_IDS = "mgc.node_ids"
    DEVICE = "mgc.device"  # a trial run's device: "cpu" or the GPU's name
    DATA_MODE = "mgc.data_mode"  # a trial run's epochs: "materialised" (object store) or "streamed" (shards)
    RESTARTS = "mgc.restarts"
    LAST_FAILURE = "mgc.last_failure"
    EPOCHS_RUN = "mgc.epochs_run"
    STOPPED_EARLY = "mgc.stopped_early"
    ERROR = "mgc.error"
    BUDGET = "mgc.budget"  # on a search run: its --time-budget / --gpu-hours
    BUDGET_ENDED = "mgc.budget_ended"  # on a search run: the budget ended it, and how
    CHANCE_CUTS = "mgc.chance_cuts"  # on a search run: ASHA rungs that cut among trials all at chance
    BEST_OVERALL = "mgc.best_overall"  # on each search run of a search over several archs: the best arch
    ENSEMBLE = "mgc.ensemble"  # on a search run: JSON list of its ensemble's members (trial, checkpoint, run_id)


EXPERIMENT_PREFIX = "mgc_ray/"


def experiment_name(arch: str, dataset: str) -> str:
    """One experiment per arch and dataset: `mgc_ray/<arch>/<dataset>`."""
    return f"{EXPERIMENT_PREFIX}{arch}/{dataset}"


# What a run of each kind records as params: a trial's searched hyperparameters and its
# length and seed (the search run adds its own settings).
TRIAL_PARAMS = ("arch", *SEARCHED, "max_epochs", "seed")


LOCKED_RETRIES = 12  # ~1 min of waits at most: a sqlite writer holds its lock for milliseconds


class _Retrying:
    """An MlflowClient whose calls wait and retry while another process holds the sqlite store's lock."""

    def __init__(self, c):
        self._c = c

    def __getattr__(self, name: str):
        if name == "_c":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        attr = getattr(self._c, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            for attempt in range(LOCKED_RETRIES):
                try:
                    return attr(*args, **kwargs)
                except Exception as exc:  # noqa: BLE001 - MlflowException or SQLAlchemy's OperationalError
                    if "database is locked" not in str(exc) or attempt == LOCKED_RETRIES - 1:
                        raise
                    time.sleep(min(0.1 * 2**attempt, 5.0) * (0.5 + random.random()))

        return call


_CLIENTS: dict[str, "_Retrying"] = {}  # one per URI and process: opening a sqlite store costs ~2 s


def client(uri: str):
    """An MlflowClient for `uri` (writes included), one per process; a sqlite store is created
    once, under a lock."""
    if uri in _CLIENTS:
        return _CLIENTS[uri]
    from mlflow.tracking import MlflowClient

    with store_lock(uri):  # MlflowClient opens the store at once: makes and migrates its tables if new
        c = MlflowClient(tracking_uri=uri)
    _CLIENTS[uri] = _Retrying(c)
    return _CLIENTS[uri]


def artifact_root(uri: str) -> str | None:
    """Artifacts beside a sqlite store (`<db dir>/mlartifacts`); a server decides its own."""
    db = sqlite_path(uri)
    return (db.parent / "mlartifacts").as_uri() if db is not None else None


def experiment_id(c, name: str, uri: str) -> str:
    """Get or create the experiment (in the driver only)."""
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    root = artifact_root(uri)
    return c.create_experiment(name, artifact_location=f"{root}/{name.replace('/', '_')}" if root else None)


def log_params(c, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    c.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])


def find_runs(c, exp_id: str, tags: dict[str, str]) -> list:
    flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return c.search_runs([exp_id], filter_string=flt, max_results=1000)


def ensure_paper_run(c, exp_id: str, arch: str) -> str:
    """The paper's Table 1 row for `arch` as a reference run, once per experiment."""
    found = find_runs(c, exp_id, {Tag.SOURCE: "paper"})
    if found:
        return found[0].info.run_id
    preset = PAPER[arch]
    run = c.create_run(
        exp_id,
        run_name=f"paper Table 1: {preset.label}",
        tags={
            Tag.SOURCE: "paper",
            Tag.ARCH: arch,
            Tag.NOTE: f"Test-set figures of {preset.label} in Table 1 of the paper (fma_small, "
            "8 genres): a reference for every dataset, like for like on fma_small only.",
        },
    )
    rid = run.info.run_id
    log_params(c, rid, {"arch": arch, **preset.point(), "max_epochs": preset.epochs})
    log_metrics(c, rid, {f"test/{k}": v for k, v in preset.table1.items()})
    c.set_terminated(rid, "FINISHED")
    return rid


def _search_tags(name: str, arch: str) -> dict[str, str]:
    return {Tag.SOURCE: "search", Tag.SEARCH: name, Tag.ARCH: arch}


def new_search_runs(uri: str, experiments: list[tuple[str, str]], name: str) -> tuple[str, ...] | None:
    """Claim a new search's name in the store: its search run in each experiment, made now (RUNNING,
    params to come from `ensure_search_run`), unless one of them holds a search run of that name.
    A sqlite store is read and written under its lock, so two searches never both take a name.

    Args:
        experiments: (arch, experiment name) of each arch searched.

    Returns:
        The runs' ids, or None if the name is taken (nothing made).
    """
    c = client(uri)
    with store_lock(uri):
        ids = [(arch, experiment_id(c, exp, uri)) for arch, exp in experiments]
        if any(find_runs(c, e, {Tag.SOURCE: "search", Tag.SEARCH: name}) for _, e in ids):
            return None
        return tuple(c.create_run(e, run_name=name, tags=_search_tags(name, arch)).info.run_id for arch, e in ids)


def ensure_search_run(c, exp_id: str, name: str, params: dict[str, Any]) -> str:
    """The parent run of a search: the one its name's claim made (`new_search_runs`), or, resumed,
    its old parent back; made here for a name the user gave."""
    found = find_runs(c, exp_id, {Tag.SOURCE: "search", Tag.SEARCH: name})
    if found:
        run = found[0]
        c.update_run(run.info.run_id, status="RUNNING")
        if not run.data.params:  # claimed, not yet started
            log_params(c, run.info.run_id, params)
        return run.info.run_id
    run = c.create_run(exp_id, run_name=name, tags=_search_tags(name, str(params.get("arch"))))
    log_params(c, run.info.run_id, params)
    return run.info.run_id


def close_children(c, exp_id: str, parent_id: str, status: str = "KILLED") -> list[tuple[str, str]]:
    """End every child run of `parent_id` still RUNNING (after an interrupted search).

    Returns:
        (trial id, run id) of each run ended.
    """
    ended = []
    for run in find_runs(c, exp_id, {Tag.PARENT: parent_id}):
        if run.info.status == "RUNNING":
            c.set_terminated(run.info.run_id, status)
            ended.append((run.data.tags.get(Tag.TRIAL, ""), run.info.run_id))
    return ended


def mark_lost(c, run_ids: Iterable[str]) -> None:
    """Tag trial runs that a resumed search did not take back: their trial started after
    Tune's last state save before the driver was killed, so Tune does not know it (its
    sampler may draw the same point again as a new trial)."""
    for rid in run_ids:
        c.set_tag(rid, Tag.LOST, "the driver was killed before Ray Tune saved this trial; it was not resumed")


def trial_params(config: dict[str, Any]) -> dict[str, Any]:
    return {k: config[k] for k in TRIAL_PARAMS if k in config}


# --- reading runs back -------------------------------------------------------
def open_store(uri: str):
    """An MlflowClient for reading `uri`; a sqlite file that does not exist is a UserError
    (MLflow would silently create an empty store there), and so is a damaged, locked or
    foreign one (`stores.check_sqlite_store`)."""
    from mgc_ray.stores import MLFLOW, check_sqlite_store

    path = sqlite_path(uri)
    if path is not None:
        check_sqlite_store(uri, MLFLOW, "--mlflow-uri")
        if not path.is_file() or path.stat().st_size == 0:
            raise UserError(
                f"no MLflow store at {path} (--mlflow-uri {uri}): give the URI the search printed, "
                "or run a search first (python -m mgc_ray.tune --arch ...)"
            )
    return client(uri)


def get_run(c, run_id: str, uri: str):
    """The run, or a UserError naming the store."""
    from mlflow.exceptions import MlflowException

    try:
        return c.get_run(run_id)
    except MlflowException:
        raise UserError(
            f"no run {run_id!r} in the MLflow store {uri}: copy the run id from the MLflow UI "
            "or from the line `mgc_ray: MLflow ... run ID` that the search printed"
        ) from None


@dataclass(frozen=True)
class RunModel:
    """Where a run's model and data are.

    Attributes:
        run_id: the run the user named.
        checkpoint: its `mgc.checkpoint` directory.
        arch: the run's `mgc.arch` tag (None if untagged).
        cache: the parent search run's `cache` param (None if not recorded).
    """

    run_id: str
    checkpoint: str
    arch: str | None
    cache: str | None


def search_run(c, run, uri: str):
    """The search run a run belongs to: itself for a search run, its parent for a trial."""
    if run.data.tags.get(Tag.SOURCE) == "search":
        return run
    parent = run.data.tags.get(Tag.PARENT)
    return get_run(c, parent, uri) if parent else None


def resolve_run(uri: str, run_id: str) -> RunModel:
    """A run id -> its checkpoint (the `mgc.checkpoint` tag) and cache (the search run's param).

    Raises:
        UserError: no store, no such run, the paper's reference run, or a run with no checkpoint.
    """
    c = open_store(uri)
    run = get_run(c, run_id, uri)
    tags = run.data.tags
    if tags.get(Tag.SOURCE) == "paper":
        raise UserError(
            f"run {run_id} is the paper's Table 1 reference: it holds figures, not a model; "
            "give the id of a search run or of its best or paper-settings trial"
        )
    ckpt = tags.get(Tag.CHECKPOINT)
    if not ckpt:
        raise UserError(
            f"run {run_id} ({run.info.run_name}) has no {Tag.CHECKPOINT} tag: only a finished search "
            "run and its best and paper-settings trials carry one; give one of those, or "
            "--checkpoint DIR (a trial's checkpoint_NNNNNN folder under the Tune storage path)"
        )
    parent = search_run(c, run, uri)
    cache = parent.data.params.get("cache") if parent is not None else None
    return RunModel(run_id=run_id, checkpoint=ckpt, arch=tags.get(Tag.ARCH), cache=cache)


@dataclass(frozen=True)
class SearchModel:
    """A search's model: its ensemble's members, or its best trial alone.

    Attributes:
        run_id: the search run (of the best arch, for a search over several).
        name: the search's name.
        checkpoints: the members' checkpoint directories, best first (one: the best trial alone).
        arch: the search run's arch.
        cache: the search's cache (None if not recorded).
    """

    run_id: str
    name: str
    checkpoints: tuple[str, ...]
    arch: str | None
    cache: str | None


def _search_runs_named(c, name: str) -> list:
    exps = [e.experiment_id for e in c.search_experiments() if e.name.startswith(EXPERIMENT_PREFIX)]
    if not exps:
        return []
    return c.search_runs(
        exps, filter_string=f"tags.`{Tag.SOURCE}` = 'search' and tags.`{Tag.SEARCH}` = '{name}'", max_results=100
    )


def resolve_search(uri: str, search: str) -> SearchModel:
    """A search (its name, or its search run's id) -> its ensemble's checkpoints (the `mgc.ensemble`
    tag), or its best trial's alone when it kept no ensemble. A search over several archs answers
    with its best arch's search run (`mgc.best_overall`).

    Raises:
        UserError: no store, no such search, a run that is not a search run, or a search with no model.
    """
    import json

    c = open_store(uri)
    runs = [] if "'" in search else _search_runs_named(c, search)
    if not runs:
        from mlflow.exceptions import MlflowException

        try:
            runs = [c.get_run(search)]
        except MlflowException:
            raise UserError(
                f"no search named or with run id {search!r} in the MLflow store {uri}: give the search's name "
                "(its results folder's and its Optuna study's name) or its search run's id from the MLflow UI"
            ) from None
        if runs[0].data.tags.get(Tag.SOURCE) != "search":
            raise UserError(
                f"run {search} is not a search run: give a search's name or its search run's id "
                "(a trial's run goes to --run-id)"
            )
    if len(runs) > 1:
        best = runs[0].data.tags.get(Tag.BEST_OVERALL)
        runs = [r for r in runs if r.data.tags.get(Tag.ARCH) == best] or runs[:1]
    run = runs[0]
    tags = run.data.tags
    members = json.loads(tags[Tag.ENSEMBLE]) if tags.get(Tag.ENSEMBLE) else []
    checkpoints = tuple(m["checkpoint"] for m in members) or (
        (tags[Tag.CHECKPOINT],) if tags.get(Tag.CHECKPOINT) else ()
    )
    if not checkpoints:
        raise UserError(
            f"search {tags.get(Tag.SEARCH, search)} (run {run.info.run_id}) has no model: it did not finish; "
            "resume it (python -m mgc_ray.tune --resume ...) or give --checkpoint DIR"
        )
    return SearchModel(
        run_id=run.info.run_id,
        name=tags.get(Tag.SEARCH, run.info.run_name),
        checkpoints=checkpoints,
        arch=tags.get(Tag.ARCH),
        cache=run.data.params.get("cache"),
    )


def _finite(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(float(v)):
            out[k] = float(v)
    return out


def log_metrics(c, run_id: str, metrics: dict[str, Any], step: int = 0) -> None:
    """Finite numeric metrics onto a run (finished or not), in MLflow-sized batches."""
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    items = [Metric(k, v, ts, step) for k, v in _finite(metrics).items()]
    for i in range(0, len(items), 500):  # MLflow's batch limit is 1000 metrics
        c.log_batch(run_id, metrics=items[i : i + 500])


def log_artifacts(c, run_id: str, paths: Iterable[str | Path], artifact_path: str | None = None) -> None:
    for p in paths:
        if Path(p).is_file():
            c.log_artifact(run_id, str(p), artifact_path)
