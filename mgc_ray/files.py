"""Files: atomic writes, JSON reads and writable-folder checks, one home for each.

Every file a command writes appears whole or not at all: it is written under a
temporary name in the same folder (`.tmp-<name>-<random>`, unique per writer, so
two processes or nodes writing the same file never share a temporary file) and
renamed into place. A reader never sees half a file and a killed writer leaves
only a `.tmp-` file, which `clean_temporaries` removes.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from mgc_ray.errors import UserError

TMP_PREFIX = ".tmp-"  # what a killed writer leaves; never a final name


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Write `path` through `write(tmp_path)` on a temporary name beside it, then rename.

    Args:
        path: the final file.
        write: writes the whole file at the path it is given (keep the format
            explicit: the temporary name has no meaningful suffix).

    Returns:
        `path` as a Path.
    """
    p = Path(path)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f"{TMP_PREFIX}{p.name}-")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def atomic_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; returns the path."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` as indented JSON atomically; returns the path."""
    return atomic_text(path, json.dumps(obj, indent=1) + "\n")


def read_json(path: str | os.PathLike) -> Any | None:
    """The JSON document at `path`, or None if it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def clean_temporaries(folder: str | os.PathLike) -> int:
    """Remove what killed writers left in `folder` (never trusted); returns how many."""
    removed = 0
    for name in os.listdir(folder):
        if name.startswith(TMP_PREFIX):
            os.remove(os.path.join(folder, name))
            removed += 1
    return removed


def writable_dir(path: str | os.PathLike, what: str) -> Path:
    """Make `path` if needed and prove it writable with a file that is gone at once
    (os.access says yes to root even on a read-only mount).

    Args:
        path: the folder.
        what: how the user named it, for the message (e.g. "--results-dir").

    Raises:
        UserError: it cannot be created or written.
    """
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{what} {p} cannot be created ({exc.strerror}): choose a writable folder") from None
    try:
        with tempfile.TemporaryFile(dir=p):
            pass
    except OSError as exc:
        raise UserError(f"{what} {p} is not writable ({exc.strerror}): choose a writable folder") from None
    return p
