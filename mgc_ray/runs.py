"""Reading what searches left in MLflow: a run -> its model checkpoint and its data cache.

`runner.py` tags the runs a user may want a model from with `mgc.checkpoint` (the
lowest-validation-loss checkpoint directory of the trial): the best trial's run, the
paper-settings trial's run and the parent search run (which carries the best trial's).
The search run's `cache` param names the waveform cache the trials trained on.
Used by `evaluate`, `predict`, `compare` and `tracking` (its metric and artifact writers
live here, free of Ray); MLflow is imported only when called.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from mgc_ray.errors import UserError

CHECKPOINT_TAG = "mgc.checkpoint"
ARCH_TAG = "mgc.arch"
SOURCE_TAG = "mgc.source"   # paper | search | trial (tracking.py)
PARENT_TAG = "mlflow.parentRunId"


def open_store(uri: str):
    """An MlflowClient for `uri`; a sqlite file that does not exist is a UserError (MLflow
    would silently create an empty store there)."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):]).expanduser()
        if not path.is_file():
            raise UserError(f"no MLflow store at {path} (--mlflow-uri {uri}): give the URI the search printed, "
                            "or run a search first (python -m mgc_ray.tune --arch ...)")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def get_run(c, run_id: str, uri: str):
    """The run, or a UserError naming the store."""
    from mlflow.exceptions import MlflowException

    try:
        return c.get_run(run_id)
    except MlflowException:
        raise UserError(f"no run {run_id!r} in the MLflow store {uri}: copy the run id from the MLflow UI "
                        "or from the line `mgc_ray: MLflow ... run ID` that the search printed") from None


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
    if run.data.tags.get(SOURCE_TAG) == "search":
        return run
    parent = run.data.tags.get(PARENT_TAG)
    return get_run(c, parent, uri) if parent else None


def resolve_run(uri: str, run_id: str) -> RunModel:
    """A run id -> its checkpoint (the `mgc.checkpoint` tag) and cache (the search run's param).

    Raises:
        UserError: no store, no such run, the paper's reference run, or a run with no checkpoint.
    """
    c = open_store(uri)
    run = get_run(c, run_id, uri)
    tags = run.data.tags
    if tags.get(SOURCE_TAG) == "paper":
        raise UserError(f"run {run_id} is the paper's Table 1 reference: it holds figures, not a model; "
                        "give the id of a search run or of its best or paper-settings trial")
    ckpt = tags.get(CHECKPOINT_TAG)
    if not ckpt:
        raise UserError(f"run {run_id} ({run.info.run_name}) has no {CHECKPOINT_TAG} tag: only a finished search "
                        "run and its best and paper-settings trials carry one; give one of those, or "
                        "--checkpoint DIR (a trial's checkpoint_NNNNNN folder under the Tune storage path)")
    parent = search_run(c, run, uri)
    cache = parent.data.params.get("cache") if parent is not None else None
    return RunModel(run_id=run_id, checkpoint=ckpt, arch=tags.get(ARCH_TAG), cache=cache)


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
        c.log_batch(run_id, metrics=items[i:i + 500])


def log_artifacts(c, run_id: str, paths: Iterable[str | Path], artifact_path: str | None = None) -> None:
    for p in paths:
        if Path(p).is_file():
            c.log_artifact(run_id, str(p), artifact_path)
