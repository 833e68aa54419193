"""`python -m mgc_ray.tune --arch densenet`: the search (or, with --paper, one paper trial).

Flow: data (demo, FMA root or cache) -> Ray (local with the dashboard on
127.0.0.1, or --address) -> prepare if needed -> Ray Datasets built once ->
MLflow experiment, paper reference run and search run -> Tuner (Optuna TPE +
ASHA) -> best and paper trials evaluated on the test split -> results/ and a
summary table against the paper's Table 1 row.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from mgc_ray.config import CACHE_SAMPLE_RATE, FMA_ROOT_ENV, HOME_ENV, PAPER, home
from mgc_ray.errors import UserError, run_cli

DASHBOARD_PORT = 8265  # Ray's default
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


def build_parser() -> argparse.ArgumentParser:
    from mgc_ray.models import list_models

    p = argparse.ArgumentParser(prog="python -m mgc_ray.tune", description=__doc__.split("\n")[0])
    p.add_argument("--arch", required=True, choices=list_models())
    data = p.add_mutually_exclusive_group()
    data.add_argument("--fma-root", help=f"FMA root (fma_metadata/, fma_<subset>/); or set ${FMA_ROOT_ENV}")
    data.add_argument("--cache", help="a prepared cache (python -m mgc_ray.prepare)")
    p.add_argument("--subset", default="small", choices=("small", "medium", "large"))
    p.add_argument("--split", choices=("paper", "official"),
                   help="paper: seeded 80/10/10 shuffle (default); official: FMA's set.split")
    p.add_argument("--num-samples", type=int, help="trials (default: 32 on FMA, 4 on the demo)")
    p.add_argument("--max-epochs", type=int, help="epochs per trial; ASHA's max_t (default 20; 4 on the demo)")
    p.add_argument("--grace-period", type=int, default=1, help="ASHA: epochs before a trial may be stopped")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: as resources allow)")
    p.add_argument("--gpus-per-trial", type=float, help="fractions share a GPU (default: 1 if the cluster has GPUs)")
    p.add_argument("--cpus-per-trial", type=float, help="default 1 (CPU only) or 2 (with a GPU)")
    p.add_argument("--address", help="join a running Ray cluster (e.g. 'auto' or HOST:6379)")
    p.add_argument("--dashboard-host", default="127.0.0.1", help="bind the Ray dashboard here (local Ray only)")
    p.add_argument("--no-dashboard", action="store_true", help="start local Ray without its dashboard")
    p.add_argument("--storage-path", help="Ray Tune's results (default: $MGC_HOME/ray_results)")
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


def _writable_dir(path: Path, flag: str) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{flag} {path} cannot be created ({exc.strerror}): choose a writable folder") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"{flag} {path} is not writable: choose a writable folder")
    return path


def resolve_data(args) -> tuple[str, str | None, str]:
    """Returns (cache dir, FMA root to prepare from or None, dataset name)."""
    from mgc_ray.cache import default_cache_dir
    from mgc_ray.demo import write_demo

    if args.cache:
        return str(Path(args.cache).resolve()), None, f"cache-{Path(args.cache).name}"
    root = args.fma_root or os.environ.get(FMA_ROOT_ENV)
    if root:
        root_p = Path(root).expanduser().resolve()
        if not root_p.is_dir():
            raise UserError(f"--fma-root {root} does not exist: point it at the folder holding fma_metadata/")
        cache = default_cache_dir(root_p, args.subset, args.split or "paper", args.seed, CACHE_SAMPLE_RATE)
        return cache, str(root_p), f"fma_{args.subset}"
    kind = "demo-smoke" if args.smoke else "demo"
    size = SMOKE_DEMO if args.smoke else DEMO
    base = _writable_dir(home() / kind, f"${HOME_ENV}")
    fma = base / "fma"
    if not (fma / "fma_metadata" / "tracks.csv").is_file():
        print(f"mgc_ray: no data given: writing the built-in demo dataset to {fma} "
              f"({size['tracks_per_genre']} tracks x 8 genres x {size['seconds']:g} s)", flush=True)
        write_demo(fma, seed=0, **size)
    else:
        print(f"mgc_ray: no data given: using the built-in demo dataset at {fma}", flush=True)
    return str(base / "cache"), str(fma), kind


def start_ray(args) -> None:
    import ray

    if args.address:
        ray.init(address=args.address, log_to_driver=True)
        print(f"mgc_ray: joined the Ray cluster at {args.address}", flush=True)
        return
    if args.dashboard_host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: the Ray dashboard will listen on {args.dashboard_host}: it has no authentication "
              "of its own beyond Ray's token; keep the port behind a firewall", file=sys.stderr)
    ctx = ray.init(include_dashboard=not args.no_dashboard, dashboard_host=args.dashboard_host,
                   dashboard_port=DASHBOARD_PORT, log_to_driver=True)
    if ctx.dashboard_url:
        print(f"mgc_ray: Ray dashboard at http://{ctx.dashboard_url} "
              "(token: `ray get-auth-token`)", flush=True)


def resources(args, n_train: int) -> tuple[float, float, int]:
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
    by_cpu = max(1, int((total.get("CPU", 1) - 1) // cpus))  # one CPU stays free for Ray Data
    by_gpu = int(total.get("GPU", 0) // gpus) if gpus else by_cpu
    return cpus, gpus, args.max_concurrent or max(1, min(by_cpu, by_gpu))


def _search_name(args, dataset: str, storage: Path) -> str:
    if args.experiment_name:
        return args.experiment_name
    prefix = f"{args.arch}-{dataset}{'-paper' if args.paper else ''}-"
    if args.resume:
        found = sorted((p for p in storage.glob(prefix + "*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
        if not found:
            raise UserError(f"--resume: no earlier search {prefix}* under {storage}: "
                            "give --experiment-name and --storage-path of the search to finish")
        return found[-1].name
    return prefix + time.strftime("%Y%m%d-%H%M%S")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_positive(args)
    from mgc_ray import search

    space = search.load_space(args.arch, args.space)
    storage = _writable_dir(Path(args.storage_path or home() / "ray_results").expanduser().resolve(),
                            "--storage-path")
    results_root = _writable_dir(Path(args.results_dir).expanduser().resolve(), "--results-dir")
    if args.mlflow_uri.startswith("sqlite:///"):
        _writable_dir(Path(args.mlflow_uri[len("sqlite:///"):]).expanduser().resolve().parent, "--mlflow-uri folder")
    cache, fma_root, dataset = resolve_data(args)
    name = _search_name(args, dataset, storage)
    defaults = SMOKE_SEARCH if args.smoke else (DEMO_SEARCH if dataset.startswith("demo") else FMA_SEARCH)
    plan = Plan(arch=args.arch, cache=cache, dataset=dataset, name=name, storage_path=str(storage),
                num_samples=1 if args.paper else (args.num_samples or defaults["num_samples"]),
                max_epochs=args.max_epochs or (defaults["max_epochs"] if not args.paper or args.smoke
                                               or dataset.startswith("demo") else PAPER[args.arch].epochs),
                seed=args.seed, paper_only=args.paper, smoke=args.smoke,
                grace_period=args.grace_period)
    if args.smoke:
        fixed = dict(SMOKE_INPUT) if args.paper else {**SMOKE_INPUT, "batch_size": SMOKE_BATCH}
        space = space.shrunk(fixed)

    start_ray(args)
    from mgc_ray.cache import check_cache
    from mgc_ray.runner import run_search

    if fma_root is not None:
        from mgc_ray.prepare import prepare

        prepare(fma_root, cache, subset=args.subset, split=args.split or "paper", seed=args.seed)
    manifest = check_cache(cache, sample_rate=CACHE_SAMPLE_RATE, split_scheme=args.split)
    run_search(plan, space, manifest, args=args, results_root=results_root)
    return 0


if __name__ == "__main__":
    run_cli(main)
