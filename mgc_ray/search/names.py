"""A new search's name, claimed at once in every store that keeps something under it.

A search named by the tune CLI (`plan.search_name`: `<arch>-<dataset>[-paper]-<YYYYmmdd-HHMMSS>`)
writes under that name in four stores, each of which it may share with other searches or
have to itself:

    Tune's folder     <storage>/<name>                claimed by making it (mkdir is atomic)
    its results       <results>/<dataset>/<name>      claimed by making it
    its Optuna study  <name> in the RDB storage       claimed by creating it (names are unique there)
    its MLflow runs   the search run <name> in each   claimed by creating them, under the lock
                      arch's experiment               beside a sqlite store (MLflow has no unique names)

`claim` tries `name`, then `name-2`, `name-3`, ...: a candidate is taken only when every store
gives it; one that is held in any store undoes what the candidate took in the others and the
next is tried. Every searcher tries the stores in the same order, so two searches started in
the same second get distinct names in every store, whichever stores they share. A search whose
run fails before it writes anything under its name gives it all back (`Claim.release`).

Not claimed: a URI --storage-path (an object store has no atomic make-if-absent; the name is
then checked in the other three stores only), and an MLflow server's runs are checked and
created without a lock (another client's run of the same name may land in between).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from mgc_ray.cluster import is_uri
from mgc_ray.config import MODE, experiment_path
from mgc_ray.errors import UserError
from mgc_ray.files import store_lock

MAX_SAME_SECOND = 999  # name-2 ... name-999: searches started in one second, at most


@dataclass(frozen=True)
class Claim:
    """What a search took under its name (None / empty: that store was not claimed).

    Attributes:
        name: the claimed name.
        tune_dir: its Tune folder (a local --storage-path).
        results_dir: its results folder.
        study: (Optuna storage URL, study name) of the study made empty here.
        mlflow_uri, runs: the tracking store and the search runs made there (one per arch).
    """

    name: str
    tune_dir: str | None = None
    results_dir: str | None = None
    study: tuple[str, str] | None = None
    mlflow_uri: str = ""
    runs: tuple[str, ...] = ()

    def release(self) -> None:
        """Give back what nothing has been written under yet: an empty folder, a study without
        trials, a search run without params (the driver logs them first thing); the rest stays
        for --resume. Never raises (it runs while another error is on its way to the user)."""
        for undo in (self._release_runs, self._release_study):
            with contextlib.suppress(Exception):  # noqa: BLE001 - the error that ended the search is the one to show
                undo()
        for folder in (self.results_dir, self.tune_dir):
            if folder:
                with contextlib.suppress(OSError):  # not empty: the search wrote there
                    os.rmdir(folder)

    def _release_runs(self) -> None:
        if not self.runs:
            return
        from mgc_ray.search import tracking

        c = tracking.client(self.mlflow_uri)
        for rid in self.runs:
            if not c.get_run(rid).data.params:
                c.delete_run(rid)

    def _release_study(self) -> None:
        if self.study is None:
            return
        import optuna

        storage, name = self.study
        if not optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False):
            optuna.delete_study(study_name=name, storage=storage)


def unclaimed(storage: str, name: str) -> Claim:
    """A name the user gave (--experiment-name, --resume): nothing claimed; on failure only an
    empty Tune folder is removed, as Tune may have made it."""
    return Claim(name, tune_dir=None if is_uri(storage) else experiment_path(storage, name))


def claim(plan, archs: Sequence[str]) -> Claim:
    """Claim `plan.name` (else `-2`, `-3`, ...) in every store the search will write it to.

    Args:
        plan: the search's `plan.Plan` (its stores: storage_path, results_root and dataset,
            optuna_storage unless paper_only, mlflow_uri).
        archs: the archs searched (a search run of the name in each one's experiment).

    Returns:
        The `Claim`; `.name` is the search's name from here on.

    Raises:
        UserError: every candidate is held.
    """
    for n in range(1, MAX_SAME_SECOND + 1):
        name = plan.name if n == 1 else f"{plan.name}-{n}"
        got = _try(plan, archs, name)
        if got is not None:
            return got
    raise UserError(
        f"searches {plan.name} to {plan.name}-{MAX_SAME_SECOND} exist already (in {plan.storage_path}, "
        f"{plan.results_root}, {plan.optuna_storage} or {plan.mlflow_uri}): give --experiment-name"
    )


def _try(plan, archs: Sequence[str], name: str) -> Claim | None:
    """The claim of `name` in every store, or None (and nothing kept) if any store holds it."""
    held = Claim(name, mlflow_uri=plan.mlflow_uri)
    try:
        if not is_uri(plan.storage_path):
            held = _with(held, tune_dir=_make_dir(experiment_path(plan.storage_path, name)))
            if held.tune_dir is None:
                return None
        held = _with(held, results_dir=_make_dir(Path(plan.results_root) / plan.dataset / name))
        if held.results_dir is None:
            held.release()
            return None
        if not plan.paper_only:  # a paper trial has no study
            if not _make_study(plan.optuna_storage, name):
                held.release()
                return None
            held = _with(held, study=(plan.optuna_storage, name))
        from mgc_ray.search import tracking

        experiments = [(a, tracking.experiment_name(a, plan.dataset)) for a in archs]
        runs = tracking.new_search_runs(plan.mlflow_uri, experiments, name)
        if runs is None:
            held.release()
            return None
        return _with(held, runs=runs)
    except BaseException:
        held.release()
        raise


def _with(c: Claim, **kw) -> Claim:
    import dataclasses

    return dataclasses.replace(c, **kw)


def _make_dir(path: str | os.PathLike) -> str | None:
    """Make the folder `path` (its parents as needed); None if it exists already."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        p.mkdir()
    except FileExistsError:
        return None
    return str(p)


def _make_study(storage: str, name: str) -> bool:
    """Create the empty study `name` (the searcher fills it); False if one exists. A sqlite storage
    is opened under a lock beside it: two processes creating its tables at once fail."""
    import optuna

    direction = "minimize" if MODE == "min" else "maximize"
    with store_lock(storage):
        try:
            optuna.create_study(storage=storage, study_name=name, direction=direction)
        except optuna.exceptions.DuplicatedStudyError:
            return False
    return True
