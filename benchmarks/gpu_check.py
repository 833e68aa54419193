"""One GPU check: does a DenseNet-121 trial keep one H100/H200 busy? (one 8-minute command, installs nothing)

    python -m benchmarks.gpu_check                # one CUDA GPU: writes gpu_check_cuda.{json,md} to --out
    python -m benchmarks.gpu_check --smoke        # the CPU, tiny sizes: checks the script (the tests run it)

The report goes to `--out`, else `$OUT` when set, else results/benchmarks/ (with --smoke and neither
given: a temporary folder). It is written, atomically, at the start and again after every part (and
after every row of the speed part), so a kill at any moment leaves every finished figure on disk.

Five parts, the most valuable first, each under its own time budget (`PLAN`: the budget and the
reason for it). An exception in a part is that part's error in the report (one line and where it was
raised); the part's figures so far stay, and the next part runs. A part that reaches its budget is
stopped there (a timer signal; subprocesses are ended with their whole process group) and reads
`stopped`. Time a part leaves unused goes to the parts after it, so the whole never exceeds the sum.
Where torch or numpy itself fails to import, the env part still runs (it needs neither) and every other
part carries that import error (`gpu_check_unknown.{json,md}`).

1. env: versions (numpy, numba, llvmlite, pyarrow, torch, ...) and where each is imported from, every
   import the project needs (numba compiling a function, pyarrow round-tripping an array, librosa's
   mel spectrogram), CUDA (device, capability, memory, a bf16 matmul and an FFT on it), /dev/shm, the
   work folder's free disk, in a subprocess (a crash is a figure too: the checks left run again).
2. speed: DenseNet-121 training samples/s at 224 x 224 (the paper's window 1976, 224 mels, 10-s crops at
   22,050 Hz; front end, bf16 autocast, cross-entropy, backward, fused Adam, the cuDNN autotuner) at
   batch 32, eager and channels_last, then channels_last and eager at 64, 128 and 256 (the best batch),
   with each one's peak GPU memory; then a `torch.profiler` view of a batch-32 step.
3. packing: real Ray Tune trials sharing the GPU, each holding (and capped at, by `device.trial_device`)
   1/4 of it: one trial, then four, each training DenseNet-121 at batch 32 on batches already on the
   GPU over a common window (a file barrier starts them together); aggregate samples/s.
4. trial: the share of time the GPU waits in a real trial: `python -m mgc_ray.tune --paper` on an
   FMA-sized synthetic cache (8,000 tracks x 30 s, written first), fed by Ray Data; the trial reports
   `train/gpu_wait_share` (CUDA events around every step) and its data wait per epoch.
5. frontend: log-mel + z-score on the GPU: parity against librosa (dB differences on a tone, chirp and
   noise clip) with the GPU's FFT, then clips/s against the paper's way, librosa per clip on one core.

Targets (one H200): >= 5,000 samples/s at the best batch and >= 2,500 at batch 32; 4 packed trials
>= 3x one trial; the GPU waits < 5 % of a trial's time; the GPU's front end within librosa's bounds.

`--fail-part NAME` is a test hook: it makes that part raise at its first recorded figure (or at its
end), so a test can check that the other parts' figures are still written and the failed part carries
its error.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from benchmarks import gpu_env
from mgc_ray.errors import Parser, UserError, run_cli
from mgc_ray.files import atomic_text

NAME = "gpu_check"
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results" / "benchmarks"
# What the one GPU command holds: the machine starts, extracts the xz bundle (< 60 MB, 30-60 s), then runs
# this; 8 minutes in all, so the parts get 6.5 minutes and the rest is margin.
COMMAND_S, EXTRACT_S = 480, 60


@dataclass(frozen=True)
class Part:
    """One part of the check: its function in `gpu_parts`, its budget on a GPU node and in --smoke, and why."""

    name: str
    budget_s: float
    smoke_budget_s: float  # on a shared CPU: only stops a hung part (the sizes keep it short)
    why: str


PLAN = (
    Part(
        "env",
        30,
        300,
        "one subprocess importing every library once (the first import from the bundle compiles its .pyc: "
        "ray, mlflow and librosa take the most), a bf16 matmul and an FFT on the GPU; ~10 s warm",
    ),
    Part(
        "speed",
        80,
        300,
        "CUDA start-up (~10 s), then 8 rows of model build + 5 warm-up steps (the cuDNN autotuner's first "
        "shapes) + 20 timed steps, ~5-8 s each at an H200's ~3,000 samples/s; the profile (~5 s) if 15 s "
        "are left",
    ),
    Part(
        "packing",
        100,
        600,
        "Ray start (~5 s), then two Tune runs (1 trial, then 4): worker start, CUDA context, model and "
        "autotuner warm-up ~15-25 s each, an 8-s common window, ~5 s to end the trials",
    ),
    Part(
        "trial",
        150,
        600,
        "writing the 8,000 x 30 s cache (11.3 GB: 120 s on 2 cores here, ~20-40 s with 15 writers), then "
        "`mgc_ray.tune --paper` for 3 epochs: Ray and Ray Data start (~15 s), 3 epochs of ~6 s with "
        "validation and checkpoint, test scoring; the search is ended 15 s before the budget",
    ),
    Part(
        "frontend",
        30,
        180,
        "librosa's import (numba) and parity on 2 clips (~3 s), 2 x 20 GPU batches of 256 10-s clips "
        "(~2 s), 16 clips through librosa on one core (~0.05 s each)",
    ),
)
PART_NAMES = tuple(p.name for p in PLAN)
PLAN_S = sum(p.budget_s for p in PLAN)  # 390 s: 6.5 minutes
assert PLAN_S + EXTRACT_S <= COMMAND_S - 30, "the plan must fit one command with margin"


class PartStopped(BaseException):
    """A part reached its budget (raised by the timer; a BaseException so no `except Exception` in the
    part or in a library swallows it)."""


class ForcedFailure(RuntimeError):
    """--fail-part's test failure."""


