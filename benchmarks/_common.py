"""What every benchmark script shares: machine facts, load-stamped timers, the demo data, reports.

Not a benchmark itself. Each benchmark (`python -m benchmarks.features`, `.pipeline`,
`.trial`, `.search`, `.scale`, ...) prints a short table and writes
`results/benchmarks/<name>_<device>.json` and `.md`; `python -m benchmarks.summary`
gathers their `targets` into `results/benchmarks/README.md`.

Every timed section records the 1-min load average at its start and end: the
development machine is shared (other engineers run tests on it), so a figure
taken under load is an upper bound on time (a lower bound on throughput).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch

from benchmarks.model_table import cpu_model  # the existing benchmark's CPU name reader
from mgc_ray.errors import Parser, UserError
from mgc_ray.files import atomic_text
from mgc_ray.results.markdown import table

RESULTS = Path(__file__).resolve().parent.parent / "results" / "benchmarks"
LIBRARIES = (
    "torch",
    "torchvision",
    "torchaudio",
    "ray",
    "librosa",
    "numpy",
    "scipy",
    "soundfile",
    "pyarrow",
    "optuna",
    "mlflow",
)
NO_GPU = "no GPU on this machine"  # what a CPU run says where a GPU figure would go
MET, NOT_MET, NOT_MEASURED = "met", "not met", "not measured here"
MEASURED = "measured (no target set)"  # a figure the issue asks for without a bar to clear
UNDER_LOAD = (
    "Timings were taken on a shared machine: the 1-min load average at the start and end of each "
    "measurement is shown beside it. Above the core count, other processes took CPU time from the "
    "benchmark, so such figures are upper bounds on time (lower bounds on throughput)."
)


# --- machine -------------------------------------------------------------------
def load1() -> float | None:
    """The 1-min load average (None where the OS has none)."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def cores_available() -> int:
    """CPUs this process may run on (the affinity mask; os.cpu_count() where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def gpu_name() -> str | None:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def machine(device: torch.device) -> dict:
    """CPU model and count, GPU (if any), library versions, threads and the load average now."""
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_available": cores_available(),
        "gpu": gpu_name(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "load_avg_1min_at_start": load1(),
    }


def machine_line(m: dict) -> str:
    v = m["versions"]
    libs = ", ".join(f"{k} {v[k]}" for k in LIBRARIES if v.get(k))
    gpu = f"GPU {m['gpu']} (CUDA {m['cuda']})" if m.get("gpu") else NO_GPU
    return (
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['cores_available']} available to this process), {gpu}; "
        f"torch using {m['torch_threads']} threads; Python {m['python']}, {m['platform']}; {libs}. "
        f"1-min load average at start {m['load_avg_1min_at_start']}, at end {m.get('load_avg_1min_at_end')}."
    )


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if there is a GPU else cpu; 'cuda' without a GPU is refused (exit 2)."""
    if name == "auto":
        from mgc_ray.trial.loop import pick_device

        return pick_device()
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device cuda: {NO_GPU} (torch sees no CUDA device); run with --device cpu, or on a GPU node")
    return torch.device(name)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so a timer stops when the work is done (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trial_cpus(device: torch.device) -> int:
    """CPUs a trial holds by default (`cluster.resources`: 1 on CPU, 2 with a GPU); Ray then sets
    OMP_NUM_THREADS to it, so torch in the trial runs that many threads."""
    return 2 if device.type == "cuda" else 1


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch with `n` intra-op threads inside the block (as in a Ray trial holding n CPUs)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- timing ----------------------------------------------------------------------
@dataclass
class Timed:
    """One measurement: wall seconds and the 1-min load average at its start and end."""

    seconds: float = 0.0
    load_start: float | None = None
    load_end: float | None = None

    def as_dict(self) -> dict:
        return {"seconds": self.seconds, "load_start": self.load_start, "load_end": self.load_end}


@contextlib.contextmanager
def timed(device: torch.device | None = None) -> Iterator[Timed]:
    """`with timed() as t: ...` fills t.seconds and the load average at both ends."""
    t = Timed(load_start=load1())
    start = time.perf_counter()
    try:
        yield t
    finally:
        if device is not None:
            sync(device)
        t.seconds = time.perf_counter() - start
        t.load_end = load1()


def rate(n: float, seconds: float) -> float:
    return n / seconds if seconds > 0 else math.inf


# --- command line and work folders ----------------------------------------------------
def parser(prog: str, doc: str, *, device: bool = True, ray: bool = True) -> Parser:
    p = Parser(prog=prog, description=doc.strip().splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes (seconds): checks the script, not the machine")
    p.add_argument(
        "--out", type=Path, help=f"folder for the .json/.md report (default {RESULTS}; with --smoke a temporary folder)"
    )
    p.add_argument(
        "--work",
        type=Path,
        help="folder for the demo data and caches (default: a temporary folder, "
        "deleted at the end); reuse it across runs to skip writing the demo again",
    )
    if device:
        p.add_argument(
            "--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: cuda when there is a GPU, else cpu"
        )
    if ray:
        p.add_argument("--address", help="join this running Ray cluster instead of starting a local one")
    return p


@contextlib.contextmanager
def work_dir(path: Path | None) -> Iterator[Path]:
    """The given folder (kept), or a temporary one deleted at the end."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path.resolve()
        return
    tmp = Path(tempfile.mkdtemp(prefix="mgc_bench_"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def out_dir(args) -> Path:
    if args.out is not None:
        return args.out
    if args.smoke:
        return Path(tempfile.mkdtemp(prefix="mgc_bench_smoke_"))
    return RESULTS


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """A local Ray (no dashboard; `num_cpus` logical CPUs) or the cluster at `address`; stopped at the end."""
    import logging

    import ray
    import ray.data  # noqa: F401  (configures its loggers on import: quieten them after)

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-dataset "execution finished" lines
    if ray.is_initialized():
        yield
        return
    from mgc_ray import cluster

    cluster.init(address, num_cpus=num_cpus, logging_level="WARNING", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


# --- the demo dataset ------------------------------------------------------------------
@dataclass
class DemoData:
    """A demo dataset in FMA's layout and its prepared cache."""

    root: str
    cache: str
    manifest: dict
    tracks: int
    write: Timed = field(default_factory=Timed)  # write_demo (about zero seconds when reused: it only checks)
    prepare: Timed = field(default_factory=Timed)  # prepare.prepare (zero seconds when reused)
    reused: bool = False

    def split_tracks(self, split: str) -> list[tuple[int, int, str]]:
        """(track_id, label, mp3 path) of one split's good tracks, in cache order."""
        import pyarrow.parquet as pq

        from mgc_ray.data.fma import audio_path

        out = []
        for shard in self.manifest.shard_paths(split):
            t = pq.read_table(shard, columns=["track_id", "label"])
            for tid, lab in zip(t.column("track_id").to_pylist(), t.column("label").to_pylist()):
                out.append((int(tid), int(lab), audio_path(self.root, int(tid), "small")))
        return out

    def cache_bytes(self) -> int:
        return sum(p.stat().st_size for p in Path(self.cache).rglob("*") if p.is_file())


def demo_data(work: Path, tracks_per_genre: int, seconds: float, address: str | None = None) -> DemoData:
    """Write (or reuse) a demo of `tracks_per_genre` x 8 genres x `seconds` under `work` and prepare its cache.

    `prepare` runs on the Ray of this process if there is one, else on the cluster at
    `address`, else on a local Ray started (before its timer) and stopped here.
    """
    from mgc_ray.data.cache import MANIFEST, read_manifest
    from mgc_ray.demo import write_demo
    from mgc_ray.prepare import prepare

    base = work / f"demo-{tracks_per_genre}x8x{seconds:g}s"
    root, cache = base / "fma", base / "cache"
    reused = (cache / MANIFEST).is_file()
    with timed() as tw:
        write_demo(root, tracks_per_genre=tracks_per_genre, seconds=seconds, seed=0)
    # Ray started before the timer, and ours (prepare's own ray.init() could join another process's cluster);
    # a finished cache needs none: prepare then only checks the shards
    with contextlib.nullcontext() if reused else ray_session(address):
        with contextlib.redirect_stdout(sys.stderr), timed() as tp:
            prepare(root, cache)
    manifest = read_manifest(cache)
    n = sum(manifest.num_tracks.values())
    return DemoData(str(root), str(cache), manifest, n, tw, tp, reused)


# --- reports ---------------------------------------------------------------------------
def target(name: str, goal: str, measured: str, status: str, note: str = "") -> dict:
    """One row of results/benchmarks/README.md: what was asked, what was measured, met or not."""
    if status not in (MET, NOT_MET, NOT_MEASURED, MEASURED):
        raise ValueError(f"status {status!r}")
    return {"target": name, "goal": goal, "measured": measured, "status": status, "note": note}


def title(heading: str, smoke: bool, what: str = "tiny sizes, not a measurement") -> str:
    """A report's first line; a smoke run says so in it, so no one quotes its figures."""
    return f"# {heading}" + (f" (SMOKE RUN: {what})" if smoke else "")


def md_table(headers: Sequence[str], rows: Iterable[Sequence[object]], align: str | None = None) -> list[str]:
    """`results.markdown.table`, its first column left and the others right-aligned unless told."""
    return table(headers, rows, align or "l" + "r" * (len(headers) - 1))


def print_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def write_report(out: Path, name: str, report: dict, markdown: Sequence[str]) -> tuple[Path, Path]:
    """Write `<name>_<device>.json` and `.md` atomically (stamping the end load average); return both paths."""
    report["machine"].setdefault("load_avg_1min_at_end", load1())  # a re-rendered report keeps its own
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{name}_{report['machine']['device'].split(':')[0]}"
    lines = list(markdown)
    lines += ["", UNDER_LOAD, "", machine_line(report["machine"]), ""]
    js, md = out / f"{stem}.json", out / f"{stem}.md"
    atomic_text(js, json.dumps(report, indent=1, default=_jsonable) + "\n")
    atomic_text(md, "\n".join(lines))
    print(f"wrote {md} and {js.name}")
    return js, md


def _jsonable(x):
    if isinstance(x, (Path, torch.device)):
        return str(x)
    if isinstance(x, Timed):
        return x.as_dict()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def fmt(x: float, digits: int = 3) -> str:
    """A number for a table: 3 significant figures, thousands separated."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"
