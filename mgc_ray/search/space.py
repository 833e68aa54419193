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

Each entry is parsed once, at load, into a typed `Entry` (`Choice`, `Uniform`,
`LogUniform`): the study, the searcher, ASHA's rungs and the report ask the entry
(its Optuna distribution, its draw, its batch sizes); none reads the YAML's dict again.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Mapping

import yaml

from mgc_ray.config import PAPER, RECIPE_OFF, SEARCHED, TrainConfig, is_paper_point
from mgc_ray.errors import UserError


def space_dir() -> Path:
    """The shipped search spaces: `search_spaces/` at the checkout's top level, installed with
    the package as `mgc_ray.search_spaces` (an editable install maps one onto the other)."""
    return Path(str(resources.files("mgc_ray.search_spaces")))


class Entry(ABC):
    """One searched hyperparameter's entry of a space, parsed from its YAML dict (`entry_from_dict`)."""

    kind: ClassVar[str]  # the YAML's `type:`

    @abstractmethod
    def distribution(self) -> Any:
        """The entry's Optuna distribution (the study's; a warm start or `--resume` compares it)."""

    @abstractmethod
    def suggest(self, trial: Any, key: str) -> Any:
        """Draw the entry's value for an Optuna trial (define-by-run).

        Args:
            trial: an `optuna.trial.Trial`.
            key: the study parameter's name (`study.param_name`).

        Returns:
            The value drawn.
        """

    @abstractmethod
    def extremes(self) -> list[Any]:
        """The values a trial can draw that are most likely out of bounds: every choice, or low and high."""

    @abstractmethod
    def contains(self, value: Any) -> bool:
        """Whether a trial of this entry can draw `value`."""

    @abstractmethod
    def choices(self) -> tuple[Any, ...]:
        """Every value a trial can draw when they are finitely many (a choice's); () for a range."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """The entry as a search space file writes it (`entry_from_dict` reads it back equal)."""


@dataclass(frozen=True)
class Choice(Entry):
    """`{type: choice, values: [...]}`: one of the listed values, each as likely.

    Attributes:
        values: the choices, in the file's order (Optuna's categorical keeps that order).
    """

    values: tuple[Any, ...]
    kind: ClassVar[str] = "choice"

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", tuple(self.values))
        if not self.values:
            raise ValueError("a choice needs at least one value")

    def distribution(self) -> Any:
        from optuna.distributions import CategoricalDistribution

        return CategoricalDistribution(list(self.values))

    def suggest(self, trial: Any, key: str) -> Any:
        return trial.suggest_categorical(key, list(self.values))

    def extremes(self) -> list[Any]:
        return list(self.values)

    def contains(self, value: Any) -> bool:
        return value in self.values

    def choices(self) -> tuple[Any, ...]:
        return self.values

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "values": list(self.values)}


@dataclass(frozen=True)
class _Range(Entry):
    """A float range, low to high (both drawable).

    Attributes:
        low: the smallest value.
        high: the largest value.
    """

    low: float
    high: float
    log: ClassVar[bool]

    def __post_init__(self) -> None:
        object.__setattr__(self, "low", float(self.low))
        object.__setattr__(self, "high", float(self.high))
        if not self.low < self.high or (self.log and self.low <= 0):
            bounds = "0 < low < high" if self.log else "low < high"
            raise ValueError(f"{self.kind} needs {bounds} (got {self.low}, {self.high})")

    def distribution(self) -> Any:
        from optuna.distributions import FloatDistribution

        return FloatDistribution(self.low, self.high, log=self.log)

    def suggest(self, trial: Any, key: str) -> Any:
        return trial.suggest_float(key, self.low, self.high, log=self.log)

    def extremes(self) -> list[Any]:
        return [self.low, self.high]

    def contains(self, value: Any) -> bool:
        return self.low <= float(value) <= self.high

    def choices(self) -> tuple[Any, ...]:
        return ()

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Uniform(_Range):
    """`{type: uniform, low, high}`: a float drawn evenly between low and high."""

    kind: ClassVar[str] = "uniform"
    log: ClassVar[bool] = False


@dataclass(frozen=True)
class LogUniform(_Range):
    """`{type: loguniform, low, high}`: a float drawn evenly in log scale (0 < low < high)."""

    kind: ClassVar[str] = "loguniform"
    log: ClassVar[bool] = True


RANGES: dict[str, type[_Range]] = {Uniform.kind: Uniform, LogUniform.kind: LogUniform}


def entry_from_dict(name: str, spec: Any) -> Entry:
    """The one reader of a space entry's dict (`{type, low, high}` or `{type: choice, values}`).

    Args:
        name: the hyperparameter (for the message).
        spec: the entry as the YAML holds it.

    Returns:
        The typed entry.

    Raises:
        ValueError: an unknown type, no choices, or a range that is not 0 < low < high; the
            message names `name` and is one line.
    """
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind == Choice.kind:
        values = spec.get("values") or []
        if not values:
            raise ValueError(f"{name} has no choices")
        if not isinstance(values, (list, tuple)):
            raise ValueError(f"{name}'s values must be a list (got {values!r})")
        return Choice(tuple(values))
    if kind in RANGES:
        try:
            low, high = float(spec.get("low", 0)), float(spec.get("high", 0))
        except (TypeError, ValueError):
            raise ValueError(
                f"{name} needs numbers for low and high (got {spec.get('low')!r}, {spec.get('high')!r})"
            ) from None
        if not low < high or (kind == LogUniform.kind and low <= 0):
            raise ValueError(f"{name} needs 0 < low < high (got {low}, {high})")
        return RANGES[kind](low, high)
    raise ValueError(f"{name} has type {kind!r}; use loguniform, uniform or choice")


def parse_entry(path: Path | str, name: str, spec: Any, first: Any, whose: str) -> Entry:
    """A search space file's entry, parsed and checked against the first trial's value.

    Args:
        path: the file (for the message).
        name: the hyperparameter.
        spec: its entry as the YAML holds it.
        first: the first trial's value of `name`, which the entry must hold.
        whose: whose first value it is, for the message ("the paper's", "the first trial's (start:)").

    Returns:
        The typed entry.

    Raises:
        UserError: `name` is not searchable, the entry is malformed (`entry_from_dict`), or it
            cannot draw `first`.
    """
    if name not in SEARCHED:
        raise UserError(f"search space {path}: {name!r} is not searchable (choose from {', '.join(SEARCHED)})")
    try:
        entry = entry_from_dict(name, spec)
    except ValueError as exc:
        raise UserError(f"search space {path}: {exc}") from None
    if not entry.contains(first):
        what = f"choices {list(entry.choices())}" if isinstance(entry, Choice) else "range"
        raise UserError(f"search space {path}: {name}'s {what} must include {whose} {first}")
    return entry


@dataclass(frozen=True)
class SearchSpace:
    """One arch's search space as read from YAML.

    Attributes:
        arch: the architecture.
        start: the first trial's value of every searched hyperparameter.
        space: the searched entries ({name: Entry}), parsed from the file's `space:` block.
        path: the file it came from.
        scaled: input sizes fixed by --smoke ({} otherwise): the paper's settings at test scale.
    """

    arch: str
    start: Mapping[str, Any]
    space: Mapping[str, Entry]
    path: str
    scaled: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        wrong = [name for name, entry in self.space.items() if not isinstance(entry, Entry)]
        if wrong:
            raise TypeError(
                f"search space entries not typed (Choice, Uniform, LogUniform): {', '.join(wrong)}; "
                "read a YAML entry with space.entry_from_dict"
            )
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
    entries: dict[str, Entry] = {}
    for name, spec in space.items():
        whose = "the first trial's (start:)" if name in start_block else "the paper's"
        entries[name] = parse_entry(p, name, spec, start.get(name), whose)
        for value in entries[name].extremes():
            _check_values(p, f"space.{name}", {**start, name: value})
    return SearchSpace(arch, start, entries, str(p))


def _check_paper_block(path: Path, arch: str, block: Any, paper: dict[str, Any]) -> None:
    """A `paper:` block may only restate the paper's settings (config.PAPER)."""
    if block is None:
        return
    if not isinstance(block, dict):
        raise UserError(f"search space {path}: `paper:` must be a mapping of {', '.join(SEARCHED)}")
    wrong = [
        f"{k} {block[k]!r} (the paper's is {v!r})" for k, v in paper.items() if k in block and not _same(block[k], v)
    ]
    extra = [k for k in block if k not in paper]
    if wrong or extra:
        what = "; ".join(wrong + [f"{k} is not a searched hyperparameter" for k in extra])
        raise UserError(
            f"search space {path}: its `paper:` block is not the paper's settings for {arch} ({what}); "
            "remove the block (mgc_ray knows the paper's settings) or rename it `start:` to begin "
            "the search elsewhere"
        )