def where(exc: BaseException) -> str:
    """`path:line in function` of the innermost frame in this checkout (else the innermost of all)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.name != "_fire"]  # not the timer's own
    ours = [f for f in frames if f.filename.startswith(str(ROOT))] or frames
    if not ours:
        return "?"
    f = ours[-1]
    path = Path(f.filename)
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    return f"{shown}:{f.lineno} in {f.name}"


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


class _Timer:
    """Raise PartStopped in the main thread after `seconds` (SIGALRM); a no-op off the main thread."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.fired = seconds, False
        self.armed = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")

    def _fire(self, signum, frame):
        self.fired = True  # raised inside a C extension, PartStopped may come out as another error (SystemError)
        raise PartStopped(f"stopped at its budget ({self.seconds:.0f} s)")

    def __enter__(self):
        if self.armed:
            self.before = signal.signal(signal.SIGALRM, self._fire)
            signal.setitimer(signal.ITIMER_REAL, max(0.01, self.seconds))
        return self

    def __exit__(self, *exc):
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.before)
        return False


class Run:
    """The report being written, and where; `save()` writes it as it stands."""

    def __init__(self, report: dict, out: Path, write) -> None:
        self.report, self.out, self.write, self.t0 = report, out, write, time.perf_counter()

    def save(self) -> None:
        self.report["seconds"] = time.perf_counter() - self.t0
        try:
            self.write(self)
        except OSError as exc:  # an unwritable --out: the parts still run, their lines still print
            print(f"gpu_check: could not write the report to {self.out}: {exc}", flush=True)


def run_part(part: Part, fn, ctx, run: Run, seconds: float, release=lambda: None) -> float:
    """Run one part within `seconds`, its figures and status into the report; returns the seconds it took."""
    out: dict = {}
    entry = {"status": "running", "budget_s": round(seconds, 1), "figures": out}
    run.report["parts"][part.name] = entry
    forced = [ctx.fail_part == part.name]

    def progress() -> None:  # a part calls this after each figure it records
        run.save()
        if forced[0]:
            forced[0] = False
            raise ForcedFailure(f"forced by --fail-part {part.name} (a test hook)")

    ctx.deadline = ctx.new_deadline(seconds)
    ctx.progress = progress
    print(f"--- {part.name} (budget {seconds:.0f} s)", flush=True)
    t0 = time.perf_counter()
    timer = _Timer(seconds)
    try:
        with timer:
            fn(ctx, out)
            if forced[0]:
                progress()
        entry["status"] = "ok"
    except (Exception, PartStopped) as exc:  # noqa: BLE001 - a part's failure is its figure
        stopped = timer.fired or isinstance(exc, PartStopped)
        entry.update(status="stopped" if stopped else "failed", error=one_line(exc))
        if stopped and not isinstance(exc, PartStopped):
            entry["error"] = f"PartStopped: stopped at its budget ({seconds:.0f} s), raised as {entry['error']}"
        entry.update(where=where(exc), traceback="".join(traceback.format_exception(exc))[-3000:])
        print(f"{part.name}: {entry['status']}: {entry['error']} ({entry['where']})", flush=True)
    finally:
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        release()
        run.save()
    return entry["seconds"]


