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
    sealed        True: written with a seal (see below)
It is read back as a frozen `Payload`. Training state (optimiser, epoch
history) sits beside it in `train_state.pt` so that a restarted trial
continues; `predict` never reads that file.

Seal: `seal.json`, written last (atomically) by `save`, holds the size and SHA-256
of every other file in the folder and a checksum of its own text. Every reader
checks the files it reads against it first (`verify`): `predict`, `evaluate` and
the search's test evaluation read `model.pt`, a trial restored by Tune both files.
A changed byte, a file cut short, a missing file or a damaged seal is a
`DamagedCheckpoint`: one line naming the folder. Checking only what is read lets a
checkpoint copied for serving leave `train_state.pt` behind. Sealing a smoke trial's
9.2 MB took 35-50 ms on the 2-core machine at a load of ~29; fusion's ~105 MB (weights
and Adam's two moments) would take ~0.5 s there at that rate, next to a DenseNet CPU
epoch's 1,079 s.

Compatibility: a checkpoint is read by the mgc_ray version that wrote it, up to
the patch number (same major.minor as `mgc_ray.__version__`): model code may
change between minor versions, and a checkpoint whose weights load into a
changed model would predict nonsense silently. Anything else is a UserError
naming both versions.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from mgc_ray import __version__
from mgc_ray.config import ModelConfig
from mgc_ray.errors import UserError
from mgc_ray.files import TMP_PREFIX, Damaged, atomic_write, file_sha256, read_sealed_json, write_sealed_json

CHECKPOINT_FORMAT = 1
MODEL_FILE = "model.pt"
STATE_FILE = "train_state.pt"
SEAL_FILE = "seal.json"
SEALED = "sealed"  # a payload key: True in every checkpoint written with a seal


class DamagedCheckpoint(UserError):
    """A checkpoint whose files no longer match its seal, or that lost its seal.

    Attributes:
        where: the checkpoint folder; reason: what is wrong, in a few words.
    """

    def __init__(self, where: str | Path, reason: str):
        self.where, self.reason = str(where), reason
        super().__init__(
            f"checkpoint {where} is damaged: {reason}; its files changed after the trial wrote them "
            "(a bad disk, an incomplete copy): copy it again from where the search wrote it, or use "
            "another of the trial's checkpoint_* folders"
        )


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
            SEALED: True,
        },
        d / MODEL_FILE,
    )
    if train_state is not None:
        _atomic_save(train_state, d / STATE_FILE)
    seal(d)
    return d


def seal(directory: str | Path) -> Path:
    """Write `seal.json` in a checkpoint folder: the size and SHA-256 of every other file there
    (temporaries of killed writers aside), as a document with its own checksum; `save` calls it
    last, so a folder whose seal exists holds every file the seal lists. Returns the seal's path."""
    d = Path(directory)
    files = {
        f.name: {"bytes": f.stat().st_size, "sha256": file_sha256(f)}
        for f in sorted(d.iterdir())
        if f.is_file() and f.name != SEAL_FILE and not f.name.startswith(TMP_PREFIX)
    }
    return write_sealed_json(d / SEAL_FILE, {"files": files})


def verify(directory: str | Path, names: tuple[str, ...]) -> bool:
    """Check the files `names` of a checkpoint folder against its seal (the one check every reader makes).

    A name the seal does not list is not part of the checkpoint: fine while no such file is there
    (the caller handles its absence), damage when one is (it appeared after the seal).

    Returns:
        True: sealed, and each of `names` matches; False: the folder has no seal (see `load_payload`).

    Raises:
        DamagedCheckpoint: a damaged seal; a file missing, of another size or another SHA-256.
    """
    d = Path(directory)
    try:
        doc = read_sealed_json(d / SEAL_FILE)
    except FileNotFoundError:
        return False
    except Damaged as exc:
        raise DamagedCheckpoint(d, f"{SEAL_FILE} is damaged ({exc})") from None
    except OSError as exc:
        raise UserError(f"cannot read {d / SEAL_FILE} ({exc.strerror}): check the folder's permissions") from None
    files = doc.get("files")
    if not isinstance(files, dict):
        raise DamagedCheckpoint(d, f"{SEAL_FILE} lists no files")
    for name in names:
        f, entry = d / name, files.get(name)
        if not isinstance(entry, dict):
            if f.exists():
                raise DamagedCheckpoint(d, f"{name} is not in its {SEAL_FILE} (it appeared after the seal)")
            continue
        if not f.is_file():
            raise DamagedCheckpoint(d, f"{name} is missing")
        size = f.stat().st_size
        if size != entry.get("bytes"):
            raise DamagedCheckpoint(d, f"{name} has {size:,} bytes, its seal says {entry.get('bytes')}")
        if file_sha256(f) != entry.get("sha256"):
            raise DamagedCheckpoint(d, f"{name}'s SHA-256 differs from its seal's")
    return True


