"""What a `python -m mgc_ray.tune` invocation does: its flags and data resolved into a `Plan`.

Every check here needs no Ray (flags, folders, the data and an existing cache, the
search's name, --resume state, the Optuna storage: `stores.py`), so most bad input is refused in a
second, before Ray starts. `tune.main` calls these in order; the runner reads only the
`Plan`. The built-in demo's sizes and its own time budget live here too.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from pathlib import Path
from typing import Sequence

from mgc_ray.cluster import is_uri
from mgc_ray.config import (
    CACHE_SAMPLE_RATE,
    FMA_ROOT_ENV,
    HOME_ENV,
    PAPER,
    experiment_path,
    home,
    ray_address,
)
from mgc_ray.errors import UserError
from mgc_ray.files import SQLITE, locked, sqlite_path, writable_dir
from mgc_ray.stores import MLFLOW, OPTUNA, check_sqlite_store, check_tune_experiment

# The built-in demo of this command: small enough that a DenseNet epoch is short on a CPU
# (77 training tracks: ~40 s of training on a core that trains DenseNet-121 at 1.9 samples/s,
# the slowest we met), with 12-s clips that hold the paper's 10-s crop. (The learning check,
# tests/e2e/test_learning.py, runs on `python -m mgc_ray.demo`'s larger default, 16 x 15 s.)
DEMO = dict(tracks_per_genre=12, seconds=12.0)
# --ensemble's default: the 3 best trials' mean probabilities. Three is the smallest ensemble in which
# two members agreeing outweigh the third; each member costs one more test-split evaluation, not
# training (the best and paper trials are scored anyway).
ENSEMBLE = 3
DEMO_SEARCH = dict(num_samples=4, max_epochs=4)
# On a machine without a GPU the demo's default search ends the whole command within this
# (demo writing, caching and Ray's start included): the search gets what is left, less the tail.
DEMO_DEADLINE_S = 300.0
DEMO_TAIL_S = 60.0  # after the search: test evaluation of two trials, results/ and figures, Ray's shutdown
#                    (17 s + 46 s measured on the shared 2-core development machine, load 3-8)
DEMO_MIN_TRIALS = 2  # the paper trial and one sampled trial run even on a machine too slow for the deadline
FMA_SEARCH = dict(num_samples=32, max_epochs=20)  # 20 = the paper's epochs
# --smoke: tiny data and tiny inputs so a whole search runs in a test.
SMOKE_DEMO = dict(tracks_per_genre=6, seconds=4.0)
SMOKE_SEARCH = dict(num_samples=2, max_epochs=2)
SMOKE_INPUT = dict(window=512, n_mels=32, crop_seconds=2.0)  # 23 ms window, 32 mels, 2-s crops
SMOKE_BATCH = 8


def arch_list(text: str) -> tuple[str, ...]:
    """`--arch`: one name, several comma-separated, or `all` (every arch with the paper's settings)."""
    import argparse

    names = sorted(PAPER) if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in PAPER]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"invalid choice: {', '.join(repr(n) for n in bad) or repr(text)} "
            f"(choose from {', '.join(sorted(PAPER))}, or all)"
        )
    return tuple(dict.fromkeys(names))


