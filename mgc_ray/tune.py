"""`python -m mgc_ray.tune --arch densenet`: the search (or, with --paper, one paper trial).

Flow: every check that needs no Ray (flags, search space, folders, metadata,
an existing cache, --resume state) -> Ray (local with the dashboard on
127.0.0.1, or --address) -> cluster checks (shared storage on several nodes,
GPUs and CPUs per trial) -> prepare if needed -> Ray Datasets built once ->
MLflow experiment, paper reference run and search run -> Tuner (Optuna TPE +
ASHA, within --time-budget / --gpu-hours or the demo's own budget: budget.py) ->
best and paper trials evaluated on the test split -> results/ and a
summary table against the paper's Table 1 row. Bad input is refused in that
order, so most of it costs no Ray start-up.

On a cluster of several nodes every node must reach the same files: Tune's
--storage-path (a URI such as s3://bucket/path, or a folder every node mounts
at the same path, declared with --shared-storage) and the cache (and the FMA
root while preparing; a shared folder, --shared-storage). MLflow needs no such
thing: only this driver process writes to it (callbacks.TrialLogger is a Tune
callback running here), so a sqlite URI is fine on any cluster.

Two seeds: --data-seed fixes the data (the paper split, and so the cache and its
test set); --seed drives the search (Optuna's sampler and the trials' draws).
Searches on the same data with different --seed share one cache and one test set.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import time
from pathlib import Path
from typing import Sequence

from mgc_ray import cluster
from mgc_ray.cluster import is_uri
from mgc_ray.config import CACHE_SAMPLE_RATE, FMA_ROOT_ENV, HOME_ENV, PAPER, experiment_path, home, ray_address
from mgc_ray.errors import Parser, UserError, run_cli
from mgc_ray.files import check_free, free_bytes, is_disk_full, locked, writable_dir

# The built-in demo of this command: small enough that a DenseNet epoch is short on a CPU
# (77 training tracks: ~40 s of training on a core that trains DenseNet-121 at 1.9 samples/s,
# the slowest we met), with 12-s clips that hold the paper's 10-s crop. (The learning check,
# tests/test_learning.py, runs on `python -m mgc_ray.demo`'s larger default, 16 x 15 s.)
DEMO = dict(tracks_per_genre=12, seconds=12.0)
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


def build_parser() -> Parser:
    p = Parser(prog="python -m mgc_ray.tune", description=__doc__.split("\n")[0])
    # The registered models that have the paper's settings (each one's reference run and
    # first trial); config.PAPER needs no torch import, so bad flags are refused in 0.3 s.
    p.add_argument("--arch", required=True, type=arch_list, metavar="{" + ",".join(sorted(PAPER)) + "}[,...]|all",
                   help="one arch, several (comma-separated) or all: one study over them, each arch with "
                        "its own space")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--fma-root", help=f"FMA root (fma_metadata/, fma_<subset>/); or set ${FMA_ROOT_ENV}")
    data.add_argument("--cache", help="a prepared cache (python -m mgc_ray.prepare)")
    data.add_argument("--audio-dir", help="your own collection: a folder with one sub-folder of audio files per genre")
    data.add_argument("--csv", help="your own collection: a CSV of path,label[,split][,artist]")
    p.add_argument("--subset", default="small", choices=("small", "medium", "large"))
    p.add_argument("--split", choices=("paper", "official", "artist", "given"),
                   help="paper: seeded 80/10/10 shuffle (default); official: FMA's set.split; artist: each artist "
                        "in one split (--csv with artists); given: the CSV's split column")
    p.add_argument("--num-samples", type=int, help="trials (default: 32 on FMA, 4 on the demo)")
    p.add_argument("--max-epochs", type=int, help="epochs per trial; ASHA's max_t (default 20; 4 on the demo)")
    p.add_argument("--grace-period", type=int, default=1, help="ASHA: epochs before a trial may be stopped")
    p.add_argument("--time-budget", type=_duration, metavar="DURATION",
                   help="wall time of the search (90s, 20m, 2h, 1h30m): once spent, no new trial starts and "
                        "running trials stop at their next report; --resume continues the count (default: none; "
                        f"the demo on a machine without a GPU ends the whole command within "
                        f"{DEMO_DEADLINE_S / 60:g} min)")
    p.add_argument("--gpu-hours", type=float, metavar="H",
                   help="GPU budget of the search (GPUs per trial x trial wall time, summed), stopping it the same way")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: as resources allow)")
    p.add_argument("--gpus-per-trial", type=float, help="at most 1; fractions share a GPU (default on GPU nodes: "
                   "the share that holds the arch at the space's largest batch, e.g. 1/4 of an H200 for densenet)")
    p.add_argument("--cpus-per-trial", type=float, help="default 1 on CPU nodes; with GPUs, an equal part of the "
                   "node's cores after a quarter is kept for Ray Data")
    p.add_argument("--compile", action="store_true", help="torch.compile each trial's model (GPU trials: "
                   "faster steps after a compile of about a minute)")
    p.add_argument("--address", help="join a running Ray cluster (e.g. 'auto' or HOST:6379; default "
                                      "$RAY_ADDRESS, else a local Ray of this command's own)")
    p.add_argument("--dashboard-host", default="127.0.0.1", help="bind the Ray dashboard here (local Ray only)")
    p.add_argument("--no-dashboard", action="store_true", help="start local Ray without its dashboard")
    p.add_argument("--object-store-gb", type=float,
                   help="a local Ray's object store size in GB (default Ray's: 30 %% of RAM, capped by /dev/shm); "
                        "the cache is materialised in it when its decoded size is at most 30 %% of it")
    p.add_argument("--storage-path", help="Ray Tune's results: a folder or a URI such as s3://bucket/path "
                   "(default: $MGC_HOME/ray_results)")
    p.add_argument("--shared-storage", action="store_true",
                   help="the local --storage-path, the cache and --fma-root are on a filesystem every Ray node "
                        "mounts at the same path (needed, and checked, on a cluster of several nodes)")
    p.add_argument("--experiment-name", help="name of this search (default: <arch>-<dataset>-<time>)")
    p.add_argument("--resume", action="store_true", help="finish an interrupted search (the newest, or --experiment-name)")
    p.add_argument("--paper", action="store_true", help="one trial at the paper's exact settings")
    p.add_argument("--seed", type=int, default=0, help="the search's seed: Optuna's sampler and the trials' "
                   "random draws (default 0); the data stays the same")
    p.add_argument("--data-seed", type=int, default=0, help="the paper split's seed (default 0): which tracks "
                   "are train, val and test; it names the cache, so it changes the test set")
    p.add_argument("--mlflow-uri", default="sqlite:///mlflow.db")
    p.add_argument("--optuna-storage", help="the search's Optuna study: an Optuna RDB URL such as "
                   "sqlite:///optuna.db (default: optuna.db beside a sqlite --mlflow-uri, else in $MGC_HOME)")
    p.add_argument("--warm-start", help="NAME[,NAME...]: earlier searches (studies in the same Optuna storage) "
                   "whose finished trials this search starts from")
    p.add_argument("--results-dir", default="results", help="per-search tables and figures go under here")
    p.add_argument("--space", help="a search space YAML (default: search_spaces/<arch>.yaml)")
    p.add_argument("--smoke", action="store_true", help="tiny data, tiny inputs, 2 trials x 2 epochs (tests)")
    return p


def arch_list(text: str) -> tuple[str, ...]:
    """`--arch`: one name, several comma-separated, or `all` (every arch with the paper's settings)."""
    import argparse

    names = sorted(PAPER) if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in PAPER]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"invalid choice: {', '.join(repr(n) for n in bad) or repr(text)} "
                                         f"(choose from {', '.join(sorted(PAPER))}, or all)")
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
    seed: int                 # the sampler's and the trials' (the data's is the manifest's data_seed)
    paper_only: bool
    mlflow_uri: str
    results_root: str         # per-search tables and figures go under <results_root>/<dataset>/<name>
    resume: bool = False
    grace_period: int = 1
    time_budget_s: float | None = None  # --time-budget
    gpu_hours: float | None = None      # --gpu-hours
    search_ends_by: float | None = None  # the demo's own budget: time.monotonic() by which the search should end
    budget_min_trials: int = 1           # trials that start even when the budget is spent
    compile: bool = False     # torch.compile each trial's model
    optuna_storage: str = ""  # the study's RDB URL (study.default_storage unless --optuna-storage)
    archs: tuple[str, ...] = ()  # several: one study over these archs (arch is then their label)
    warm_start: tuple[str, ...] = ()  # earlier studies whose finished trials the study starts from


