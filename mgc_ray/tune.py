"""`python -m mgc_ray.tune --arch densenet`: the search (or, with --paper, one paper trial).

Flow: every check that needs no Ray (flags, search space, folders, the MLflow
store and the Optuna storage (stores.py), metadata, an existing cache, --resume
state) -> Ray (local with the dashboard on
127.0.0.1, or --address) -> cluster checks (shared storage on several nodes,
GPUs and CPUs per trial) -> prepare if needed -> the search's name claimed
in every store it names (search/names.py) -> Ray Datasets built once ->
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

import dataclasses
import time
from pathlib import Path
from typing import Sequence

from mgc_ray import cluster
from mgc_ray.config import (
    CACHE_SAMPLE_RATE,
    FMA_ROOT_ENV,
    PAPER,
    ray_address,
)
from mgc_ray.errors import Parser, UserError, run_cli
from mgc_ray.files import check_free, free_bytes, is_disk_full, locked, sqlite_path, writable_dir
from mgc_ray.search import names
from mgc_ray.search import plan as P


def build_parser() -> Parser:
    p = Parser(prog="python -m mgc_ray.tune", description=__doc__.split("\n")[0])
    # The registered models that have the paper's settings (each one's reference run and
    # first trial); config.PAPER needs no torch import, so bad flags are refused in 0.3 s.
    p.add_argument(
        "--arch",
        required=True,
        type=P.arch_list,
        metavar="{" + ",".join(sorted(PAPER)) + "}[,...]|all",
        help="one arch, several (comma-separated) or all: one study over them, each arch with its own space",
    )
    data = p.add_mutually_exclusive_group()
    data.add_argument("--fma-root", help=f"FMA root (fma_metadata/, fma_<subset>/); or set ${FMA_ROOT_ENV}")
    data.add_argument("--cache", help="a prepared cache (python -m mgc_ray.prepare)")
    data.add_argument("--audio-dir", help="your own collection: a folder with one sub-folder of audio files per genre")
    data.add_argument("--csv", help="your own collection: a CSV of path,label[,split][,artist]")
    p.add_argument("--subset", default="small", choices=("small", "medium", "large"))
    p.add_argument(
        "--split",
        choices=("paper", "official", "artist", "given"),
        help="paper: seeded 80/10/10 shuffle (default); official: FMA's set.split; artist: each artist "
        "in one split (--csv with artists); given: the CSV's split column",
    )
    p.add_argument("--num-samples", type=int, help="trials (default: 32 on FMA, 4 on the demo)")
    p.add_argument("--max-epochs", type=int, help="epochs per trial; ASHA's max_t (default 20; 4 on the demo)")
    p.add_argument(
        "--grace-period",
        type=int,
        help="ASHA: epochs before a trial may be stopped (default: the fewest epochs in which the largest "
        "batch takes 100 steps and as many as the first trial's batch takes in one epoch, at most "
        "half of --max-epochs)",
    )
    p.add_argument(
        "--time-budget",
        type=P.duration,
        metavar="DURATION",
        help="wall time of the search (90s, 20m, 2h, 1h30m): once spent, no new trial starts and "
        "running trials stop at their next report; --resume continues the count (default: none; "
        f"the demo on a machine without a GPU ends the whole command within "
        f"{P.DEMO_DEADLINE_S / 60:g} min)",
    )
    p.add_argument(
        "--gpu-hours",
        type=float,
        metavar="H",
        help="GPU budget of the search (GPUs per trial x trial wall time, summed), stopping it the same way",
    )
    p.add_argument(
        "--ensemble",
        type=int,
        metavar="K",
        help=f"after the search, the K trials with the lowest validation loss are also evaluated as one "
        f"model (their mean probabilities) on the test split, beside the best trial; predict and evaluate "
        f"--search use it (default {P.ENSEMBLE}; 1: the best trial alone)",
    )
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: as resources allow)")
    p.add_argument(
        "--gpus-per-trial",
        type=float,
        help="at most 1; fractions share a GPU (default on GPU nodes: "
        "the share that holds the arch at the space's largest batch, e.g. 1/4 of an H200 for densenet)",
    )
    p.add_argument(
        "--cpus-per-trial",
        type=float,
        help="default 1 on CPU nodes; with GPUs, an equal part of the node's cores after a quarter "
        "goes to the trials' Ray Data reads (each trial also reserves its own reads' CPUs)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile each trial's model (GPU trials: faster steps after a compile of about a minute)",
    )
    p.add_argument(
        "--address",
        help="join a running Ray cluster (e.g. 'auto' or HOST:6379; default "
        "$RAY_ADDRESS, else a local Ray of this command's own)",
    )
    p.add_argument("--dashboard-host", default="127.0.0.1", help="bind the Ray dashboard here (local Ray only)")
    p.add_argument("--no-dashboard", action="store_true", help="start local Ray without its dashboard")
    p.add_argument(
        "--object-store-gb",
        type=float,
        help="a local Ray's object store size in GB (default Ray's: 30 %% of RAM, capped by /dev/shm); "
        "the cache is materialised in it when its decoded size is at most 30 %% of it",
    )
    p.add_argument(
        "--storage-path",
        help="Ray Tune's results: a folder or a URI such as s3://bucket/path (default: $MGC_HOME/ray_results)",
    )
    p.add_argument(
        "--shared-storage",
        action="store_true",
        help="the local --storage-path, the cache and --fma-root are on a filesystem every Ray node "
        "mounts at the same path (needed, and checked, on a cluster of several nodes)",
    )
    p.add_argument("--experiment-name", help="name of this search (default: <arch>-<dataset>-<time>)")
    p.add_argument(
        "--resume", action="store_true", help="finish an interrupted search (the newest, or --experiment-name)"
    )
    p.add_argument("--paper", action="store_true", help="one trial at the paper's exact settings")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="the search's seed: Optuna's sampler and the trials' random draws (default 0); the data stays the same",
    )
    p.add_argument(
        "--data-seed",
        type=int,
        default=0,
        help="the paper split's seed (default 0): which tracks "
        "are train, val and test; it names the cache, so it changes the test set",
    )
    p.add_argument("--mlflow-uri", default="sqlite:///mlflow.db")
    p.add_argument(
        "--optuna-storage",
        help="the search's Optuna study: an Optuna RDB URL such as "
        "sqlite:///optuna.db (default: optuna.db beside a sqlite --mlflow-uri, else in $MGC_HOME)",
    )
    p.add_argument(
        "--warm-start",
        help="NAME[,NAME...]: earlier searches (studies in the same Optuna storage) "
        "whose finished trials this search starts from",
    )
    p.add_argument("--results-dir", default="results", help="per-search tables and figures go under here")
    p.add_argument("--space", help="a search space YAML (default: search_spaces/<arch>.yaml)")
    p.add_argument("--smoke", action="store_true", help="tiny data, tiny inputs, 2 trials x 2 epochs (tests)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    started = time.monotonic()
    args = build_parser().parse_args(argv)
    archs = args.arch
    if len(archs) > 1 and (args.paper or args.space):
        raise UserError(
            "--paper and --space take one arch: give --arch NAME (a search over several archs "
            "uses each arch's own search_spaces/<arch>.yaml)"
        )
    args.arch = P.arch_label(archs)
    P.check_flags(args)
    P.check_dashboard_host(args)
    from mgc_ray.search.space import check_batches, load_space

    # 1. Everything that needs no Ray: most bad input costs a second, not a Ray start.
    spaces = [load_space(a, args.space) for a in archs]
    P.check_stores(args)  # read-only, before this command makes any folder
    storage = P.resolve_storage(args.storage_path)
    results_root = writable_dir(Path(args.results_dir).expanduser().resolve(), "--results-dir")
    if sqlite_path(args.mlflow_uri) is not None:
        writable_dir(sqlite_path(args.mlflow_uri).parent, "--mlflow-uri folder")
    cache, fma_root, dataset = P.resolve_data(args)
    folders = _folders(args, storage, results_root, cache, fma_root)
    for path, what in folders:
        check_free(path, what)
    name = P.search_name(args, dataset, storage)
    P.check_experiment(args, storage, name)
    optuna_storage, warm = P.resolve_study(args, name)
    if dataset.startswith("demo"):
        P.ensure_demo(args, fma_root)
    manifest, fma_dataset = P.check_data(args, cache, fma_root)
    plan = P.make_plan(args, archs, cache, dataset, name, storage, results_root, optuna_storage, warm)
    spaces = P.smoke_spaces(args, spaces)
    from mgc_ray.data.cache import check_cache
    from mgc_ray.prepare import prepare

    def prepared():
        from mgc_ray.data.collection import source_kind

        subset = source_kind(args.audio_dir) if (args.audio_dir or args.csv) else args.subset
        with locked(f"{cache}.lock"):  # searches started side by side prepare it once, in turn
            prepare(
                fma_root,
                cache,
                subset=subset,
                split=args.split or "paper",
                data_seed=args.data_seed,
                dataset=fma_dataset,
            )
        return check_cache(cache, sample_rate=CACHE_SAMPLE_RATE, split_scheme=args.split)

    if manifest is not None:
        if fma_root is not None:
            manifest = prepared()  # done already: confirms the cache holds these tracks, starts no Ray
        for space in spaces:
            check_batches(space, manifest.num_tracks["train"], plan.paper_only)

    claim = names.unclaimed(storage, name)
    try:
        try:
            # 2. Ray, then what needs the cluster, still before any expensive work.
            plan, manifest, res = _start(args, plan, spaces, storage, cache, fma_root, manifest, prepared, started)
            # 3. A new search's name, claimed in every store it names (NAME-2 if NAME is held in any).
            if not args.experiment_name and not args.resume:
                claim = names.claim(plan, archs)
                plan = dataclasses.replace(plan, name=claim.name)
            from mgc_ray.search.driver import run_search

            run_search(plan, spaces, manifest, res)
        except Exception as exc:
            _refuse_if_full(exc, folders, plan)
            raise
    except BaseException:
        claim.release()  # only what nothing has been written under yet
        raise
    return 0


def _folders(args, storage: str, results_root: Path, cache: str, fma_root: str | None) -> list[tuple[str, str]]:
    """(folder, how the user names it) for every local folder the search writes to."""
    from mgc_ray.data.cache import MANIFEST

    folders = P.search_folders(storage, str(results_root), args.mlflow_uri)
    if fma_root is not None and not Path(cache, MANIFEST).is_file():  # to be prepared (and the demo written)
        folders.append((str(Path(cache).parent), "the cache folder"))
    return folders


def _refuse_if_full(exc: Exception, folders: list[tuple[str, str]], plan: P.Plan) -> None:
    """A disk that filled during the search (Ray may report it as another error, e.g. a truncated
    pickle's EOFError): one line naming the fullest folder and how to go on, instead of a traceback."""
    if not folders:
        return
    free = {path: free_bytes(path) for path, _ in folders}
    path, what = min(folders, key=lambda f: free[f[0]])
    if not (is_disk_full(exc) or free[path] < MIN_FULL_BYTES):
        return
    raise UserError(
        f"{what} {path} is full ({free[path] / 2**20:.1f} MiB free; {type(exc).__name__}): free space "
        f"there, then finish the search with the same command and --resume --experiment-name "
        f"{plan.name}"
    ) from None


MIN_FULL_BYTES = 2**20  # a folder this close to full explains any error Ray reports


def _start(
    args, plan: P.Plan, spaces: list, storage: str, cache: str, fma_root: str | None, manifest, prepared, started: float
) -> tuple[P.Plan, object, cluster.TrialResources]:
    """Ray, the cluster's checks and resources, the cache if it is still to prepare.

    Args:
        started: time.monotonic() when the command started (the demo's budget counts from it).

    Returns:
        (the plan, with the demo's budget if it gets one; the cache's manifest; each trial's resources).
    """
    from mgc_ray.search.space import check_batches, largest_batch

    address = ray_address(args.address)
    store = int(args.object_store_gb * 1e9) if args.object_store_gb else None
    cluster.start_for_search(address, args.dashboard_host, dashboard=not args.no_dashboard, object_store_memory=store)
    cluster.check_cluster(storage, cache, fma_root if manifest is None else None, args.shared_storage)
    # the default GPU share fits the heaviest trial the search may start
    heaviest = max(spaces, key=lambda s: cluster.trial_memory_gib(s.arch, largest_batch(s, plan.paper_only)))
    res = cluster.resources(
        args.gpus_per_trial,
        args.cpus_per_trial,
        args.max_concurrent,
        arch=heaviest.arch,
        max_batch=largest_batch(heaviest, plan.paper_only),
        address=address,
    )
    if args.gpu_hours and not res.gpus:
        raise UserError(
            "--gpu-hours counts the trials' GPU time, but they get no GPU here (no GPU in the cluster, "
            "or --gpus-per-trial 0): use --time-budget instead"
        )
    plan = P.demo_budget(args, plan, res.gpus, started)
    if manifest is None:
        manifest = prepared()  # Ray tasks over the cluster
        for space in spaces:
            check_batches(space, manifest.num_tracks["train"], plan.paper_only)
    return plan, manifest, res


if __name__ == "__main__":
    run_cli(main)
