"""Files: atomic writes, JSON reads and writable-folder checks, one home for each.

Every file a command writes appears whole or not at all: it is written under a
temporary name in the same folder (`.tmp-<name>-<random>`, unique per writer, so
two processes or nodes writing the same file never share a temporary file) and
renamed into place. A reader never sees half a file and a killed writer leaves
only a `.tmp-` file, which `clean_temporaries` removes.
"""

from __future__ import annotations

import contextlib
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


SQLITE = "sqlite:///"  # the scheme of a local store's URI (MLflow's and Optuna's): sqlite:///PATH


def sqlite_path(uri: str) -> Path | None:
    """The database file a `sqlite:///PATH` URI names (user and relative paths resolved), else None.

    >>> sqlite_path("postgresql://db/x") is None
    True
    """
    if not uri.startswith(SQLITE):
        return None
    return Path(uri[len(SQLITE) :]).expanduser().resolve()


def store_lock_path(db: str | os.PathLike) -> Path:
    """The lock file beside a sqlite store (`.<name>.lock`) that a command holds while it makes
    the store's tables or claims a name in it (`store_lock`), so that no other command reads a
    store half made."""
    db = Path(db)
    return db.parent / f".{db.name}.lock"


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
    if p.exists() and not p.is_dir():
        raise UserError(f"{what} {p} is a file, not a folder: give a folder (it is made if missing)")
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


# --- checksums: a file's bytes, and JSON documents that carry their own -------------
SEAL_KEY = "sha256"  # a sealed JSON document's own checksum (its last field)
_SEAL_BLANK = "0" * 64
HASH_CHUNK = 8 * 2**20  # hashlib releases the GIL on large buffers: threads hash files in parallel


class Damaged(ValueError):
    """A file whose bytes no longer match the checksum recorded for them."""


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex). SHA-256 runs at ~1.7 GB/s on a core with the
    SHA extensions, faster than blake2b and md5 there (results/benchmarks/integrity.md)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sealed_json(obj: dict) -> str:
    """`obj` as indented JSON whose last field, SEAL_KEY, is the SHA-256 of the text itself
    with that field's value blanked: any byte changed anywhere in the file shows."""
    import hashlib

    text = json.dumps({**obj, SEAL_KEY: _SEAL_BLANK}, indent=1) + "\n"
    digest = hashlib.sha256(text.encode()).hexdigest()
    at = text.rindex(_SEAL_BLANK)
    return text[:at] + digest + text[at + len(_SEAL_BLANK) :]


def write_sealed_json(path: str | os.PathLike, obj: dict) -> Path:
    """Write `obj` atomically as `sealed_json`; returns the path."""
    return atomic_text(path, sealed_json(obj))


def read_sealed_json(path: str | os.PathLike) -> dict:
    """A document written by `write_sealed_json`, checked byte for byte (without SEAL_KEY).

    Raises:
        FileNotFoundError: no such file.
        Damaged: it is not such a document, or its bytes changed since it was written.
    """
    import hashlib

    raw = Path(path).read_bytes()
    try:
        doc = json.loads(raw)
    except ValueError as exc:  # UnicodeDecodeError is one
        raise Damaged(f"not valid JSON ({exc})") from None
    digest = doc.get(SEAL_KEY) if isinstance(doc, dict) else None
    if not isinstance(digest, str) or len(digest) != 64 or raw.count(digest.encode()) != 1:
        raise Damaged(f"its {SEAL_KEY} field is missing or malformed")
    at = raw.rindex(digest.encode())
    body = raw[:at] + _SEAL_BLANK.encode() + raw[at + 64 :]
    if hashlib.sha256(body).hexdigest() != digest:
        raise Damaged("its bytes do not match its checksum")
    del doc[SEAL_KEY]
    return doc


@contextlib.contextmanager
def locked(path: str | os.PathLike):
    """Hold an exclusive lock on `path` (a lock file, made if missing) for the block: commands
    started side by side on one machine (or nodes of a shared POSIX filesystem) take turns.
    The lock goes with the process, so a killed holder never leaves it held. In a folder where
    no lock file can be made (read-only), nobody writes either: the block runs unlocked."""
    import fcntl

    try:
        f = open(path, "a")
    except OSError:
        f = None
    if f is None:
        yield
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def store_lock(uri: str):
    """The lock beside a `sqlite:///` store (`.<file>.lock`), held while its tables are made or a
    name is claimed in it; a server store needs none (a null context)."""
    db = sqlite_path(uri)
    return locked(store_lock_path(db)) if db is not None else contextlib.nullcontext()


# --- full disks ----------------------------------------------------------------------
# A folder with less free space than this is refused before a command starts: a search's
# checkpoints, Tune state and MLflow rows need some room, and a disk that fills midway costs
# a restart (--resume) instead of a clean refusal.
MIN_FREE_BYTES = 64 * 2**20
# A running search stops (as Ctrl+C does, ready for --resume) when a folder it writes to has less
# than this: room left for Tune's state and the checkpoints being written (a smoke trial's is 8.8 MB).
LOW_FREE_BYTES = 32 * 2**20
_FULL_TEXTS = ("no space left on device", "database or disk is full", "disk quota exceeded")


def free_bytes(path: str | os.PathLike) -> int:
    """Free bytes (for an unprivileged writer) on the filesystem of `path` or its nearest existing parent."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    st = os.statvfs(p)
    return st.f_bavail * st.f_frsize


def check_free(path: str | os.PathLike, what: str, need: int = MIN_FREE_BYTES) -> None:
    """Refuse a folder whose filesystem has less than `need` bytes free.

    Raises:
        UserError: naming the folder, what it has and what to do.
    """
    free = free_bytes(path)
    if free < need:
        raise UserError(
            f"{what} {path} has {free / 2**20:.1f} MiB free, less than the {need / 2**20:.0f} MiB "
            "a search needs: free space there or choose another folder"
        )


def is_disk_full(exc: BaseException) -> bool:
    """Whether an error (or what caused it) is a full disk: ENOSPC or EDQUOT, or sqlite's and Ray's
    words for them (Ray wraps a worker's OSError in its own exceptions, with the text kept)."""
    import errno

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(t in str(exc).lower() for t in _FULL_TEXTS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