def _duration(text: str) -> float:
    from mgc_ray.duration import parse_duration

    return parse_duration(text, "--time-budget")


def _check_positive(args) -> None:
    for flag in ("num_samples", "max_epochs", "max_concurrent", "grace_period"):
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
        raise UserError(f"--object-store-gb must be at least 0.1 (Ray's minimum is 75 MiB), got {args.object_store_gb:g}")
    if args.object_store_gb is not None and ray_address(args.address):
        raise UserError("--object-store-gb sizes a local Ray only; a joined cluster's store is set by `ray start "
                        "--object-store-memory` on each node")


def _check_dashboard_host(args) -> None:
    """A --dashboard-host this machine cannot listen on: refused before Ray starts."""
    if args.no_dashboard or ray_address(args.address):
        return
    family = socket.AF_INET6 if ":" in args.dashboard_host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((args.dashboard_host, 0))
    except OSError:
        raise UserError(f"--dashboard-host {args.dashboard_host} is not an address of this machine: use 127.0.0.1 "
                        "(the default), 0.0.0.0 or one of its own addresses") from None


def resolve_storage(raw: str | None) -> str:
    """Tune's storage: a URI as given, else a local folder (made and checked writable)."""
    raw = raw or str(home() / "ray_results")
    if raw.startswith("file://"):
        raw = raw[len("file://"):]
    if is_uri(raw):
        return raw.rstrip("/")
    return str(writable_dir(Path(raw).expanduser().resolve(), "--storage-path"))


