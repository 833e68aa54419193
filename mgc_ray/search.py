"""search_spaces/<arch>.yaml -> Ray Tune param space, Optuna searcher and ASHA.

A space file holds `paper:` (the arch's exact paper settings, the first trial
of every search) and `space:` (one entry per searched hyperparameter):

    lr:           {type: loguniform, low: 1.0e-5, high: 1.0e-3}
    batch_size:   {type: choice, values: [16, 32, 64]}

Types: loguniform, uniform (low/high), choice (values). A hyperparameter that
the space leaves out keeps its paper value.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from mgc_ray.config import TrainConfig
from mgc_ray.errors import UserError

SPACE_DIR = Path(__file__).resolve().parent.parent / "search_spaces"
SEARCHED = ("lr", "weight_decay", "batch_size", "window", "n_mels", "crop_seconds")
# The metric every search ranks by: each trial's lowest validation loss so far,
# the paper's rule for choosing an epoch, applied to choosing a trial too.
METRIC, MODE = "best/val_loss", "min"
# ASHA halves the field at each rung: with grace 1 and 4 epochs, rungs at 1, 2, 4.
REDUCTION_FACTOR = 2


@dataclass(frozen=True)
class SearchSpace:
    """One arch's search space as read from YAML."""

    arch: str
    paper: dict[str, Any]
    space: dict[str, dict[str, Any]]
    path: str

    def paper_point(self) -> dict[str, Any]:
        return {k: self.paper[k] for k in SEARCHED}

    def shrunk(self, overrides: dict[str, Any]) -> "SearchSpace":
        """A copy whose listed hyperparameters are fixed (smoke mode's tiny sizes)."""
        space = {k: v for k, v in self.space.items() if k not in overrides}
        return SearchSpace(self.arch, {**self.paper, **overrides}, space, self.path)


def space_path(arch: str) -> Path:
    return SPACE_DIR / f"{arch}.yaml"


def load_space(arch: str, path: str | Path | None = None) -> SearchSpace:
    """Read and check a search space file.

    Raises:
        UserError: missing file, unknown type, empty space, or a paper value outside its choices.
    """
    p = Path(path) if path else space_path(arch)
    if not p.is_file():
        raise UserError(f"no search space for {arch!r} at {p}: add search_spaces/{arch}.yaml")
    try:
        doc = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"search space {p} is not valid YAML ({str(exc).splitlines()[0]})") from None
    paper, space = doc.get("paper") or {}, doc.get("space") or {}
    if not space:
        raise UserError(f"search space {p} has an empty `space:` block: list at least one hyperparameter")
    missing = [k for k in SEARCHED if k not in paper]
    if missing:
        raise UserError(f"search space {p}: `paper:` lacks {', '.join(missing)}")
    point = {k: paper[k] for k in SEARCHED}
    _check_values(p, "paper", point)
    for name, spec in space.items():
        _check_entry(p, name, spec, paper.get(name))
        for value in _extremes(spec):
            _check_values(p, f"space.{name}", {**point, name: value})
    return SearchSpace(arch, paper, space, str(p))


def _extremes(spec: dict[str, Any]) -> list[Any]:
    """The values a trial can draw that are most likely out of bounds: every choice, or low and high."""
    return list(spec["values"]) if spec["type"] == "choice" else [spec["low"], spec["high"]]


def _check_values(path: Path, where: str, point: dict[str, Any]) -> None:
    """Refuse in the driver what a trial would refuse in its first second (TrainConfig's bounds:
    lr > 0, weight_decay >= 0, batch_size >= 1, ...), so no trial is spent on it."""
    try:
        TrainConfig.from_dict({"arch": "any", **point})
    except (TypeError, ValueError) as exc:
        raise UserError(f"search space {path}: {where}: {exc}; fix the value in the file") from None


def _check_entry(path: Path, name: str, spec: Any, paper_value: Any) -> None:
    if name not in SEARCHED:
        raise UserError(f"search space {path}: {name!r} is not searchable (choose from {', '.join(SEARCHED)})")
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind == "choice":
        values = spec.get("values") or []
        if not values:
            raise UserError(f"search space {path}: {name} has no choices")
        if paper_value not in values:
            raise UserError(f"search space {path}: {name}'s choices {values} must include the paper's {paper_value}")
    elif kind in ("loguniform", "uniform"):
        low, high = float(spec.get("low", 0)), float(spec.get("high", 0))
        if not low < high or (kind == "loguniform" and low <= 0):
            raise UserError(f"search space {path}: {name} needs 0 < low < high (got {low}, {high})")
        if not low <= float(paper_value) <= high:
            raise UserError(f"search space {path}: {name}'s range must include the paper's {paper_value}")
    else:
        raise UserError(f"search space {path}: {name} has type {kind!r}; use loguniform, uniform or choice")


def check_batches(space: SearchSpace, manifest: dict, paper_only: bool) -> None:
    """Refuse batch sizes larger than the cache's training split (a trial would get no batch)."""
    n_train = int(manifest["num_tracks"]["train"])
    spec = space.space.get("batch_size")
    sizes = [space.paper["batch_size"]] + ([] if paper_only or spec is None else list(spec.get("values", [])))
    if max(sizes) > n_train:
        raise UserError(f"batch size {max(sizes)} is larger than the training split ({n_train} tracks): "
                        "use more data or smaller batch sizes in the search space")


def param_space(space: SearchSpace, fixed: dict[str, Any]) -> dict[str, Any]:
    """Tune's param space: searched entries as tune distributions, the rest as constants."""
    from ray import tune

    out: dict[str, Any] = dict(fixed)
    for name in SEARCHED:
        spec = space.space.get(name)
        if spec is None:
            out[name] = space.paper[name]
        elif spec["type"] == "loguniform":
            out[name] = tune.loguniform(float(spec["low"]), float(spec["high"]))
        elif spec["type"] == "uniform":
            out[name] = tune.uniform(float(spec["low"]), float(spec["high"]))
        else:
            out[name] = tune.choice(list(spec["values"]))
    return out


def make_searcher(space: SearchSpace, seed: int):
    """Seeded TPE whose first trial is the paper's settings (points_to_evaluate)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    point = {k: v for k, v in space.paper_point().items() if k in space.space}
    return OptunaSearch(metric=METRIC, mode=MODE, points_to_evaluate=[point],
                        sampler=optuna.samplers.TPESampler(seed=seed))


def make_scheduler(max_epochs: int, grace_period: int):
    """ASHA over epochs (training_iteration counts reported epochs)."""
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="training_iteration", max_t=max_epochs,
                         grace_period=max(1, min(grace_period, max_epochs)),
                         reduction_factor=REDUCTION_FACTOR)


def config_fields() -> set[str]:
    return {f.name for f in fields(TrainConfig)}
