"""Every store a command opens, checked before anything is written to any of them.

The MLflow store and the Optuna storage (sqlite files, usually side by side) and Tune's
folder of a search to resume are probed read-only: a sqlite file is opened with
`mode=ro`, so a check never creates, migrates or repairs anything. A damaged, locked,
foreign or unreadable store is one line naming the file and the fix (a UserError, exit 2)
before Ray starts and before any run, study or result exists, instead of a traceback from
deep inside a search that has already written to the other stores. (The cache checks
itself: `data.cache.read_manifest`.)

A store that does not exist yet passes (a search creates it); so does an empty sqlite file
(MLflow and Optuna make their tables in it). Servers (postgresql://, http://) are theirs
to check.
"""

from __future__ import annotations

import os
import sqlite3
import struct
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from mgc_ray.errors import UserError
from mgc_ray.files import read_json, sqlite_path, store_lock_path

# A store's own writers hold its lock for milliseconds (an MLflow or Optuna commit), and a
# write that meets the lock retries for about a minute (tracking.LOCKED_RETRIES). A lock still
# held after this long at start is another program's open transaction (a sqlite3 shell or a
# DB browser left in BEGIN, a copy tool): waiting longer would only delay the same refusal.
LOCK_WAIT_S = 10.0
# PRAGMA quick_check reads every page (a 1 MB smoke-search store: 26 ms on the 2-core
# development machine, its open included): above this size only the header and the schema
# are read, so the check never costs a large store's owner more than a second or two.
QUICK_CHECK_MAX_BYTES = 256 * 2**20
SQLITE_MAGIC = b"SQLite format 3\x00"
HEADER_BYTES = 100  # sqlite's file header


@dataclass(frozen=True)
class StoreKind:
    """A kind of sqlite store, known by tables every store of that kind has."""

    name: str  # as a message says it: "an MLflow store"
    tables: frozenset[str]
    fix: str  # what to do with a damaged one


MLFLOW = StoreKind(
    "an MLflow store",
    frozenset({"experiments", "runs", "metrics"}),
    "restore it from a backup, or move it aside to start a new store (the runs in it are then not seen)",
)
OPTUNA = StoreKind(
    "an Optuna storage",
    frozenset({"studies", "trials", "version_info"}),
    "restore it from a backup, or move it aside (a new one is made; --resume and --warm-start need the old one)",
)
KINDS = (MLFLOW, OPTUNA)


def check_sqlite_store(uri: str, kind: StoreKind, flag: str) -> None:
    """Refuse a sqlite store that cannot serve as `kind` (other URIs pass unchecked).

    Args:
        uri: the store's URI (sqlite:///PATH is checked).
        kind: MLFLOW or OPTUNA.
        flag: how the user names it, for the message (e.g. "--mlflow-uri").

    Raises:
        UserError: the file is damaged (not sqlite, cut short, malformed), locked by another
            process for over LOCK_WAIT_S, a store of another kind or another program's
            database, or cannot be opened or read.
    """
    path = sqlite_path(uri)
    if path is None or not os.path.lexists(path):
        return
    where = f"{flag} {path}"
    if not path.is_file():
        raise UserError(f"{where} is a folder or a broken link, not {kind.name}: give a file (a new one is made)")
    _check_header(path, where, kind)
    tables = _read_tables(path, where, kind)
    if not tables or kind.tables <= tables:
        return
    other = next((k for k in KINDS if k is not kind and k.tables <= tables), None)
    if other is not None:
        raise UserError(
            f"{where} holds {other.name}, not {kind.name}: give {kind.name}'s own file "
            "(each has its own; by default optuna.db beside mlflow.db)"
        )
    shown = ", ".join(sorted(tables)[:6]) + (", ..." if len(tables) > 6 else "")
    raise UserError(
        f"{where} is another program's sqlite database (tables: {shown}), not {kind.name}: "
        "give another file (a new one is made)"
    )


