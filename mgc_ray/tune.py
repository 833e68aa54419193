"""`python -m mgc_ray.tune --arch densenet`: the search (or, with --paper, one paper trial).

Flow: every check that needs no Ray (flags, search space, folders, metadata,
an existing cache, --resume state) -> Ray (local with the dashboard on
127.0.0.1, or --address) -> cluster checks (shared storage on several nodes,
GPUs and CPUs per trial) -> prepare if needed -> Ray Datasets built once ->
MLflow experiment, paper reference run and search run -> Tuner (Optuna TPE +
ASHA) -> best and paper trials evaluated on the test split -> results/ and a
summary table against the paper's Table 1 row. Bad input is refused in that
order, so most of it costs no Ray start-up.

On a cluster of several nodes every node must reach the same files: Tune's
--storage-path (a URI such as s3://bucket/path, or a folder every node mounts
at the same path, declared with --shared-storage) and the cache (and the FMA
root while preparing; a shared folder, --shared-storage). MLflow needs no such
thing: only this driver process writes to it (tracking.TrialLogger is a Tune
callback running here), so a sqlite URI is fine on any cluster.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Sequence

from mgc_ray.config import CACHE_SAMPLE_RATE, FMA_ROOT_ENV, HOME_ENV, PAPER, experiment_path, home, ray_address
from mgc_ray.errors import Parser, UserError, run_cli

DASHBOARD_PORT = 8265  # Ray's default; the next free one when another search or `ray start` holds it
DASHBOARD_PORTS_TRIED = 100
# The built-in demo: big enough that a 2D model learns it, small enough that the
# default densenet search finishes in minutes on 2 CPU cores (README figures).
DEMO = dict(tracks_per_genre=16, seconds=15.0)
DEMO_SEARCH = dict(num_samples=4, max_epochs=4)
FMA_SEARCH = dict(num_samples=32, max_epochs=20)  # 20 = the paper's epochs
# --smoke: tiny data and tiny inputs so a whole search runs in a test.
SMOKE_DEMO = dict(tracks_per_genre=6, seconds=4.0)
SMOKE_SEARCH = dict(num_samples=2, max_epochs=2)
SMOKE_INPUT = dict(window=512, n_mels=32, crop_seconds=2.0)  # 23 ms window, 32 mels, 2-s crops
SMOKE_BATCH = 8
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def build_parser() -> Parser:
    p = Parser(prog="python -m mgc_ray.tune", description=__doc__.split("\n")[0])
    # The registered models that have the paper's settings (each one's reference run and
    # first trial); config.PAPER needs no torch import, so bad flags are refused in 0.3 s.
    p.add_argument("--arch", required=True, choices=sorted(PAPER))
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
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: as resources allow)")
    p.add_argument("--gpus-per-trial", type=float, help="fractions share a GPU (default: 1 if the cluster has GPUs)")
    p.add_argument("--cpus-per-trial", type=float, help="default 1 (CPU only) or 2 (with a GPU)")
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mlflow-uri", default="sqlite:///mlflow.db")
    p.add_argument("--results-dir", default="results", help="per-search tables and figures go under here")
    p.add_argument("--space", help="a search space YAML (default: search_spaces/<arch>.yaml)")
    p.add_argument("--smoke", action="store_true", help="tiny data, tiny inputs, 2 trials x 2 epochs (tests)")
    return p


@dataclasses.dataclass(frozen=True)
class Plan:
    """What this invocation will do, resolved from the CLI and the data."""

    arch: str
    cache: str
    dataset: str
    name: str
    storage_path: str
    num_samples: int
    max_epochs: int
    seed: int
    paper_only: bool
    smoke: bool
    grace_period: int = 1


def _check_positive(args) -> None:
    for flag in ("num_samples", "max_epochs", "max_concurrent", "grace_period"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 1, got {v}")
    if args.gpus_per_trial is not None and args.gpus_per_trial < 0:
        raise UserError(f"--gpus-per-trial must be >= 0, got {args.gpus_per_trial}")
    if args.cpus_per_trial is not None and args.cpus_per_trial <= 0:
        raise UserError(f"--cpus-per-trial must be > 0, got {args.cpus_per_trial}")
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


def _writable_dir(path: Path, flag: str) -> Path:
    """Make `path` if needed and prove it writable with a file that is gone at once
    (os.access says yes to root even on a read-only mount)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{flag} {path} cannot be created ({exc.strerror}): choose a writable folder") from None
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UserError(f"{flag} {path} is not writable ({exc.strerror}): choose a writable folder") from None
    return path