def _unsealed(payload: dict, d: Path) -> None:
    """A checkpoint folder without `seal.json`.

    Written by this version (its payload says SEALED), the seal was lost with the folder's other
    damage (a partial copy): refused. Written before checkpoints were sealed (earlier 0.1 searches,
    which `--resume` and MLflow's mgc.checkpoint tags still point at): accepted with a one-line
    warning. Refusing those would leave their owners nothing to do but train again, as
    no file beside them could prove them intact; the format and version checks still apply.
    """
    if payload.get(SEALED):
        raise DamagedCheckpoint(d, f"{SEAL_FILE} is missing (this checkpoint was written with one)")
    print(
        f"warning: checkpoint {d} has no {SEAL_FILE} (written before mgc_ray sealed its checkpoints): "
        "its files cannot be checked for damage; a search with this version writes sealed ones",
        file=sys.stderr,
        flush=True,
    )


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
    """Read a checkpoint (a directory or its model.pt), checked against its seal, its format and version.

    Raises:
        DamagedCheckpoint: model.pt or the seal changed, or the seal is gone (see `verify`, `_unsealed`).
        UserError: no checkpoint there, an unreadable file, another format or another
            major.minor version of mgc_ray (see the module docstring).
    """
    p = Path(path)
    d, f = (p, p / MODEL_FILE) if p.is_dir() else (p.parent, p)
    sealed = verify(d, (MODEL_FILE,)) if d.is_dir() else False
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
    if not sealed:
        _unsealed(payload, d)
    return Payload.from_dict(payload, f)


def load_model(path: str | Path, expect_arch: str | None = None) -> tuple[torch.nn.Module, Payload]:
    """Rebuild the model from a checkpoint.

    Args:
        path: a checkpoint directory or its model.pt.
        expect_arch: the arch the caller needs (None: any).

    Returns:
        (model in eval mode on CPU, payload).

    Raises:
        UserError: see `load_payload` and `build`.
    """
    payload = load_payload(path)
    return build(payload, path, expect_arch), payload


def build(payload: Payload, where: str | Path, expect_arch: str | None = None) -> torch.nn.Module:
    """The model a payload holds, in eval mode on CPU.

    Args:
        payload: from `load_payload`; where: its checkpoint, for messages.
        expect_arch: the arch the caller needs (None: any).

    Raises:
        UserError: another arch than `expect_arch`; weights that do not fit the model the
            checkpoint's own config builds.
    """
    from mgc_ray.models import (
        build_model,  # models import torch front ends; keep import lazy
    )

    cfg = payload.model_config
    if expect_arch is not None and cfg.arch != expect_arch:
        raise UserError(
            f"checkpoint {where} holds a {cfg.arch!r} model, not {expect_arch!r}: "
            f"give a {expect_arch} checkpoint, or ask for {cfg.arch}"
        )
    # weights come from the checkpoint itself, never from a pretrained file
    model = build_model(dataclasses.replace(cfg, pretrained_path=None))
    try:
        model.load_state_dict(payload.state_dict)
    except RuntimeError as exc:
        raise UserError(
            f"checkpoint {where} does not fit its own model config "
            f"({str(exc).splitlines()[0]}); it was written by mgc_ray {payload.version}"
        ) from None
    model.eval()
    return model


def load_train_state(directory: str | Path) -> dict | None:
    """The training state beside a checkpoint's model (checked against its seal), or None if it has none.

    Raises:
        DamagedCheckpoint: see `verify`; UserError: an unsealed file torch cannot read.
    """
    d = Path(directory)
    verify(d, (STATE_FILE,))
    f = d / STATE_FILE
    if not f.is_file():
        return None
    try:
        return torch.load(f, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated file without a seal to tell
        raise UserError(f"cannot read {f}: {exc.__class__.__name__}; is it an mgc_ray checkpoint?") from None


def check_members(payloads: list[Payload], where: list) -> None:
    """The models of one ensemble must take the same audio and name the same genres in the same order.

    Raises:
        UserError: naming the first member that differs from the first.
    """
    first = payloads[0]
    for payload, path in zip(payloads[1:], where[1:]):
        if payload.model_config.sample_rate != first.model_config.sample_rate:
            raise UserError(
                f"checkpoint {path} takes {payload.model_config.sample_rate} Hz audio, {where[0]} "
                f"{first.model_config.sample_rate} Hz: an ensemble's members must take the same audio"
            )
        if tuple(payload.label_names) != tuple(first.label_names):
            raise UserError(
                f"checkpoint {path} names genres {list(payload.label_names)}, {where[0]} "
                f"{list(first.label_names)}: an ensemble's members must be trained on the same genres"
            )