def resolve_data(args) -> tuple[str, str | None, str]:
    """Returns (cache dir, FMA root to prepare from or None, dataset name); writes nothing
    but folders (the demo, when no data is given, comes with `ensure_demo`)."""
    from mgc_ray.cache import default_cache_dir

    if args.cache:
        cache = Path(args.cache).expanduser().resolve()
        if not cache.is_dir():
            raise UserError(f"--cache {args.cache} does not exist: give a folder made by python -m mgc_ray.prepare "
                            "(or --fma-root to prepare one)")
        return str(cache), None, f"cache-{cache.name}"
    if args.audio_dir or args.csv:
        from mgc_ray.collection import source_kind

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
        _write_demo(fma, size)


def _write_demo(fma: Path, size: dict) -> None:
    from mgc_ray.demo import write_demo
    from mgc_ray.demo_synth import GENRES

    if not (fma / "fma_metadata" / "tracks.csv").is_file():
        print(f"mgc_ray: no data given: writing the built-in demo dataset to {fma} "
              f"({size['tracks_per_genre']} tracks x {len(GENRES)} genres x {size['seconds']:g} s)", flush=True)
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
    from mgc_ray.cache import MANIFEST, check_cache

    manifest = None
    if fma_root is None or Path(cache, MANIFEST).is_file():
        manifest = check_cache(cache, sample_rate=CACHE_SAMPLE_RATE, split_scheme=args.split)
    dataset = None
    if fma_root is not None and (args.audio_dir or args.csv):
        from mgc_ray import collection

        dataset = collection.load(args.audio_dir and fma_root, args.csv and fma_root, args.split or "paper",
                                  args.data_seed)
    elif fma_root is not None:
        from mgc_ray.fma import SPLIT_SCHEMES, load_dataset

        if (args.split or "paper") not in SPLIT_SCHEMES:
            raise UserError(f"--split {args.split} is for a collection (--audio-dir or --csv); FMA takes "
                            f"{' or '.join(SPLIT_SCHEMES)}")
        dataset = load_dataset(fma_root, args.subset, args.split or "paper", args.data_seed)
    return manifest, dataset