def is_uri(path: str) -> bool:
    """s3://, gs://, ...: storage Ray Tune reaches through pyarrow, from every node."""
    return "://" in path


def resolve_storage(raw: str | None) -> str:
    """Tune's storage: a URI as given, else a local folder (made and checked writable)."""
    raw = raw or str(home() / "ray_results")
    if raw.startswith("file://"):
        raw = raw[len("file://"):]
    if is_uri(raw):
        return raw.rstrip("/")
    return str(_writable_dir(Path(raw).expanduser().resolve(), "--storage-path"))


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
        cache = default_cache_dir(source, kind, args.split or "paper", args.seed, CACHE_SAMPLE_RATE)
        _writable_dir(Path(cache).parent, "the cache folder")
        return cache, str(source), f"{kind}-{source.stem}"
    root = args.fma_root or os.environ.get(FMA_ROOT_ENV)
    if root:
        root_p = Path(root).expanduser().resolve()
        if not root_p.is_dir():
            raise UserError(f"--fma-root {root} does not exist: point it at the folder holding fma_metadata/")
        cache = default_cache_dir(root_p, args.subset, args.split or "paper", args.seed, CACHE_SAMPLE_RATE)
        _writable_dir(Path(cache).parent, "the cache folder")
        return cache, str(root_p), f"fma_{args.subset}"
    kind = "demo-smoke" if args.smoke else "demo"
    base = _writable_dir(home() / kind, f"${HOME_ENV}")
    return str(base / "cache"), str(base / "fma"), kind


def ensure_demo(args, fma_root: str) -> None:
    """Write the built-in demo dataset on first use (no data given)."""
    from mgc_ray.demo import write_demo

    size = SMOKE_DEMO if args.smoke else DEMO
    fma = Path(fma_root)
    if not (fma / "fma_metadata" / "tracks.csv").is_file():
        print(f"mgc_ray: no data given: writing the built-in demo dataset to {fma} "
              f"({size['tracks_per_genre']} tracks x 8 genres x {size['seconds']:g} s)", flush=True)
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

        dataset = collection.load(args.audio_dir and fma_root, args.csv and fma_root, args.split or "paper", args.seed)
    elif fma_root is not None:
        from mgc_ray.fma import SPLIT_SCHEMES, load_dataset

        if (args.split or "paper") not in SPLIT_SCHEMES:
            raise UserError(f"--split {args.split} is for a collection (--audio-dir or --csv); FMA takes "
                            f"{' or '.join(SPLIT_SCHEMES)}")
        dataset = load_dataset(fma_root, args.subset, args.split or "paper", args.seed)
    return manifest, dataset


def _sigterm_as_sigint(signum, frame) -> None:
    """Schedulers (SLURM, Kubernetes) stop jobs with SIGTERM: treat it as Ctrl+C, so Tune saves its
    state and the runs end KILLED, ready for --resume (Python's default would end at once)."""
    signal.raise_signal(signal.SIGINT)


