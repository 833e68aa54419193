"""The search's Optuna study: in RDB storage, told exactly what Tune saw.

Ray's stock `OptunaSearch` keeps its study in memory and tells Optuna that a trial
ASHA stopped at epoch 1 is COMPLETE, with its epoch-1 score as the final value:
TPE then models early-rung and full-length scores as if they were the same thing.
`searcher.StudySearcher` is a Tune `Searcher` of our own over an Optuna study held in an RDB
storage (a sqlite file beside the MLflow store by default), driven by ask/tell:

- every epoch's result is the trial's intermediate value at that step;
- a trial that ran all its epochs is COMPLETE with its final value, one the
  scheduler stopped early is PRUNED (Optuna's TPE ranks pruned trials below
  complete ones, by how far they got, then by their last value), an error is FAIL;
- the study is named after the search, so `optuna-dashboard <storage>` shows it
  live and `--resume` continues the same study (its history is the storage's);
- the space is define-by-run: with several archs `arch` is the first parameter and
  each arch's own hyperparameters (named `<arch>.<name>`) are drawn only for it;
- each arch's first settings (the paper's by default) are enqueued as the first
  trials; warm-start trials (finished trials of earlier studies) are added before
  the first draw, and a first point one of them already holds is not enqueued again.

Only the driver writes to the storage (Tune's searcher runs there), so sqlite
serves a cluster of any size.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from mgc_ray.config import RECIPE_OFF
from mgc_ray.errors import UserError
from mgc_ray.files import SQLITE, sqlite_path

ARCH_PARAM = "arch"
TUNE_ID_ATTR = "tune_trial_id"  # a study trial's Tune trial id (user attribute)
STORAGE_FILE = "optuna.db"


def default_storage(mlflow_uri: str, fallback_dir: Path) -> str:
    """The study's storage: `optuna.db` beside a sqlite MLflow store, else in `fallback_dir`."""
    db = sqlite_path(mlflow_uri)
    folder = db.parent if db is not None else Path(fallback_dir)
    return f"{SQLITE}{folder / STORAGE_FILE}"


def dashboard_command(storage: str) -> str:
    return f"optuna-dashboard {storage}"


def param_name(arch: str, name: str, multi: bool) -> str:
    """A study parameter's name: the hyperparameter's own in a one-arch study, `<arch>.<name>`
    in a study over several archs (each arch's space is its own)."""
    return f"{arch}.{name}" if multi else name


def study_point(space, multi: bool) -> dict[str, Any]:
    """An arch's first settings as study parameters (only the searched ones)."""
    point = {param_name(space.arch, k, multi): v for k, v in space.start.items() if k in space.space}
    return {ARCH_PARAM: space.arch, **point} if multi else point


def distributions(spaces: Sequence, multi: bool) -> dict[str, Any]:
    """Every study parameter's Optuna distribution.

    Args:
        spaces: one `space.SearchSpace` per arch of the search.
        multi: a study over several archs (`arch` is a parameter, the others `<arch>.<name>`).

    Returns:
        {study parameter: distribution}, each searched entry's own (`space.Entry.distribution`).
    """
    import optuna.distributions as d

    out: dict[str, Any] = {}
    if multi:
        out[ARCH_PARAM] = d.CategoricalDistribution([s.arch for s in spaces])
    for s in spaces:
        for name, entry in s.space.items():
            out[param_name(s.arch, name, multi)] = entry.distribution()
    return out


def open_study(storage: str, name: str):
    """An existing study (for reading: a search's trials, a warm start)."""
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(storage)) or "none"
        raise UserError(
            f"no Optuna study {name!r} in {storage} (studies there: {names[:300]}); give the name of an earlier search"
        ) from None


def study_exists(storage: str, name: str) -> bool:
    """Whether `storage` holds a study `name`; a sqlite file that does not exist yet is not created."""
    import optuna

    db = sqlite_path(storage)
    if db is not None and not db.is_file():
        return False

    try:
        return any(s.study_name == name for s in optuna.get_all_study_summaries(storage))
    except Exception:  # noqa: BLE001 - no such database or table yet: no study either
        return False


def warm_trials(storage: str, names: Iterable[str], spaces: Sequence, multi: bool) -> list:
    """The COMPLETE trials of earlier studies whose parameters fit this search's space, as new
    frozen trials (their values and intermediate values kept), for `Study.add_trials`.

    A trial is taken when every parameter it needs here (its arch's searched ones) lies in
    this space's distributions; parameters this space does not search are dropped, and a
    recipe option an earlier study did not search was off in it (`config.RECIPE_OFF`).
    """
    import optuna

    dists = distributions(spaces, multi)
    by_arch = {s.arch: s for s in spaces}
    out = []
    for name in names:
        for t in open_study(storage, name).get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            arch = _trial_arch(t, spaces)
            if arch not in by_arch:
                continue
            params, ok = {}, True
            for hp in by_arch[arch].space:
                key = param_name(arch, hp, multi)
                value = _param_of(t, arch, hp)
                value = RECIPE_OFF.get(hp) if value is None else value
                if value is None or not dists[key]._contains(dists[key].to_internal_repr(value)):
                    ok = False
                    break
                params[key] = value
            if not ok or t.value is None:
                continue
            if multi:
                params[ARCH_PARAM] = arch
            out.append(
                optuna.trial.create_trial(
                    params=params,
                    distributions={k: dists[k] for k in params},
                    value=t.value,
                    intermediate_values=dict(t.intermediate_values),
                    user_attrs={"warm_start_from": f"{name}#{t.number}"},
                )
            )
    return out


def _trial_arch(t, spaces) -> str | None:
    if ARCH_PARAM in t.params:
        return t.params[ARCH_PARAM]
    return t.user_attrs.get(ARCH_PARAM) or (spaces[0].arch if len(spaces) == 1 else None)


def _param_of(t, arch: str, hp: str):
    return t.params.get(f"{arch}.{hp}", t.params.get(hp))


def same_point(point: Mapping[str, Any], params: Mapping[str, Any]) -> bool:
    if set(point) != set(params):
        return False
    for k, v in point.items():
        w = params[k]
        if isinstance(v, str) or isinstance(w, str):
            if v != w:
                return False
        elif not math.isclose(float(v), float(w), rel_tol=1e-9):
            return False
    return True