def _search_name(args, dataset: str, storage: str) -> str:
    if args.experiment_name:
        if "/" in args.experiment_name or args.experiment_name in (".", ".."):
            raise UserError(f"--experiment-name {args.experiment_name!r} must be a plain name, without '/'")
        return args.experiment_name
    prefix = f"{args.arch}-{dataset}{'-paper' if args.paper else ''}-"
    if args.resume:
        if is_uri(storage):
            raise UserError("--resume with a URI --storage-path needs --experiment-name: "
                            "give the name the interrupted search printed")
        found = sorted((p for p in Path(storage).glob(prefix + "*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
        if not found:
            raise UserError(f"--resume: no earlier search {prefix}* under {storage}: "
                            "give --experiment-name and --storage-path of the search to finish")
        return found[-1].name
    return prefix + time.strftime("%Y%m%d-%H%M%S")


def claim_name(storage: str, name: str) -> str:
    """Make the search's Tune folder now, so that searches started in the same second never
    share one: `name`, else `name-2`, `name-3`, ... (a URI storage: `name` as it is)."""
    if is_uri(storage):
        return name
    for n in range(1, 1000):
        candidate = name if n == 1 else f"{name}-{n}"
        try:
            os.mkdir(experiment_path(storage, candidate))
            return candidate
        except FileExistsError:
            continue
    raise UserError(f"{storage} holds searches {name} to {name}-999: give --experiment-name")


def _check_experiment(args, storage: str, name: str) -> None:
    """--resume needs Tune's state; a new search never writes over an earlier one."""
    path = experiment_path(storage, name)
    if args.resume:
        from ray import tune

        if not tune.Tuner.can_restore(path):
            raise UserError(f"--resume: {path} holds no Tune state to resume: "
                            "check --storage-path and --experiment-name")
    elif not is_uri(storage) and Path(path).is_dir() and any(Path(path).iterdir()):
        raise UserError(f"a search named {name} already exists in {storage}: add --resume to finish it, "
                        "or choose another --experiment-name")


def demo_budget(args, plan: Plan, gpus: float, started: float) -> Plan:
    """The demo's default search on a machine without a GPU gets a budget of its own: the whole
    command ends by `started + DEMO_DEADLINE_S` (the search by DEMO_TAIL_S before that). Not when
    the user sized the search (--num-samples, --max-epochs, a budget) or resumes it (it keeps its own)."""
    if (plan.dataset != "demo" or gpus or args.resume or args.paper or args.time_budget or args.gpu_hours
            or args.num_samples or args.max_epochs):
        return plan
    return dataclasses.replace(plan, search_ends_by=started + DEMO_DEADLINE_S - DEMO_TAIL_S,
                               budget_min_trials=DEMO_MIN_TRIALS)
def resolve_study(args, name: str) -> tuple[str, tuple[str, ...]]:
    """(the Optuna storage URL, the warm-start study names), checked before Ray starts."""
    from mgc_ray import study

    storage = args.optuna_storage or study.default_storage(args.mlflow_uri, home())
    if not storage.startswith(("sqlite:///", "postgresql", "mysql")):
        raise UserError(f"--optuna-storage {storage!r} is not an Optuna RDB URL: use sqlite:///PATH "
                        "(or a postgresql:// or mysql:// URL)")
    if storage.startswith("sqlite:///"):
        writable_dir(Path(storage[len("sqlite:///"):]).expanduser().resolve().parent, "--optuna-storage folder")
    warm = tuple(n.strip() for n in (args.warm_start or "").split(",") if n.strip())
    if warm and (args.paper or args.resume):
        raise UserError("--warm-start starts a new search: it cannot go with --paper or --resume")
    if args.paper:
        return storage, ()
    if not args.resume and study.study_exists(storage, name):
        raise UserError(f"an Optuna study named {name} already exists in {storage}: add --resume to continue it, "
                        "or choose another --experiment-name")
    for n in warm:
        study.open_study(storage, n)  # refuses an unknown name, listing the known ones
    return storage, warm


def main(argv: Sequence[str] | None = None) -> int:
    started = time.monotonic()
    args = build_parser().parse_args(argv)
    archs = args.arch
    if len(archs) > 1 and (args.paper or args.space):
        raise UserError("--paper and --space take one arch: give --arch NAME (a search over several archs "
                        "uses each arch's own search_spaces/<arch>.yaml)")
    args.arch = arch_label(archs)
    _check_positive(args)
    _check_dashboard_host(args)
    from mgc_ray import search

    # 1. Everything that needs no Ray: most bad input costs a second, not a Ray start.
    spaces = [search.load_space(a, args.space) for a in archs]
    storage = resolve_storage(args.storage_path)
    results_root = writable_dir(Path(args.results_dir).expanduser().resolve(), "--results-dir")
    if args.mlflow_uri.startswith("sqlite:///"):
        writable_dir(Path(args.mlflow_uri[len("sqlite:///"):]).expanduser().resolve().parent, "--mlflow-uri folder")
    cache, fma_root, dataset = resolve_data(args)
    folders = _folders(args, storage, results_root, cache, fma_root)
    for path, what in folders:
        check_free(path, what)
    name = _search_name(args, dataset, storage)
    _check_experiment(args, storage, name)
    optuna_storage, warm = resolve_study(args, name)
    if dataset.startswith("demo"):
        ensure_demo(args, fma_root)
    manifest, fma_dataset = check_data(args, cache, fma_root)
    defaults = SMOKE_SEARCH if args.smoke else (DEMO_SEARCH if dataset.startswith("demo") else FMA_SEARCH)
    plan = Plan(arch=args.arch, cache=cache, dataset=dataset, name=name, storage_path=storage,
                num_samples=1 if args.paper else (args.num_samples or max(defaults["num_samples"], len(archs))),
                max_epochs=args.max_epochs or (defaults["max_epochs"] if not args.paper or args.smoke
                                               or dataset.startswith("demo") else PAPER[archs[0]].epochs),
                seed=args.seed, paper_only=args.paper, mlflow_uri=args.mlflow_uri,
                results_root=str(results_root), resume=args.resume, grace_period=args.grace_period,
                time_budget_s=args.time_budget, gpu_hours=args.gpu_hours, compile=args.compile,
                optuna_storage=optuna_storage, warm_start=warm, archs=archs if len(archs) > 1 else ())
    if args.smoke:
        fixed = dict(SMOKE_INPUT) if args.paper else {**SMOKE_INPUT, "batch_size": SMOKE_BATCH}
        spaces = [s.shrunk(fixed) for s in spaces]
    from mgc_ray.cache import check_cache
    from mgc_ray.prepare import prepare

    def prepared():
        from mgc_ray.collection import source_kind

        subset = source_kind(args.audio_dir) if (args.audio_dir or args.csv) else args.subset
        with locked(f"{cache}.lock"):  # searches started side by side prepare it once, in turn
            prepare(fma_root, cache, subset=subset, split=args.split or "paper", data_seed=args.data_seed,
                    dataset=fma_dataset)
        return check_cache(cache, sample_rate=CACHE_SAMPLE_RATE, split_scheme=args.split)

    if manifest is not None:
        if fma_root is not None:
            manifest = prepared()  # done already: confirms the cache holds these tracks, starts no Ray
        for space in spaces:
            search.check_batches(space, manifest.num_tracks["train"], plan.paper_only)

    # 2. Ray, then what needs the cluster, still before any expensive work.
    if not args.experiment_name and not args.resume:
        plan = dataclasses.replace(plan, name=claim_name(storage, name))
    try:
        try:
            _search(args, plan, spaces, storage, cache, fma_root, manifest, prepared, started)
        except Exception as exc:
            _refuse_if_full(exc, folders, plan)
            raise
    except BaseException:
        if not is_uri(storage):
            with contextlib.suppress(OSError):  # only while Tune has written nothing there
                os.rmdir(experiment_path(storage, plan.name))
        raise
    return 0


def _folders(args, storage: str, results_root: Path, cache: str, fma_root: str | None) -> list[tuple[str, str]]:
    """(folder, how the user names it) for every local folder the search writes to."""
    from mgc_ray.cache import MANIFEST

    folders = [] if is_uri(storage) else [(storage, "--storage-path")]
    folders.append((str(results_root), "--results-dir"))
    if args.mlflow_uri.startswith("sqlite:///"):
        folders.append((str(Path(args.mlflow_uri[len("sqlite:///"):]).expanduser().resolve().parent),
                        "the --mlflow-uri folder"))
    if fma_root is not None and not Path(cache, MANIFEST).is_file():  # to be prepared (and the demo written)
        folders.append((str(Path(cache).parent), "the cache folder"))
    return folders


def _refuse_if_full(exc: Exception, folders: list[tuple[str, str]], plan: Plan) -> None:
    """A disk that filled during the search (Ray may report it as another error, e.g. a truncated
    pickle's EOFError): one line naming the fullest folder and how to go on, instead of a traceback."""
    if not folders:
        return
    free = {path: free_bytes(path) for path, _ in folders}
    path, what = min(folders, key=lambda f: free[f[0]])
    if not (is_disk_full(exc) or free[path] < MIN_FULL_BYTES):
        return
    raise UserError(f"{what} {path} is full ({free[path] / 2**20:.1f} MiB free; {type(exc).__name__}): free space "
                    f"there, then finish the search with the same command and --resume --experiment-name "
                    f"{plan.name}") from None


MIN_FULL_BYTES = 2**20  # a folder this close to full explains any error Ray reports


def _search(args, plan: Plan, spaces: list, storage: str, cache: str, fma_root: str | None, manifest, prepared,
            started: float) -> None:
    """Ray, the cluster's checks and resources, the cache if it is still to prepare, the search.

    Args:
        started: time.monotonic() when the command started (the demo's budget counts from it).
    """
    from mgc_ray import search

    address = ray_address(args.address)
    store = int(args.object_store_gb * 1e9) if args.object_store_gb else None
    cluster.start_for_search(address, args.dashboard_host, dashboard=not args.no_dashboard, object_store_memory=store)
    cluster.check_cluster(storage, cache, fma_root if manifest is None else None, args.shared_storage)
    # the default GPU share fits the heaviest trial the search may start
    heaviest = max(spaces, key=lambda s: cluster.trial_memory_gib(s.arch, search.largest_batch(s, plan.paper_only)))
    res = cluster.resources(args.gpus_per_trial, args.cpus_per_trial, args.max_concurrent, arch=heaviest.arch,
                            max_batch=search.largest_batch(heaviest, plan.paper_only))
    if args.gpu_hours and not res.gpus:
        raise UserError("--gpu-hours counts the trials' GPU time, but they get no GPU here (no GPU in the cluster, "
                        "or --gpus-per-trial 0): use --time-budget instead")
    plan = demo_budget(args, plan, res.gpus, started)
    if manifest is None:
        manifest = prepared()  # Ray tasks over the cluster
        for space in spaces:
            search.check_batches(space, manifest.num_tracks["train"], plan.paper_only)
    if plan.archs:
        from mgc_ray.multi import run_multi_search

        run_multi_search(plan, spaces, manifest, res)
        return
    from mgc_ray.runner import run_search

    run_search(plan, spaces[0], manifest, res)


if __name__ == "__main__":
    run_cli(main)