def start_ray(args) -> None:
    import ray

    # Ray reports usage statistics to usage-stats.ray.io by default: nothing leaves the machine
    # unless the user asks (RAY_USAGE_STATS_ENABLED=1). Token authentication stays as ray.init
    # sets it (on, since Ray 2.52); turning it off is the user's call, and warned about.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        print("warning: RAY_AUTH_MODE=disabled turns off Ray's token authentication: anyone who reaches the "
              "cluster's ports can run code on it; unset it to keep the token", file=sys.stderr)
    address = ray_address(args.address)
    if address:
        ray.init(address=address, log_to_driver=True)
        signal.signal(signal.SIGTERM, _sigterm_as_sigint)  # after ray.init, which sets its own
        print(f"mgc_ray: joined the Ray cluster at {address}", flush=True)
        return
    if args.dashboard_host not in LOCAL_HOSTS:
        print(f"warning: the Ray dashboard will listen on {args.dashboard_host}: it has no authentication "
              "of its own beyond Ray's token; keep the port behind a firewall", file=sys.stderr)
    # "local": a Ray of this command's own. Without it ray.init joins whatever cluster
    # `ray start` (or a test's) last left running on this machine, flags ignored.
    port = DASHBOARD_PORT if args.no_dashboard else free_port(args.dashboard_host, DASHBOARD_PORT)
    store = int(args.object_store_gb * 1e9) if args.object_store_gb else None
    ctx = ray.init(address="local", include_dashboard=not args.no_dashboard, dashboard_host=args.dashboard_host,
                   dashboard_port=port, log_to_driver=True, object_store_memory=store)
    signal.signal(signal.SIGTERM, _sigterm_as_sigint)  # after ray.init, which sets its own
    if ctx.dashboard_url:
        print(f"mgc_ray: Ray dashboard at http://{ctx.dashboard_url} "
              "(token: `ray get-auth-token`)", flush=True)


