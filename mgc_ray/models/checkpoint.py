"""Self-contained model checkpoints: everything `predict` needs, nothing else.

A checkpoint is a directory holding `model.pt`, a dict with:
    format        CHECKPOINT_FORMAT (refuse others with a clear error)
    version       mgc_ray.__version__ that wrote it
    model_config  dataclasses.asdict(ModelConfig): arch, sample rate, window,
                  n_mels, crop length, the 1D normalisation statistics
    label_names   genre names in label order
    state_dict    the model's weights (on CPU)
    train_config  the trial's TrainConfig as a dict (informational)
    epoch, metrics  the epoch it was taken at and its validation metrics
It is read back as a frozen `Payload`. Training state (optimiser, epoch
history) sits beside it in `train_state.pt` so that a restarted trial
continues; `predict` never reads that file.

Compatibility: a checkpoint is read by the mgc_ray version that wrote it, up to
the patch number (same major.minor as `mgc_ray.__version__`): model code may
change between minor versions, and a checkpoint whose weights load into a
changed model would predict nonsense silently. Anything else is a UserError
naming both versions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from mgc_ray import __version__
from mgc_ray.config import ModelConfig
from mgc_ray.errors import UserError
from mgc_ray.files import atomic_write

CHECKPOINT_FORMAT = 1
MODEL_FILE = "model.pt"
STATE_FILE = "train_state.pt"


@dataclass(frozen=True)
class Payload:
    """What `model.pt` holds, read back and checked (see the module docstring)."""

    format: int
    version: str
    model_config: ModelConfig
    label_names: tuple[str, ...]
    state_dict: Mapping[str, torch.Tensor]
    train_config: Mapping[str, Any]
    epoch: int | None
    metrics: Mapping[str, Any]

    @classmethod
    def from_dict(cls, d: dict, where: str | Path) -> "Payload":
        try:
            return cls(
                format=d["format"],
                version=str(d["version"]),
                model_config=ModelConfig(**d["model_config"]),
                label_names=tuple(d["label_names"]),
                state_dict=d["state_dict"],
                train_config=dict(d.get("train_config") or {}),
                epoch=d.get("epoch"),
                metrics=dict(d.get("metrics") or {}),
            )
        except (KeyError, TypeError) as exc:  # a field missing, or a model config this code does not know
            raise UserError(
                f"checkpoint {where} has a payload this code cannot read ({exc}); it was written by "
                f"mgc_ray {d.get('version')}"
            ) from None


def _atomic_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save(
    directory: str | Path,
    model: torch.nn.Module,
    model_config: ModelConfig,
    label_names: list[str],
    *,
    train_config: dict | None = None,
    epoch: int | None = None,
    metrics: dict | None = None,
    train_state: dict | None = None,
) -> Path:
    """Write a checkpoint directory (atomically per file) and return it."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    _atomic_save(
        {
            "format": CHECKPOINT_FORMAT,
            "version": __version__,
            "model_config": dataclasses.asdict(model_config),
            "label_names": list(label_names),
            "state_dict": state,
            "train_config": train_config or {},
            "epoch": epoch,
            "metrics": metrics or {},
        },
        d / MODEL_FILE,
    )
    if train_state is not None:
        _atomic_save(train_state, d / STATE_FILE)
    return d


def _major_minor(version: object) -> tuple[str, ...] | None:
    parts = str(version).split(".")
    return tuple(parts[:2]) if len(parts) >= 2 and all(p.isdigit() for p in parts[:2]) else None


def check_version(payload: dict, where: str | Path) -> None:
    """Refuse a checkpoint written by another major.minor version of mgc_ray.

    Raises:
        UserError: the version is missing or differs from `mgc_ray.__version__` beyond the patch.
    """
    written = payload.get("version")
    mm = _major_minor(written)
    if mm != _major_minor(__version__):  # None (no or a malformed version) never equals it
        mm = ".".join(mm or ("?", "?"))
        raise UserError(
            f"checkpoint {where} was written by mgc_ray {written or 'of unknown version'}, "
            f"this is mgc_ray {__version__}: checkpoints are read by the same major.minor "
            f"version; use mgc_ray {mm}.x to read it, or train again with this version"
        )


def load_payload(path: str | Path) -> Payload:
    """Read a checkpoint (a directory or its model.pt) and check its format and version.

    Raises:
        UserError: no checkpoint there, an unreadable file, another format or another
            major.minor version of mgc_ray (see the module docstring).
    """
    p = Path(path)
    f = p / MODEL_FILE if p.is_dir() else p
    if not f.is_file():
        raise UserError(f"no checkpoint at {p}: expected a directory holding {MODEL_FILE}")
    try:
        payload = torch.load(f, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file
        raise UserError(f"cannot read checkpoint {f}: {exc.__class__.__name__}; is it an mgc_ray checkpoint?") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise UserError(
            f"checkpoint {f} has format {found!r}, this mgc_ray {__version__} reads format "
            f"{CHECKPOINT_FORMAT}: re-train or use the mgc_ray version that wrote it "
            f"({payload.get('version') if isinstance(payload, dict) else 'unknown'})"
        )
    check_version(payload, f)
    return Payload.from_dict(payload, f)


def load_model(path: str | Path, expect_arch: str | None = None) -> tuple[torch.nn.Module, Payload]:
    """Rebuild the model from a checkpoint.

    Args:
        path: a checkpoint directory or its model.pt.
        expect_arch: the arch the caller needs (None: any).

    Returns:
        (model in eval mode on CPU, payload).

    Raises:
        UserError: see `load_payload`; another arch than `expect_arch`; weights that do not
            fit the model the checkpoint's own config builds.
    """
    from mgc_ray.models import (
        build_model,  # models import torch front ends; keep import lazy
    )

    payload = load_payload(path)
    cfg = payload.model_config
    if expect_arch is not None and cfg.arch != expect_arch:
        raise UserError(
            f"checkpoint {path} holds a {cfg.arch!r} model, not {expect_arch!r}: "
            f"give a {expect_arch} checkpoint, or ask for {cfg.arch}"
        )
    # weights come from the checkpoint itself, never from a pretrained file
    model = build_model(dataclasses.replace(cfg, pretrained_path=None))
    try:
        model.load_state_dict(payload.state_dict)
    except RuntimeError as exc:
        raise UserError(
            f"checkpoint {path} does not fit its own model config "
            f"({str(exc).splitlines()[0]}); it was written by mgc_ray {payload.version}"
        ) from None
    model.eval()
    return model, payload


def load_train_state(directory: str | Path) -> dict | None:
    f = Path(directory) / STATE_FILE
    return torch.load(f, map_location="cpu", weights_only=False) if f.is_file() else None