def build_parser() -> Parser:
    p = Parser(prog="python -m benchmarks.gpu_check", description=__doc__.strip().splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="every part tiny, on the CPU: checks the script, not the GPU")
    p.add_argument(
        "--out",
        type=Path,
        help=f"folder for the report (default: $OUT when set, else {RESULTS}; --smoke: a temporary one)",
    )
    p.add_argument("--work", type=Path, help="folder for the caches and searches (default: a temporary one, deleted)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: cuda when torch sees a GPU")
    p.add_argument("--address", help="join this running Ray cluster for the packed trials instead of a local one")
    p.add_argument(
        "--fail-part",
        choices=PART_NAMES,
        help="test hook: make this part raise at its first recorded figure (the others still run and write)",
    )
    return p


def out_folder(args) -> Path:
    """--out, else $OUT, else results/benchmarks/ (a new temporary folder for --smoke)."""
    if args.out is not None:
        return args.out
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"])
    return Path(tempfile.mkdtemp(prefix="mgc_gpu_check_smoke_")) if args.smoke else RESULTS


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and args.smoke:
        raise UserError("--smoke runs on the CPU: leave out --device cuda")
    out = out_folder(args)
    plan = [(part, part.smoke_budget_s if args.smoke else part.budget_s) for part in PLAN]
    report = {
        "name": NAME,
        "smoke": args.smoke,
        "plan": [{"part": part.name, "budget_s": s, "why": part.why} for part, s in plan],
        "parts": {part.name: {"status": "not run"} for part, _ in plan},
    }
    try:  # torch, numpy and the project: a node whose own torch or numpy is broken still gets its env part
        from benchmarks import _common as C
        from benchmarks import gpu_parts, gpu_report
    except Exception as exc:  # noqa: BLE001 - the report says what broke
        return without_torch(report, out, plan, exc)

    def write(run: Run) -> None:
        run.report["machine"]["load_avg_1min_at_end"] = C.load1()
        run.report["targets"] = gpu_report.targets(run.report)
        C.write_report(run.out, NAME, run.report, gpu_report.to_markdown(run.report))

    device = gpu_parts.check_device("cpu" if args.smoke else args.device)
    report["machine"] = C.machine(device)
    run = Run(report, out, write)
    run.save()
    print(f"gpu_check on {device}: the report is in {out}; the plan takes {sum(s for _, s in plan):.0f} s", flush=True)
    with C.work_dir(args.work) as work:
        ctx = gpu_parts.Context(device=device, smoke=args.smoke, work=work, out=out, address=args.address)
        ctx.fail_part = args.fail_part
        spare = 0.0  # seconds the parts before left unused: the later parts may use them
        for part, budget in plan:
            fn = getattr(gpu_parts, f"{part.name}_part")
            took = run_part(part, fn, ctx, run, budget + spare, gpu_parts.release_gpu)
            spare = max(0.0, budget + spare - took)
    return summary(report)


def summary(report: dict) -> int:
    """Print which parts failed; 1 if any did (the report holds every figure either way)."""
    bad = [f"{n} ({e['status']})" for n, e in report["parts"].items() if e["status"] != "ok"]
    print(f"gpu_check: {len(PLAN) - len(bad)} of {len(PLAN)} parts done" + (f"; not: {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


def without_torch(report: dict, out: Path, plan, exc: Exception) -> int:
    """The report of a node where the check's own imports fail: the env part, and that error for the rest."""
    report["machine"] = {"device": "unknown", "python": platform.python_version(), "platform": platform.platform()}
    line, at = one_line(exc), where(exc)
    stem = out / f"{NAME}_unknown"

    def write(run: Run) -> None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_text(stem.with_suffix(".json"), json.dumps(run.report, indent=1, default=str) + "\n")
        md = [f"# GPU check: the check's own imports failed: `{line}` at `{at}`", ""]
        md += [f"- {c['check']}: " + ("ok" if c["ok"] else f"**{c['error']}**") for c in _checks(run.report)]
        atomic_text(stem.with_suffix(".md"), "\n".join(md) + "\n")

    for part, _ in plan[1:]:
        report["parts"][part.name] = {"status": "failed", "error": line, "where": at, "seconds": 0}
    env, budget = plan[0]
    run = Run(report, out, write)
    with tempfile.TemporaryDirectory(prefix="mgc_gpu_check_") as work:
        check = lambda c, o: gpu_env.run_checks(c.work, 0.9 * budget - 2, o, c.progress)  # noqa: E731
        run_part(env, check, _Bare(Path(work)), run, budget)
    return summary(report)


def _checks(report: dict) -> list:
    return (report["parts"].get("env", {}).get("figures") or {}).get("checks", [])


class _Bare:
    """The context `run_part` needs, without torch."""

    fail_part = None

    def __init__(self, work: Path) -> None:
        self.work = work

    def new_deadline(self, seconds: float):
        return time.perf_counter() + seconds


if __name__ == "__main__":
    run_cli(main)