def free_port(host: str, first: int) -> int:
    """`first`, or the next port `host` can bind (a busy dashboard port made ray.init fail)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for port in range(first, first + DASHBOARD_PORTS_TRIED):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue  # in use (the host itself was checked before Ray started)
            return port
    raise UserError(f"no free port for the Ray dashboard on {host} in {first}-{first + DASHBOARD_PORTS_TRIED - 1}: "
                    "stop an old search or `ray stop`, or pass --no-dashboard")


def resources(args) -> tuple[float, float, int]:
    """(cpus per trial, gpus per trial, max concurrent) from the cluster and the flags."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    node_gpus = max((n["Resources"].get("GPU", 0) for n in nodes), default=0)
    total = ray.cluster_resources()
    gpus = args.gpus_per_trial if args.gpus_per_trial is not None else (1.0 if node_gpus else 0.0)
    if gpus > node_gpus:
        raise UserError(f"--gpus-per-trial {gpus:g} is more than any node has ({node_gpus:g} GPUs): "
                        "ask for at most that, or a fraction to share a GPU")
    cpus = args.cpus_per_trial or (2.0 if gpus else 1.0)
    node_cpus = max((n["Resources"].get("CPU", 0) for n in nodes), default=0)
    if cpus > node_cpus - 1:
        raise UserError(f"--cpus-per-trial {cpus:g} leaves no CPU for Ray Data on the largest node "
                        f"({node_cpus:g} CPUs): ask for at most {max(node_cpus - 1, 0):g}")
    # One CPU per node stays free for Ray Data (SPEC 3: trials holding every CPU hang it).
    by_cpu = max(1, sum(int((n["Resources"].get("CPU", 0) - 1) // cpus) for n in nodes))
    by_gpu = int(total.get("GPU", 0) // gpus) if gpus else by_cpu
    return cpus, gpus, args.max_concurrent or max(1, min(by_cpu, by_gpu))


def check_cluster(args, storage: str, cache: str, fma_root: str | None) -> None:
    """On a cluster of several nodes, refuse storage only this machine can see.

    A URI --storage-path is reachable from every node; a local folder (and the cache,
    and the FMA root while preparing) only if it sits on a filesystem every node mounts
    at the same path, which --shared-storage declares and this checks: each node looks
    for a file the driver has just written there.
    """
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return
    local = ([] if is_uri(storage) else [f"--storage-path {storage}"]) + [f"the cache {cache}"]
    if fma_root:
        local.append(f"--fma-root {fma_root}")
    if not args.shared_storage:
        raise UserError(f"this Ray cluster has {len(nodes)} nodes but {', '.join(local)} may exist on this machine "
                        "only, and trials or tasks on other nodes must reach them: put them on a filesystem every "
                        "node mounts at the same path and add --shared-storage (--storage-path may instead be "
                        "a URI such as s3://bucket/path)")
    from mgc_ray.cache import MANIFEST

    token = f".mgc-shared-probe-{uuid.uuid4().hex[:12]}"
    writable = [] if is_uri(storage) else [storage]
    if fma_root:  # to be prepared: every node writes shards into it
        os.makedirs(cache, exist_ok=True)
        writable.append(cache)
    probes = [os.path.join(d, token) for d in writable]
    for path in probes:
        Path(path).write_text("mgc_ray: a node checks that it sees this file; deleted at once\n")
    wanted = probes + [os.path.join(fma_root, "fma_metadata", "tracks.csv") if fma_root
                       else os.path.join(cache, MANIFEST)]
    try:
        missing = _missing_on_nodes(nodes, wanted)
    finally:
        for path in probes:
            Path(path).unlink(missing_ok=True)
    for node, paths in missing.items():
        if paths:
            shown = os.path.dirname(paths[0]) if os.path.basename(paths[0]) == token else paths[0]
            raise UserError(f"--shared-storage: node {node} does not see {shown}: mount the same filesystem at the "
                            "same path on every node (or use a URI --storage-path for Tune's files)")
    print(f"mgc_ray: {len(nodes)} nodes see the shared storage", flush=True)


def _missing_on_nodes(nodes: list[dict], paths: list[str]) -> dict[str, list[str]]:
    """{node address: the paths it cannot see}, one zero-CPU task pinned to each node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0, max_retries=0)
    def missing(wanted: list[str]) -> list[str]:
        return [p for p in wanted if not os.path.exists(p)]

    refs = {n["NodeManagerAddress"] + " " + n["NodeID"][:8]: missing.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(paths) for n in nodes}
    return {node: ray.get(ref, timeout=300) for node, ref in refs.items()}


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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_positive(args)
    _check_dashboard_host(args)
    from mgc_ray import search

    # 1. Everything that needs no Ray: most bad input costs a second, not a Ray start.
    space = search.load_space(args.arch, args.space)
    storage = resolve_storage(args.storage_path)
    results_root = _writable_dir(Path(args.results_dir).expanduser().resolve(), "--results-dir")
    if args.mlflow_uri.startswith("sqlite:///"):
        _writable_dir(Path(args.mlflow_uri[len("sqlite:///"):]).expanduser().resolve().parent, "--mlflow-uri folder")
    cache, fma_root, dataset = resolve_data(args)
    name = _search_name(args, dataset, storage)
    _check_experiment(args, storage, name)
    if dataset.startswith("demo"):
        ensure_demo(args, fma_root)
    manifest, fma_dataset = check_data(args, cache, fma_root)
    defaults = SMOKE_SEARCH if args.smoke else (DEMO_SEARCH if dataset.startswith("demo") else FMA_SEARCH)
    plan = Plan(arch=args.arch, cache=cache, dataset=dataset, name=name, storage_path=storage,
                num_samples=1 if args.paper else (args.num_samples or defaults["num_samples"]),
                max_epochs=args.max_epochs or (defaults["max_epochs"] if not args.paper or args.smoke
                                               or dataset.startswith("demo") else PAPER[args.arch].epochs),
                seed=args.seed, paper_only=args.paper, smoke=args.smoke,
                grace_period=args.grace_period)
    if args.smoke:
        fixed = dict(SMOKE_INPUT) if args.paper else {**SMOKE_INPUT, "batch_size": SMOKE_BATCH}
        space = space.shrunk(fixed)
    from mgc_ray.cache import check_cache
    from mgc_ray.prepare import prepare

    def prepared() -> dict:
        from mgc_ray.collection import source_kind

        subset = source_kind(args.audio_dir) if (args.audio_dir or args.csv) else args.subset
        prepare(fma_root, cache, subset=subset, split=args.split or "paper", seed=args.seed,
                dataset=fma_dataset)
        return check_cache(cache, sample_rate=CACHE_SAMPLE_RATE, split_scheme=args.split)

    if manifest is not None:
        if fma_root is not None:
            manifest = prepared()  # done already: confirms the cache holds these tracks, starts no Ray
        search.check_batches(space, manifest, plan.paper_only)

    # 2. Ray, then what needs the cluster, still before any expensive work.
    start_ray(args)
    check_cluster(args, storage, cache, fma_root if manifest is None else None)
    res = resources(args)
    if manifest is None:
        manifest = prepared()  # Ray tasks over the cluster
        search.check_batches(space, manifest, plan.paper_only)
    from mgc_ray.runner import run_search

    run_search(plan, space, manifest, args=args, results_root=results_root, resources=res)
    return 0


if __name__ == "__main__":
    run_cli(main)
