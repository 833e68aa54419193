"""Tune callbacks that run in the driver: one MLflow child run per trial, and trial status.

Ray stays here and in the runner; `tracking` (MLflow) imports no Ray.
"""

from __future__ import annotations

from pathlib import Path

from ray.tune import Callback

from mgc_ray.config import VAL_LOSS
from mgc_ray.search.tracking import (
    Tag,
    client,
    find_runs,
    log_metrics,
    log_params,
    trial_params,
)

# Result keys a trial reports every epoch that become tags of its run (they describe the trial, not an epoch).
RESULT_TAGS = {"device": Tag.DEVICE, "data_mode": Tag.DATA_MODE}


class TrialLogger(Callback):
    """Tune callback (runs in the driver) writing one MLflow child run per trial.

    Each epoch is logged once (step = epoch): a trial restarted from a checkpoint, or
    resumed by `--resume` after its driver died, re-reports nothing older than what its
    run already holds. Tags: mgc.node_ids (the Ray nodes the trial ran on), mgc.device
    (what it trained on: "cpu" or the GPU's name), mgc.data_mode (how its epochs read the
    cache: "materialised" or "streamed"), mgc.restarts
    and mgc.last_failure (worker deaths and errors it was retried after), mgc.error (why
    it failed in the end).
    """

    def __init__(self, uri: str, exp_id: str, parent_id: str):
        self.uri, self.exp_id, self.parent_id = uri, exp_id, parent_id
        self._runs: dict[str, str] = {}
        self._last_step: dict[str, int] = {}
        self._nodes: dict[str, list[str]] = {}
        self._restarts: dict[str, int] = {}
        self._tags: dict[str, dict[str, str]] = {}  # per trial: the RESULT_TAGS values tagged so far
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
        return {
            **self.__dict__,
            "_c": None,
            "_runs": {},
            "_last_step": {},
            "_nodes": {},
            "_restarts": {},
            "_tags": {},
        }

    def run_id(self, trial) -> str:
        rid = self._runs.get(trial.trial_id)
        if rid is None:
            found = find_runs(self.c, self.exp_id, {Tag.PARENT: self.parent_id, Tag.TRIAL: trial.trial_id})
            if found:  # a resumed search: continue the trial's old run, never a duplicate
                rid = found[0].info.run_id
                if found[0].info.status != "RUNNING":
                    self.c.update_run(rid, status="RUNNING")
                history = self.c.get_metric_history(rid, VAL_LOSS)
                self._last_step[trial.trial_id] = max((m.step for m in history), default=-1)
                self._restarts[trial.trial_id] = int(found[0].data.tags.get(Tag.RESTARTS, 0))
            else:
                run = self.c.create_run(
                    self.exp_id,
                    run_name=trial.trial_id,
                    tags={
                        Tag.PARENT: self.parent_id,
                        Tag.SOURCE: "trial",
                        Tag.TRIAL: trial.trial_id,
                        Tag.ARCH: str(trial.config.get("arch")),
                    },
                )
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
            self.c.set_tag(rid, Tag.NODE_IDS, ",".join(nodes))
        for key, tag in RESULT_TAGS.items():  # what the trial ran on, tagged when it changes
            value = result.get(key)
            if value and self._tags.setdefault(trial.trial_id, {}).get(key) != value:
                self._tags[trial.trial_id][key] = str(value)
                self.c.set_tag(rid, tag, str(value))
        if step <= self._last_step.get(trial.trial_id, -1):
            return  # this epoch is logged already (re-run after a restart from an older checkpoint)
        self._last_step[trial.trial_id] = step
        metrics = {k: v for k, v in result.items() if k.split("/")[0] in ("train", "val", "best", "cost")}
        log_metrics(self.c, rid, metrics, step=step)

    def on_trial_recover(self, iteration, trials, trial, **info):
        rid = self.run_id(trial)
        self._restarts[trial.trial_id] = self._restarts.get(trial.trial_id, 0) + 1
        self.c.set_tag(rid, Tag.RESTARTS, str(self._restarts[trial.trial_id]))
        self.c.set_tag(rid, Tag.LAST_FAILURE, _error_text(trial))

    def on_trial_complete(self, iteration, trials, trial, **info):
        rid = self.run_id(trial)
        last = trial.last_result or {}
        epochs = int(last.get("training_iteration", 0))
        self.c.set_tag(rid, Tag.EPOCHS_RUN, str(epochs))
        self.c.set_tag(rid, Tag.STOPPED_EARLY, str(epochs < int(trial.config.get("max_epochs", epochs))))
        self.c.set_terminated(rid, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        rid = self.run_id(trial)
        self.c.set_tag(rid, Tag.ERROR, _error_text(trial))
        self.c.set_terminated(rid, "FAILED")


def _error_text(trial) -> str:
    path = getattr(trial, "error_file", None)
    try:
        text = Path(path).read_text() if path else ""
    except OSError:
        text = ""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "trial failed")[:4000]


