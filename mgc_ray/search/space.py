"""search_spaces/<arch>.yaml -> a checked `SearchSpace` (the study samples it, ASHA sizes rungs from it).

A space file holds `space:` (one entry per searched hyperparameter):

    lr:           {type: loguniform, low: 1.0e-5, high: 1.0e-3}
    batch_size:   {type: choice, values: [16, 32, 64]}

Types: loguniform, uniform (low/high), choice (values). The first trial of every
search is the paper's settings for the arch (`config.PAPER`, their one home); a
`paper:` block in the file, if any, must equal them (it is checked at load, so a
file cannot relabel other settings as the paper's). A file may instead name other
first settings in a `start:` block; such a search has no paper trial unless it
samples the paper's settings exactly. A hyperparameter the space leaves out keeps
its first-trial value (the recipe options `spec_mask`, `mixup`, `label_smoothing`: off,
unless a `start:` block turns them on).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

from mgc_ray.config import PAPER, RECIPE_OFF, SEARCHED, TrainConfig, is_paper_point
from mgc_ray.errors import UserError


def space_dir() -> Path:
    """The shipped search spaces: `search_spaces/` at the checkout's top level, installed with
    the package as `mgc_ray.search_spaces` (an editable install maps one onto the other)."""
    return Path(str(resources.files("mgc_ray.search_spaces")))


@dataclass(frozen=True)
class SearchSpace:
    """One arch's search space as read from YAML.

    Attributes:
        arch: the architecture.
        start: the first trial's value of every searched hyperparameter.
        space: the searched entries ({name: {type, low/high or values}}).
        path: the file it came from.
        scaled: input sizes fixed by --smoke ({} otherwise): the paper's settings at test scale.
    """

    arch: str
    start: Mapping[str, Any]
    space: Mapping[str, Mapping[str, Any]]
    path: str
    scaled: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A start that names no recipe option (a space built in code) has it off, the paper's value.
        object.__setattr__(self, "start", {**RECIPE_OFF, **self.start})

    def paper_point(self) -> dict[str, Any]:
        """The paper's settings for this arch (at --smoke's input sizes in a smoke search)."""
        return {**PAPER[self.arch].point(), **self.scaled}

    def is_paper(self, config: Mapping[str, Any]) -> bool:
        """Whether a trial's config is the paper trial (`config.is_paper_point`)."""
        return is_paper_point(self.arch, config, self.scaled)

    @property
    def starts_at_paper(self) -> bool:
        return self.is_paper(self.start)

    def shrunk(self, overrides: Mapping[str, Any]) -> "SearchSpace":
        """A copy whose listed hyperparameters are fixed (smoke mode's tiny sizes)."""
        space = {k: v for k, v in self.space.items() if k not in overrides}
        scaled = {**self.scaled, **overrides} if self.starts_at_paper else dict(self.scaled)
        return SearchSpace(self.arch, {**self.start, **overrides}, space, self.path, scaled)


def space_path(arch: str) -> Path:
    return space_dir() / f"{arch}.yaml"


def load_space(arch: str, path: str | Path | None = None) -> SearchSpace:
    """Read and check a search space file.

    Raises:
        UserError: missing file, unknown type, empty space, a `paper:` block that is not the
            paper's settings, or a first-trial value outside its choices.
    """
    p = Path(path) if path else space_path(arch)
    if not p.is_file():
        raise UserError(f"no search space for {arch!r} at {p}: add search_spaces/{arch}.yaml")
    try:
        doc = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"search space {p} is not valid YAML ({str(exc).splitlines()[0]})") from None
    space = doc.get("space") or {}
    if not space:
        raise UserError(f"search space {p} has an empty `space:` block: list at least one hyperparameter")
    paper = PAPER[arch].point()
    _check_paper_block(p, arch, doc.get("paper"), paper)
    start_block = doc.get("start") or {}
    unknown = [k for k in start_block if k not in SEARCHED]
    if unknown:
        raise UserError(f"search space {p}: `start:` names {', '.join(unknown)}; choose from {', '.join(SEARCHED)}")
    start = {**paper, **start_block}
    _check_values(p, "start" if start_block else "paper", start)
    for name, spec in space.items():
        _check_entry(p, name, spec, start.get(name), "the first trial's (start:)" if name in start_block else "the paper's")
        for value in _extremes(spec):
            _check_values(p, f"space.{name}", {**start, name: value})
    return SearchSpace(arch, start, space, str(p))