def arch_label(archs: Sequence[str]) -> str:
    """A search's arch part of its name: the arch, `all`, or the archs joined by '+'."""
    return "all" if len(archs) > 1 and set(archs) == set(PAPER) else "+".join(archs)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What this invocation will do, resolved from the CLI and the data; all the runner reads."""

    arch: str
    cache: str
    dataset: str
    name: str
    storage_path: str
    num_samples: int
    max_epochs: int
    seed: int  # the sampler's and the trials' (the data's is the manifest's data_seed)
    paper_only: bool
    mlflow_uri: str
    results_root: str  # per-search tables and figures go under <results_root>/<dataset>/<name>
    resume: bool = False
    grace_period: int | None = None  # epochs; None: the rule in rungs.py
    time_budget_s: float | None = None  # --time-budget
    gpu_hours: float | None = None  # --gpu-hours
    search_ends_by: float | None = None  # the demo's own budget: time.monotonic() by which the search should end
    budget_min_trials: int = 1  # trials that start even when the budget is spent
    compile: bool = False  # torch.compile each trial's model
    optuna_storage: str = ""  # the study's RDB URL (study.default_storage unless --optuna-storage)
    archs: tuple[str, ...] = ()  # several: one study over these archs (arch is then their label)
    warm_start: tuple[str, ...] = ()  # earlier studies whose finished trials the study starts from
    ensemble: int = ENSEMBLE  # the top trials (by validation loss) evaluated together; 1: the best alone


def duration(text: str) -> float:
    from mgc_ray.search.duration import parse_duration

    return parse_duration(text, "--time-budget")


def check_flags(args) -> None:
    for flag in ("num_samples", "max_epochs", "max_concurrent", "grace_period", "ensemble"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 1, got {v}")
    if args.gpus_per_trial is not None and not 0 <= args.gpus_per_trial <= 1:
        raise UserError(f"--gpus-per-trial must be in [0, 1] (a trial trains on one GPU), got {args.gpus_per_trial:g}")
    if args.cpus_per_trial is not None and args.cpus_per_trial <= 0:
        raise UserError(f"--cpus-per-trial must be > 0, got {args.cpus_per_trial}")
    if args.gpu_hours is not None and not args.gpu_hours > 0:
        raise UserError(f"--gpu-hours must be > 0, got {args.gpu_hours:g}")
    if args.object_store_gb is not None and args.object_store_gb < 0.1:
        raise UserError(
            f"--object-store-gb must be at least 0.1 (Ray's minimum is 75 MiB), got {args.object_store_gb:g}"
        )
    if args.object_store_gb is not None and ray_address(args.address):
        raise UserError(
            "--object-store-gb sizes a local Ray only; a joined cluster's store is set by `ray start "
            "--object-store-memory` on each node"
        )


def check_dashboard_host(args) -> None:
    """A --dashboard-host this machine cannot listen on: refused before Ray starts."""
    if args.no_dashboard or ray_address(args.address):
        return
    family = socket.AF_INET6 if ":" in args.dashboard_host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((args.dashboard_host, 0))
    except OSError:
        raise UserError(
            f"--dashboard-host {args.dashboard_host} is not an address of this machine: use 127.0.0.1 "
            "(the default), 0.0.0.0 or one of its own addresses"
        ) from None


def resolve_storage(raw: str | None) -> str:
    """Tune's storage: a URI as given, else a local folder (made and checked writable)."""
    raw = raw or str(home() / "ray_results")
    if raw.startswith("file://"):
        raw = raw[len("file://") :]
    if is_uri(raw):
        return raw.rstrip("/")
    return str(writable_dir(Path(raw).expanduser().resolve(), "--storage-path"))


def resolve_data(args) -> tuple[str, str | None, str]:
    """Returns (cache dir, FMA root to prepare from or None, dataset name); writes nothing
    but folders (the demo, when no data is given, comes with `ensure_demo`)."""
    from mgc_ray.data.cache import default_cache_dir

    if args.cache:
        cache = Path(args.cache).expanduser().resolve()
        if not cache.is_dir():
            raise UserError(
                f"--cache {args.cache} does not exist: give a folder made by python -m mgc_ray.prepare "
                "(or --fma-root to prepare one)"
            )
        return str(cache), None, f"cache-{cache.name}"
    if args.audio_dir or args.csv:
        from mgc_ray.data.collection import source_kind

        source = Path(args.audio_dir or args.csv).expanduser().resolve()
        if not source.exists():
            flag = "--audio-dir" if args.audio_dir else "--csv"
            raise UserError(f"{flag} {source} does not exist: give your collection's folder or CSV")
        kind = source_kind(args.audio_dir)
        cache = default_cache_dir(source, kind, args.split or "paper", args.data_seed, CACHE_SAMPLE_RATE)
        writable_dir(Path(cache).parent, "the cache folder")
        return cache, str(source), f"{kind}-{source.stem}"
    root = args.fma_root or os.environ.get(FMA_ROOT_ENV)
    if root:
        root_p = Path(root).expanduser().resolve()
        if not root_p.is_dir():
            raise UserError(f"--fma-root {root} does not exist: point it at the folder holding fma_metadata/")
        cache = default_cache_dir(root_p, args.subset, args.split or "paper", args.data_seed, CACHE_SAMPLE_RATE)
        writable_dir(Path(cache).parent, "the cache folder")
        return cache, str(root_p), f"fma_{args.subset}"
    kind = "demo-smoke" if args.smoke else "demo"
    base = writable_dir(home() / kind, f"${HOME_ENV}")
    return str(base / f"cache-s{args.data_seed}"), str(base / "fma"), kind


def ensure_demo(args, fma_root: str) -> None:
    """Write the built-in demo dataset on first use (no data given)."""
    size = SMOKE_DEMO if args.smoke else DEMO
    fma = Path(fma_root)
    with locked(fma.parent / ".demo.lock"):  # searches started side by side write it once
        write_demo_once(fma, size)