def _same(a: Any, b: Any) -> bool:
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    except (TypeError, ValueError):
        return a == b


def _check_values(path: Path, where: str, point: dict[str, Any]) -> None:
    """Refuse in the driver what a trial would refuse in its first second (TrainConfig's bounds:
    lr > 0, weight_decay >= 0, batch_size >= 1, ...), so no trial is spent on it."""
    try:
        TrainConfig.from_dict({"arch": "any", **point})
    except (TypeError, ValueError) as exc:
        raise UserError(f"search space {path}: {where}: {exc}; fix the value in the file") from None


def batch_sizes(space: SearchSpace, paper_only: bool) -> list[int]:
    """Every batch size a trial of this search may draw (the first trial's included).

    Args:
        space: the arch's search space.
        paper_only: a --paper search (its one trial at the first settings).

    Returns:
        The batch sizes, ascending: the first trial's and the `batch_size` entry's choices.
    """
    entry = space.space.get("batch_size")
    sizes = [space.start["batch_size"]] + ([] if paper_only or entry is None else list(entry.choices()))
    return sorted({int(b) for b in sizes})


def largest_batch(space: SearchSpace, paper_only: bool) -> int:
    """The largest batch size a trial of this search may draw.

    Args:
        space: the arch's search space.
        paper_only: a --paper search.

    Returns:
        The last of `batch_sizes`.
    """
    return batch_sizes(space, paper_only)[-1]


def check_batches(space: SearchSpace, n_train: int, paper_only: bool) -> None:
    """Refuse batch sizes larger than the cache's training split (a trial would get no batch)."""
    if largest_batch(space, paper_only) > n_train:
        raise UserError(
            f"batch size {largest_batch(space, paper_only)} is larger than the training split ({n_train} tracks): "
            "use more data or smaller batch sizes in the search space"
        )
