"""MLflow: experiments, the paper's reference runs, search and trial runs, artifacts.

Layout in the tracking store:
  experiment  `mgc_ray/<arch>/<dataset>` (one per arch and dataset; created by the driver,
              never by trials, which would race on creating it)
  run         `paper Table 1: <label>`  tag mgc.source=paper: the paper's test metrics
              under our names (test/paper_f1, ...), logged once per experiment
  run         `<search name>`  tag mgc.source=search: the parent of every trial
  run         `<trial id>`  tag mgc.source=trial, mlflow.parentRunId=<search>: params,
              per-epoch metrics (step = epoch), final best/* metrics
All trial runs are written from the driver by `TrialLogger` (a Tune callback), so only
the driver needs to reach the tracking store, and every run ends FINISHED, FAILED
or KILLED, never RUNNING.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from ray.tune import Callback

from mgc_ray.config import PAPER
from mgc_ray.runs import PARENT_TAG, SOURCE_TAG, log_artifacts, log_metrics  # noqa: F401  Ray-free; runner calls them here

SEARCH_TAG = "mgc.search"
TRIAL_TAG = "mgc.trial_id"
PARAMS = ("arch", "lr", "weight_decay", "batch_size", "window", "n_mels", "crop_seconds", "max_epochs", "seed")


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def artifact_root(uri: str) -> str | None:
    """Artifacts beside a sqlite store (`<db dir>/mlartifacts`); a server decides its own."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
    return None


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
    found = find_runs(c, exp_id, {SOURCE_TAG: "paper"})
    if found:
        return found[0].info.run_id
    preset = PAPER[arch]
    run = c.create_run(exp_id, run_name=f"paper Table 1: {preset.label}",
                       tags={SOURCE_TAG: "paper", "mgc.arch": arch,
                             "mlflow.note.content": "Test-set figures from the paper's Table 1 (SPEC section 1)."})
    rid = run.info.run_id
    log_params(c, rid, {"arch": arch, "lr": preset.lr, "weight_decay": preset.weight_decay,
                        "batch_size": preset.batch_size, "window": preset.window, "n_mels": preset.n_mels,
                        "crop_seconds": preset.crop_seconds, "max_epochs": preset.epochs})
    log_metrics(c, rid, {f"test/{k}": v for k, v in preset.table1.items()})
    c.set_terminated(rid, "FINISHED")
    return rid


def ensure_search_run(c, exp_id: str, name: str, params: dict[str, Any]) -> str:
    """The parent run of a search; a resumed search gets its old parent back."""
    found = find_runs(c, exp_id, {SOURCE_TAG: "search", SEARCH_TAG: name})
    if found:
        rid = found[0].info.run_id
        c.update_run(rid, status="RUNNING")
        return rid
    run = c.create_run(exp_id, run_name=name, tags={SOURCE_TAG: "search", SEARCH_TAG: name,
                                                      "mgc.arch": str(params.get("arch"))})
    log_params(c, run.info.run_id, params)
    return run.info.run_id


def close_children(c, exp_id: str, parent_id: str, status: str = "KILLED") -> list[tuple[str, str]]:
    """End every child run of `parent_id` still RUNNING (after an interrupted search).

    Returns:
        (trial id, run id) of each run ended.
    """
    ended = []
    for run in find_runs(c, exp_id, {PARENT_TAG: parent_id}):
        if run.info.status == "RUNNING":
            c.set_terminated(run.info.run_id, status)
            ended.append((run.data.tags.get(TRIAL_TAG, ""), run.info.run_id))
    return ended


def mark_lost(c, run_ids: Iterable[str]) -> None:
    """Tag trial runs that a resumed search did not take back: their trial started after
    Tune's last state save before the driver was killed, so Tune does not know it (its
    sampler may draw the same point again as a new trial)."""
    for rid in run_ids:
        c.set_tag(rid, "mgc.lost", "the driver was killed before Ray Tune saved this trial; it was not resumed")


def trial_params(config: dict[str, Any]) -> dict[str, Any]:
    return {k: config[k] for k in PARAMS if k in config}