def write_demo_once(fma: Path, size: dict) -> None:
    from mgc_ray.data.synth import GENRES
    from mgc_ray.demo import write_demo

    if not (fma / "fma_metadata" / "tracks.csv").is_file():
        print(
            f"mgc_ray: no data given: writing the built-in demo dataset to {fma} "
            f"({size['tracks_per_genre']} tracks x {len(GENRES)} genres x {size['seconds']:g} s)",
            flush=True,
        )
        write_demo(fma, seed=0, **size)
    else:
        print(f"mgc_ray: no data given: using the built-in demo dataset at {fma}", flush=True)


def check_data(args, cache: str, fma_root: str | None):
    """Refuse bad data before Ray starts.

    Returns:
        (manifest of an existing cache or None, the FMA dataset to prepare from or None).

    Raises:
        UserError: a cache of another schema, sample rate or split; tracks.csv missing
            columns; fewer than two genres; an empty split.
    """
    from mgc_ray.data.cache import MANIFEST, check_cache

    manifest = None
    if fma_root is None or Path(cache, MANIFEST).is_file():
        manifest = check_cache(cache, sample_rate=CACHE_SAMPLE_RATE, split_scheme=args.split)
    dataset = None
    if fma_root is not None and (args.audio_dir or args.csv):
        from mgc_ray.data import collection

        dataset = collection.load(
            args.audio_dir and fma_root, args.csv and fma_root, args.split or "paper", args.data_seed
        )
    elif fma_root is not None:
        from mgc_ray.data.fma import SPLIT_SCHEMES, load_dataset

        if (args.split or "paper") not in SPLIT_SCHEMES:
            raise UserError(
                f"--split {args.split} is for a collection (--audio-dir or --csv); FMA takes "
                f"{' or '.join(SPLIT_SCHEMES)}"
            )
        dataset = load_dataset(fma_root, args.subset, args.split or "paper", args.data_seed)
    return manifest, dataset