def _check_header(path: Path, where: str, kind: StoreKind) -> None:
    """Not sqlite at all, or shorter than its own header says: refused without opening it."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
    except OSError as exc:
        raise UserError(
            f"{where} cannot be read ({exc.strerror}): check its permissions, or give another file"
        ) from None
    if size == 0:
        return  # an empty file: sqlite's empty database
    if not head.startswith(SQLITE_MAGIC[: len(head)]):
        raise UserError(f"{where} is not a sqlite database (damaged, or another kind of file): {kind.fix}")
    if len(head) < HEADER_BYTES:
        raise UserError(f"{where} is cut short ({size} bytes, less than a sqlite header): {kind.fix}")
    page_size, changes, pages = struct.unpack(">H6xII", head[16:32])  # bytes 16-17, 24-27, 28-31
    page_size = 65536 if page_size == 1 else page_size
    # The header's page count holds when its change counter equals "version valid for" (bytes 92-95).
    if struct.unpack(">I", head[92:96])[0] == changes and size < pages * page_size:
        raise UserError(
            f"{where} is cut short ({size} of the {pages * page_size} bytes its header records): {kind.fix}"
        )


def _read_tables(path: Path, where: str, kind: StoreKind) -> set[str]:
    """The database's tables, read through a read-only connection; damage and locks refused."""
    lock = store_lock_path(path)
    held = None
    if lock.is_file():  # a command making the store's tables holds this lock: wait for it to finish
        import fcntl

        held = open(lock, "rb")
        fcntl.flock(held, fcntl.LOCK_SH)
    try:
        conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=LOCK_WAIT_S)
        try:
            tables = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if path.stat().st_size <= QUICK_CHECK_MAX_BYTES:
                found = [r for (r,) in conn.execute("PRAGMA quick_check(3)")]
                if found != ["ok"]:
                    said = " ".join(" ".join(found).replace("*** in database main ***", "").split())
                    raise UserError(f"{where} is damaged (sqlite's check: {said[:200]}): {kind.fix}")
            return tables
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        text = str(exc)
        if "locked" in text or "busy" in text:
            raise UserError(
                f"{where} is locked by another process (still after {LOCK_WAIT_S:g} s): close what holds it "
                "(a sqlite3 shell or DB browser with an open transaction), then run the command again"
            ) from None
        if "readonly" in text or "read-only" in text:
            return set()  # a hot journal a crashed writer left: the store's next writer rolls it back
        if isinstance(exc, sqlite3.OperationalError) and "malformed" not in text:
            raise UserError(f"{where} cannot be read (sqlite: {text}): check the file, or give another") from None
        raise UserError(f"{where} is damaged (sqlite: {text}): {kind.fix}") from None
    finally:
        if held is not None:
            held.close()


TRAINABLE = "train_trial"  # the trainable every trial of a search runs (trial/trainable.py)


def check_tune_experiment(path: str) -> None:
    """A local Tune folder to resume: its newest state readable, and a search of this project's.

    Raises:
        UserError: the state file is damaged, or the folder holds another program's experiment.
    """
    states = sorted(Path(path).glob("experiment_state-*.json"))
    if not states:
        return  # Tune.can_restore has said there is state (a URI storage is not read here)
    newest = states[-1]
    doc = read_json(newest)
    if not isinstance(doc, dict) or not isinstance(doc.get("trial_data"), list):
        raise UserError(
            f"--resume: Tune's state {newest} is damaged (not the JSON Tune writes): the search cannot "
            "be resumed; start it again under another --experiment-name"
        )
    names = set()
    for entry in doc["trial_data"]:  # [trial JSON text, run metadata JSON text] per trial
        trial = _json_text(entry[0] if isinstance(entry, list) and entry else entry)
        names.add(trial.get("trainable_name") if isinstance(trial, dict) else None)
    foreign = names - {TRAINABLE}
    if foreign:
        raise UserError(
            f"--resume: {path} holds another program's Tune experiment (trainable "
            f"{', '.join(sorted(map(str, foreign)))}), not a mgc_ray search: check --storage-path and --experiment-name"
        )


def _json_text(text) -> object:
    """A JSON document held as a string inside another (Tune's trial entries), or None."""
    import json

    if not isinstance(text, str):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None