class ArchLoggers(Callback):
    """A search over several archs: each trial goes to its arch's `TrialLogger` (its own
    experiment `mgc_ray/<arch>/<dataset>` and search run there)."""

    def __init__(self, loggers: dict[str, TrialLogger]):
        self.loggers = loggers

    @property
    def seen(self) -> set[str]:
        return set().union(*(lg.seen for lg in self.loggers.values()))

    def _call(self, name: str, iteration, trials, trial, **info):
        logger = self.loggers.get(str(trial.config.get("arch")))
        if logger is not None:
            getattr(logger, name)(iteration, trials, trial, **info)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._call("on_trial_start", iteration, trials, trial, **info)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._call("on_trial_result", iteration, trials, trial, result=result, **info)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._call("on_trial_recover", iteration, trials, trial, **info)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._call("on_trial_complete", iteration, trials, trial, **info)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._call("on_trial_error", iteration, trials, trial, **info)


class Progress(Callback):
    """Tune callback: every trial's status at the end of each step of Tune's loop.

    After a SIGINT Tune stops its loop, marks the unfinished trials TERMINATED and returns
    normally, so the ResultGrid cannot tell an interrupted search from a finished one; the
    statuses before that clean-up can (as can fewer trials than the search asked for, unless
    its budget ended it: then fewer is what finished means).
    """

    def __init__(self):
        self.status: dict[str, str] = {}

    def on_step_end(self, iteration, trials, **info):
        self.status = {t.trial_id: t.status for t in trials}

    def interrupted(self, num_samples: int, budget_ended: bool = False) -> bool:
        return (len(self.status) < num_samples and not budget_ended) or any(
            s not in ("TERMINATED", "ERROR") for s in self.status.values()
        )


class DiskGuard(Callback):
    """Tune callback: stop the search as Ctrl+C does when a folder it writes to runs low on space.

    Checked at every step of Tune's loop (a statvfs per folder, a microsecond each). Tune then
    saves its state while there is still room for it and the unfinished trials keep their last
    checkpoints, so `--resume` continues once space is freed; waiting for the disk to fill would
    instead fail every trial's next checkpoint with Ray's tracebacks.

    Attributes:
        low: the free bytes under which it stops the search (files.LOW_FREE_BYTES).
        full: (folder, how the user names it, free bytes) once it stopped the search, else None.
    """

    def __init__(self, folders: list[tuple[str, str]], low: int):
        self.folders, self.low = list(folders), int(low)
        self.full: tuple[str, str, int] | None = None

    def on_step_begin(self, iteration, trials, **info):
        import signal

        from mgc_ray.files import free_bytes

        if self.full is not None:
            return
        for path, what in self.folders:
            free = free_bytes(path)
            if free < self.low:
                self.full = (path, what, free)
                signal.raise_signal(signal.SIGINT)  # Tune's own graceful stop (this runs in the driver's main thread)
                return
