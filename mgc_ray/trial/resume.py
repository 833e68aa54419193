"""Which of a trial's checkpoints to read: the first whose files match their seal.

Tune keeps a trial's best checkpoints by validation loss (`search.driver.KEEP_CHECKPOINTS`)
and its latest, each a `checkpoint_NNNNNN` folder in the trial's folder under the storage
path. Two readers choose among them:

- a trial Tune retries gets the latest (`tune.get_checkpoint()`); when that one is damaged
  it continues from the newest intact one before it, or starts again from epoch 0
  (`restore`), and says which in one line;
- the search's test evaluation takes the lowest validation loss; when that one is damaged
  it scores the next one kept (`driver._evaluate`), and says so.

The checks themselves are `models.checkpoint.verify`'s, through its loaders.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any, Iterable

from mgc_ray.errors import UserError
from mgc_ray.models import checkpoint as ckpt

CHECKPOINT_PREFIX = "checkpoint_"  # Tune's folder names: checkpoint_000000, checkpoint_000001, ...


@dataclass(frozen=True)
class Intact:
    """A checkpoint read whole and checked.

    Attributes:
        checkpoint: the `tune.Checkpoint` it came from; payload: its model.pt;
        state: its train_state.pt (None unless asked for).
    """

    checkpoint: Any
    payload: ckpt.Payload
    state: dict | None


def _reason(exc: UserError) -> str:
    return exc.reason if isinstance(exc, ckpt.DamagedCheckpoint) else str(exc)


def first_intact(checkpoints: Iterable, *, state: bool = False) -> tuple[Intact | None, list[tuple[str, str]]]:
    """The first of `checkpoints` that reads whole (model.pt, and train_state.pt with `state`).

    Args:
        checkpoints: `tune.Checkpoint`s in the order to try them (local or on remote storage).
        state: also read the training state, and count a checkpoint without one as unusable.

    Returns:
        (the first intact one or None, [(path, why it was passed over)] for each one before it).
    """
    passed: list[tuple[str, str]] = []
    for c in checkpoints:
        try:
            with c.as_directory() as d:
                payload = ckpt.load_payload(d)
                train_state = ckpt.load_train_state(d) if state else None
        except UserError as exc:
            passed.append((c.path, _reason(exc)))
            continue
        if state and train_state is None:
            passed.append((c.path, f"it has no {ckpt.STATE_FILE}"))
            continue
        return Intact(c, payload, train_state), passed
    return None, passed


def earlier(handed) -> list:
    """The trial's checkpoints before `handed` (a `tune.Checkpoint`), newest first: its siblings named
    checkpoint_* with a lower number. [] when the folder cannot be listed."""
    import pyarrow.fs
    from ray import tune

    parent, name = posixpath.split(handed.path.rstrip("/"))
    try:
        infos = handed.filesystem.get_file_info(pyarrow.fs.FileSelector(parent))
    except OSError:
        return []
    names = sorted(
        (
            i.base_name
            for i in infos
            if i.type == pyarrow.fs.FileType.Directory
            and i.base_name.startswith(CHECKPOINT_PREFIX)
            and i.base_name < name
        ),
        reverse=True,
    )
    return [tune.Checkpoint(posixpath.join(parent, n), filesystem=handed.filesystem) for n in names]


def restore(handed) -> tuple[Intact | None, str | None]:
    """What a retried trial continues from: the checkpoint Tune handed it, or when that is damaged the
    newest intact one before it, or nothing (it starts again from epoch 0).

    Args:
        handed: `tune.get_checkpoint()`.

    Returns:
        (the checkpoint read with its training state, or None; the one line saying which when it is
        not the handed one, else None).
    """
    found, passed = first_intact([handed, *earlier(handed)], state=True)
    if not passed:
        return found, None
    where = f"checkpoint {handed.path} is damaged ({passed[0][1]})"
    if len(passed) > 1:
        where += f", and {len(passed) - 1} earlier one(s) too"
    if found is None:
        return None, f"mgc_ray: {where}: no intact checkpoint is left, the trial starts again from epoch 0"
    name = posixpath.basename(found.checkpoint.path.rstrip("/"))
    return found, (
        f"mgc_ray: {where}: the trial resumes from {name} (epoch {found.state['epoch']}), its newest intact checkpoint"
    )