def _check_paper_block(path: Path, arch: str, block: Any, paper: dict[str, Any]) -> None:
    """A `paper:` block may only restate the paper's settings (config.PAPER)."""
    if block is None:
        return
    if not isinstance(block, dict):
        raise UserError(f"search space {path}: `paper:` must be a mapping of {', '.join(SEARCHED)}")
    wrong = [f"{k} {block[k]!r} (the paper's is {v!r})" for k, v in paper.items()
             if k in block and not _same(block[k], v)]
    extra = [k for k in block if k not in paper]
    if wrong or extra:
        what = "; ".join(wrong + [f"{k} is not a searched hyperparameter" for k in extra])
        raise UserError(f"search space {path}: its `paper:` block is not the paper's settings for {arch} ({what}); "
                        "remove the block (mgc_ray knows the paper's settings) or rename it `start:` to begin "
                        "the search elsewhere")


def _same(a: Any, b: Any) -> bool:
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    except (TypeError, ValueError):
        return a == b


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


def _check_entry(path: Path, name: str, spec: Any, first: Any, whose: str) -> None:
    if name not in SEARCHED:
        raise UserError(f"search space {path}: {name!r} is not searchable (choose from {', '.join(SEARCHED)})")
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind == "choice":
        values = spec.get("values") or []
        if not values:
            raise UserError(f"search space {path}: {name} has no choices")
        if first not in values:
            raise UserError(f"search space {path}: {name}'s choices {values} must include {whose} {first}")
    elif kind in ("loguniform", "uniform"):
        low, high = float(spec.get("low", 0)), float(spec.get("high", 0))
        if not low < high or (kind == "loguniform" and low <= 0):
            raise UserError(f"search space {path}: {name} needs 0 < low < high (got {low}, {high})")
        if not low <= float(first) <= high:
            raise UserError(f"search space {path}: {name}'s range must include {whose} {first}")
    else:
        raise UserError(f"search space {path}: {name} has type {kind!r}; use loguniform, uniform or choice")


def batch_sizes(space: SearchSpace, paper_only: bool) -> list[int]:
    """Every batch size a trial of this search may draw (the first trial's included)."""
    spec = space.space.get("batch_size")
    sizes = [space.start["batch_size"]] + ([] if paper_only or spec is None else list(spec.get("values", [])))
    return sorted({int(b) for b in sizes})


def largest_batch(space: SearchSpace, paper_only: bool) -> int:
    """The largest batch size a trial of this search may draw."""
    return batch_sizes(space, paper_only)[-1]


def check_batches(space: SearchSpace, n_train: int, paper_only: bool) -> None:
    """Refuse batch sizes larger than the cache's training split (a trial would get no batch)."""
    if largest_batch(space, paper_only) > n_train:
        raise UserError(f"batch size {largest_batch(space, paper_only)} is larger than the training split ({n_train} tracks): "
                        "use more data or smaller batch sizes in the search space")


def param_space(space: SearchSpace, fixed: dict[str, Any]) -> dict[str, Any]:
    """Tune's param space: searched entries as tune distributions, the rest as constants."""
    from ray import tune

    out: dict[str, Any] = dict(fixed)
    for name in SEARCHED:
        spec = space.space.get(name)
        if spec is None:
            out[name] = space.start[name]
        elif spec["type"] == "loguniform":
            out[name] = tune.loguniform(float(spec["low"]), float(spec["high"]))
        elif spec["type"] == "uniform":
            out[name] = tune.uniform(float(spec["low"]), float(spec["high"]))
        else:
            out[name] = tune.choice(list(spec["values"]))
    return out