def search_name(args, dataset: str, storage: str) -> str:
    if args.experiment_name:
        if "/" in args.experiment_name or args.experiment_name in (".", ".."):
            raise UserError(f"--experiment-name {args.experiment_name!r} must be a plain name, without '/'")
        return args.experiment_name
    prefix = f"{args.arch}-{dataset}{'-paper' if args.paper else ''}-"
    if args.resume:
        if is_uri(storage):
            raise UserError(
                "--resume with a URI --storage-path needs --experiment-name: "
                "give the name the interrupted search printed"
            )
        found = sorted((p for p in Path(storage).glob(prefix + "*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
        if not found:
            raise UserError(
                f"--resume: no earlier search {prefix}* under {storage}: "
                "give --experiment-name and --storage-path of the search to finish"
            )
        return found[-1].name
    return prefix + time.strftime("%Y%m%d-%H%M%S")


def check_experiment(args, storage: str, name: str) -> None:
    """--resume needs Tune's state; a new search never writes over an earlier one (a name of the
    user's is checked here; one made here is claimed after Ray starts, `names.claim`)."""
    path = experiment_path(storage, name)
    if args.resume:
        from ray import tune

        if not tune.Tuner.can_restore(path):
            raise UserError(
                f"--resume: {path} holds no Tune state to resume: check --storage-path and --experiment-name"
            )
        if not is_uri(storage):
            check_tune_experiment(path)
    elif args.experiment_name and not is_uri(storage) and Path(path).is_dir() and any(Path(path).iterdir()):
        raise UserError(
            f"a search named {name} already exists in {storage}: add --resume to finish it, "
            "or choose another --experiment-name"
        )


def demo_budget(args, plan: Plan, gpus: float, started: float) -> Plan:
    """The demo's default search on a machine without a GPU gets a budget of its own: the whole
    command ends by `started + DEMO_DEADLINE_S` (the search by DEMO_TAIL_S before that). Not when
    the user sized the search (--num-samples, --max-epochs, a budget) or resumes it (it keeps its own)."""
    if (
        plan.dataset != "demo"
        or gpus
        or args.resume
        or args.paper
        or args.time_budget
        or args.gpu_hours
        or args.num_samples
        or args.max_epochs
    ):
        return plan
    return dataclasses.replace(
        plan, search_ends_by=started + DEMO_DEADLINE_S - DEMO_TAIL_S, budget_min_trials=DEMO_MIN_TRIALS
    )


def optuna_url(args) -> str:
    """The Optuna storage URL of these flags (--optuna-storage, else beside the MLflow store)."""
    from mgc_ray.search import study

    storage = args.optuna_storage or study.default_storage(args.mlflow_uri, home())
    if not storage.startswith((SQLITE, "postgresql", "mysql")):
        raise UserError(
            f"--optuna-storage {storage!r} is not an Optuna RDB URL: use sqlite:///PATH "
            "(or a postgresql:// or mysql:// URL)"
        )
    if sqlite_path(storage) is not None and sqlite_path(storage) == sqlite_path(args.mlflow_uri):
        raise UserError(
            f"--optuna-storage {storage} is the MLflow store's own file: give the study a file of its "
            "own (default: optuna.db beside the MLflow store)"
        )
    return storage


def check_stores(args) -> None:
    """The MLflow store and the Optuna storage a search will write to, probed read-only
    (`stores.check_sqlite_store`): a damaged, locked, foreign or unreadable one is refused
    before anything is made or written."""
    check_sqlite_store(args.mlflow_uri, MLFLOW, "--mlflow-uri")
    check_sqlite_store(optuna_url(args), OPTUNA, "--optuna-storage")


def resolve_study(args, name: str) -> tuple[str, tuple[str, ...]]:
    """(the Optuna storage URL, the warm-start study names), checked before Ray starts."""
    from mgc_ray.search import study

    storage = optuna_url(args)
    if sqlite_path(storage) is not None:
        writable_dir(sqlite_path(storage).parent, "--optuna-storage folder")
    warm = tuple(n.strip() for n in (args.warm_start or "").split(",") if n.strip())
    if warm and (args.paper or args.resume):
        raise UserError("--warm-start starts a new search: it cannot go with --paper or --resume")
    if args.paper:
        return storage, ()
    if args.experiment_name and not args.resume and study.study_exists(storage, name):
        raise UserError(
            f"an Optuna study named {name} already exists in {storage}: add --resume to continue it, "
            "or choose another --experiment-name"
        )
    for n in warm:
        study.open_study(storage, n)  # refuses an unknown name, listing the known ones
    return storage, warm


def make_plan(
    args,
    archs: tuple[str, ...],
    cache: str,
    dataset: str,
    name: str,
    storage: str,
    results_root: Path,
    optuna_storage: str,
    warm: tuple[str, ...],
) -> Plan:
    """The `Plan` of these flags: the search's size from the flags, else the data's defaults
    (smoke, demo or FMA; --paper: one trial of the paper's epochs, except on the demo)."""
    defaults = SMOKE_SEARCH if args.smoke else (DEMO_SEARCH if dataset.startswith("demo") else FMA_SEARCH)
    paper_epochs = defaults["max_epochs"] if args.smoke or dataset.startswith("demo") else PAPER[archs[0]].epochs
    return Plan(
        arch=args.arch,
        cache=cache,
        dataset=dataset,
        name=name,
        storage_path=storage,
        num_samples=1 if args.paper else (args.num_samples or max(defaults["num_samples"], len(archs))),
        max_epochs=args.max_epochs or (paper_epochs if args.paper else defaults["max_epochs"]),
        seed=args.seed,
        paper_only=args.paper,
        mlflow_uri=args.mlflow_uri,
        results_root=str(results_root),
        resume=args.resume,
        grace_period=args.grace_period,
        time_budget_s=args.time_budget,
        gpu_hours=args.gpu_hours,
        compile=args.compile,
        optuna_storage=optuna_storage,
        warm_start=warm,
        archs=archs if len(archs) > 1 else (),
        ensemble=ENSEMBLE if args.ensemble is None else args.ensemble,
    )


def smoke_spaces(args, spaces: list) -> list:
    """--smoke: every space shrunk to the tiny inputs (and, unless --paper, the tiny batch)."""
    if not args.smoke:
        return spaces
    fixed = dict(SMOKE_INPUT) if args.paper else {**SMOKE_INPUT, "batch_size": SMOKE_BATCH}
    return [s.shrunk(fixed) for s in spaces]


def search_folders(storage: str, results_root: str, mlflow_uri: str) -> list[tuple[str, str]]:
    """(folder, how the user names it) for each local folder a search writes to while it runs:
    checked for space before it starts (tune) and watched while it runs (the driver's DiskGuard)."""
    folders = [] if is_uri(storage) else [(storage, "--storage-path")]
    folders.append((str(results_root), "--results-dir"))
    db = sqlite_path(mlflow_uri)
    if db is not None:
        folders.append((str(db.parent), "the --mlflow-uri folder"))
    return folders