class TrialLogger(Callback):
    """Tune callback (runs in the driver) writing one MLflow child run per trial.

    Each epoch is logged once (step = epoch): a trial restarted from a checkpoint, or
    resumed by `--resume` after its driver died, re-reports nothing older than what its
    run already holds. Tags: mgc.node_ids (the Ray nodes the trial ran on), mgc.restarts
    and mgc.last_failure (worker deaths and errors it was retried after), mgc.error (why
    it failed in the end).
    """

    def __init__(self, uri: str, exp_id: str, parent_id: str):
        self.uri, self.exp_id, self.parent_id = uri, exp_id, parent_id
        self._runs: dict[str, str] = {}
        self._last_step: dict[str, int] = {}
        self._nodes: dict[str, list[str]] = {}
        self._restarts: dict[str, int] = {}
        self._c = None

    @property
    def c(self):
        if self._c is None:
            self._c = client(self.uri)
        return self._c

    @property
    def seen(self) -> set[str]:
        """Trial ids this logger has written to."""
        return set(self._runs)

    def __getstate__(self):  # Tune pickles callbacks into its experiment state
        return {**self.__dict__, "_c": None, "_runs": {}, "_last_step": {}, "_nodes": {}, "_restarts": {}}

    def run_id(self, trial) -> str:
        rid = self._runs.get(trial.trial_id)
        if rid is None:
            found = find_runs(self.c, self.exp_id, {PARENT_TAG: self.parent_id, TRIAL_TAG: trial.trial_id})
            if found:  # a resumed search: continue the trial's old run, never a duplicate
                rid = found[0].info.run_id
                if found[0].info.status != "RUNNING":
                    self.c.update_run(rid, status="RUNNING")
                history = self.c.get_metric_history(rid, "val/loss")
                self._last_step[trial.trial_id] = max((m.step for m in history), default=-1)
                self._restarts[trial.trial_id] = int(found[0].data.tags.get("mgc.restarts", 0))
            else:
                run = self.c.create_run(self.exp_id, run_name=trial.trial_id, tags={
                    PARENT_TAG: self.parent_id, SOURCE_TAG: "trial", TRIAL_TAG: trial.trial_id,
                    "mgc.arch": str(trial.config.get("arch"))})
                rid = run.info.run_id
                log_params(self.c, rid, trial_params(trial.config))
            self._runs[trial.trial_id] = rid
        return rid

    def on_trial_start(self, iteration, trials, trial, **info):
        self.run_id(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        rid, step = self.run_id(trial), int(result.get("epoch", 0))
        node = result.get("node_id")
        nodes = self._nodes.setdefault(trial.trial_id, [])
        if node and node not in nodes:
            nodes.append(str(node))
            self.c.set_tag(rid, "mgc.node_ids", ",".join(nodes))
        if step <= self._last_step.get(trial.trial_id, -1):
            return  # this epoch is logged already (re-run after a restart from an older checkpoint)
        self._last_step[trial.trial_id] = step
        metrics = {k: v for k, v in result.items() if k.split("/")[0] in ("train", "val", "best")}
        log_metrics(self.c, rid, metrics, step=step)

    def on_trial_recover(self, iteration, trials, trial, **info):
        rid = self.run_id(trial)
        self._restarts[trial.trial_id] = self._restarts.get(trial.trial_id, 0) + 1
        self.c.set_tag(rid, "mgc.restarts", str(self._restarts[trial.trial_id]))
        self.c.set_tag(rid, "mgc.last_failure", _error_text(trial))

    def on_trial_complete(self, iteration, trials, trial, **info):
        rid = self.run_id(trial)
        last = trial.last_result or {}
        epochs = int(last.get("training_iteration", 0))
        self.c.set_tag(rid, "mgc.epochs_run", str(epochs))
        self.c.set_tag(rid, "mgc.stopped_early", str(epochs < int(trial.config.get("max_epochs", epochs))))
        self.c.set_terminated(rid, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        rid = self.run_id(trial)
        self.c.set_tag(rid, "mgc.error", _error_text(trial))
        self.c.set_terminated(rid, "FAILED")


def _error_text(trial) -> str:
    path = getattr(trial, "error_file", None)
    try:
        text = Path(path).read_text() if path else ""
    except OSError:
        text = ""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "trial failed")[:4000]
