"""The GPU check's measuring parts (`benchmarks.gpu_check` runs them, in its plan's order and budgets).

Each part is `part(ctx, out)`: it fills the dict `out` with its figures as it goes and calls
`ctx.progress()` after each one it records (the report is written there), so whatever stops it
(an exception, its budget, a kill) leaves the figures it had.
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from benchmarks import _common as C
from benchmarks import gpu_env
from mgc_ray.config import CACHE_SAMPLE_RATE, PAPER

GENRES = 8
BATCHES = (32, 64, 128, 256)
SMOKE_BATCHES = (2, 4)
PACKS, SMOKE_PACKS = (1, 4), (1, 2)
PACK_WINDOW_S, SMOKE_PACK_WINDOW_S = 8.0, 1.0  # the common window the packed trials train over
FMA = dict(tracks=8000, seconds=30.0)  # FMA small: 8,000 clips of 30 s
SMOKE = dict(tracks=48, seconds=3.0)  # 38 training clips: one paper batch of 32
SMOKE_INPUT = dict(sample_rate=8000, window=256, n_mels=32, crop_seconds=1.0)
PARITY_BOUNDS_DB = (0.05, 1.0)  # median and max |dB| against librosa: tests/unit/test_features.py's bounds
END_GRACE_S = 15.0  # a subprocess is sent SIGTERM this long before its part's budget ends


class Deadline:
    """Seconds left in one part's budget."""

    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


@dataclass
class Context:
    """What every part gets: the device, the sizes (--smoke), folders, and the runner's hooks."""

    device: torch.device
    smoke: bool
    work: Path
    out: Path
    address: str | None = None
    fail_part: str | None = None
    deadline: Deadline = field(default_factory=lambda: Deadline(0))
    progress: Callable[[], None] = lambda: None

    def new_deadline(self, seconds: float) -> Deadline:
        return Deadline(seconds)

    def need_cuda(self) -> None:
        """A GPU part of a real run (not --smoke) stops with one line when torch sees no GPU."""
        if not self.smoke and self.device.type != "cuda":
            raise RuntimeError(f"torch sees no CUDA device (ran on {self.device}): see the env part")


def check_device(name: str) -> torch.device:
    """'cpu', 'cuda' or 'auto' (cuda when torch sees a GPU): never refused, the env part says why not."""
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def release_gpu() -> None:
    """Give back this process's cached GPU memory (the next part's trials need it)."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def error_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200] if lines else ''}"


# --- 1. the environment ---------------------------------------------------------------------
def env_part(ctx: Context, out: dict) -> None:
    gpu_env.run_checks(ctx.work, max(5.0, 0.9 * ctx.deadline.left() - 2), out, ctx.progress)
    for line in out["problems"]:
        print(f"env    {line}", flush=True)


# --- 2. training speed ----------------------------------------------------------------------
def _model(device: torch.device, channels_last: bool, smoke: bool):
    from mgc_ray.models import build_model
    from mgc_ray.trial.loop import make_optimizer, prepare_model

    kw = dict(SMOKE_INPUT) if smoke else dict(window=1976, n_mels=224, sample_rate=CACHE_SAMPLE_RATE)
    torch.manual_seed(0)
    model = prepare_model(build_model("densenet", **kw), device, channels_last=channels_last)
    opt = make_optimizer(model, PAPER["densenet"].train_config())
    n = int((kw.get("crop_seconds") or 10.0) * kw["sample_rate"])
    return model, opt, n


def _batch(device: torch.device, batch: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    wave = (0.3 * torch.randn(batch, n)).clamp(-1, 1).to(device)  # (B, N)
    return wave, torch.randint(0, GENRES, (batch,), device=device)  # (B,)


def step_speed(device: torch.device, batch: int, way: str, *, steps: int, warmup: int, smoke: bool) -> dict:
    """Samples/s of `train_epoch` at one batch size and way, after `warmup` steps."""
    from mgc_ray.trial.loop import train_epoch

    torch.backends.cudnn.benchmark = device.type == "cuda"
    model, opt, n = _model(device, way == "channels_last", smoke)
    data = _batch(device, batch, n)
    t0 = time.perf_counter()
    train_epoch(model, itertools.repeat(data, warmup), opt, device=device)
    warm_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    r = train_epoch(model, itertools.repeat(data, steps), opt, device=device)
    row = {"batch": batch, "way": way, "steps": steps, "warmup": warmup, "warmup_s": warm_s}
    row.update(samples_per_s=r["samples_per_s"], step_s=r["seconds"] / steps)
    if device.type == "cuda":
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def profile_step(device: torch.device, smoke: bool, steps: int = 3) -> list[dict]:
    """The top kernels (or CPU ops) of a batch-32 channels_last step, by self time."""
    from torch.profiler import ProfilerActivity, profile

    from mgc_ray.trial.loop import train_epoch

    model, opt, n = _model(device, True, smoke)
    data = _batch(device, 4 if smoke else 32, n)
    train_epoch(model, itertools.repeat(data, 2), opt, device=device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        train_epoch(model, itertools.repeat(data, steps), opt, device=device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = prof.key_averages()
    total = sum(getattr(e, key) for e in events) or 1
    top = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:12]
    return [
        {
            "name": e.key[:80],
            "calls": e.count // steps,
            "ms_per_step": getattr(e, key) / 1000 / steps,
            "share": getattr(e, key) / total,
        }
        for e in top
    ]


def speed_part(ctx: Context, out: dict) -> None:
    """Batch 32 eager and channels_last first (the figure the targets need), then the best batch."""
    ctx.need_cuda()
    batches = SMOKE_BATCHES if ctx.smoke else BATCHES
    steps, warmup = (1, 1) if ctx.smoke else (20, 5)
    first = batches[0]
    order = [(first, "eager"), (first, "channels_last")]
    order += [(b, "channels_last") for b in batches[1:]] + [(b, "eager") for b in batches[1:]]
    rows, skipped = out.setdefault("rows", []), out.setdefault("skipped", [])
    for batch, way in order:
        if ctx.deadline.left() < (25 if not rows else 8):  # the first row also starts CUDA
            skipped.append(f"{way} at batch {batch}")
            continue
        try:
            row = step_speed(ctx.device, batch, way, steps=steps, warmup=warmup, smoke=ctx.smoke)
        except (torch.OutOfMemoryError, RuntimeError) as exc:  # an OOM or a cuDNN error is a figure too
            row = {"batch": batch, "way": way, "error": error_line(exc)}
        release_gpu()
        rows.append(row)
        print(
            f"speed  batch {batch:4d} {way:14s} "
            + (f"{row['samples_per_s']:9.1f} samples/s" if "error" not in row else row["error"]),
            flush=True,
        )
        ctx.progress()
    ok = [r for r in rows if "samples_per_s" in r]
    out["best"] = max(ok, key=lambda r: r["samples_per_s"]) if ok else None
    if ctx.deadline.left() > 15:
        out["profile"] = profile_step(ctx.device, ctx.smoke)
        ctx.progress()
    else:
        skipped.append("the profile")


# --- 3. packed Tune trials --------------------------------------------------------------------
def packed_trial(config: dict) -> None:
    """A Ray Tune trial holding `share` of the GPU (capped at it by `trial_device`): DenseNet-121 at batch
    32 on a batch already on its device; after warming up it waits at a file barrier for the other trials
    of its pack, then trains for `window_s`, reporting (start, end, samples) about once a second."""
    from ray import tune

    from mgc_ray.trial.device import trial_device
    from mgc_ray.trial.loop import train_epoch

    td = trial_device(config["share"])
    device = torch.device(td.device)
    # by name: this function is shipped by value, and naming torch.backends.cudnn here would make
    # cloudpickle try (and fail) to pickle that module object itself
    setattr(importlib.import_module("torch.backends.cudnn"), "benchmark", device.type == "cuda")
    model, opt, n = _model(device, True, config["smoke"])
    data = _batch(device, 4 if config["smoke"] else 32, n)
    steps = 1 if config["smoke"] else 5  # per train_epoch call: one host read each
    t_warm = time.time()
    train_epoch(model, itertools.repeat(data, 3 * steps), opt, device=device)  # CUDA kernels, the cuDNN autotuner
    warm_s = time.time() - t_warm
    ready = Path(config["ready_dir"])
    (ready / f"{os.getpid()}").touch()
    waited = time.time()
    while len(list(ready.iterdir())) < config["k"] and time.time() - waited < config["barrier_s"]:
        time.sleep(0.01)
    info = {"device": td.name, "share": td.share, "memory_fraction": td.memory_fraction, "warmup_s": warm_s}
    info.update(barrier_s=time.time() - waited, together=len(list(ready.iterdir())) >= config["k"])
    end = time.time() + config["window_s"]
    while time.time() < end:
        t0, samples = time.time(), 0
        while time.time() - t0 < min(1.0, config["window_s"]):
            samples += train_epoch(model, itertools.repeat(data, steps), opt, device=device)["samples"]
        row = {"t0": t0, "t1": time.time(), "samples": samples, **info}
        if device.type == "cuda":
            row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        tune.report(row)


def read_results(experiment: Path) -> dict[str, list[dict]]:
    """Every trial's reported rows under a Tune experiment folder (its result.json files), by trial folder."""
    out = {}
    for result in sorted(experiment.glob("*/result.json")):
        out[result.parent.name] = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
    return out


def pack_figures(trials: dict[str, list[dict]]) -> dict:
    """Aggregate samples/s over the window every trial trained in (the overlap of their reports)."""
    spans = [(rows[0]["t0"], rows[-1]["t1"]) for rows in trials.values() if rows]
    if not spans:
        return {"aggregate_samples_per_s": None, "overlap_s": 0.0}
    lo, hi = max(s for s, _ in spans), min(e for _, e in spans)
    overlap = max(0.0, hi - lo)
    inside = 0.0
    for rows in trials.values():
        for r in rows:  # each report's samples, pro rata to the part of it inside the common window
            part = max(0.0, min(r["t1"], hi) - max(r["t0"], lo)) / max(r["t1"] - r["t0"], 1e-9)
            inside += r["samples"] * part
    per = [sum(r["samples"] for r in rows) / max(rows[-1]["t1"] - rows[0]["t0"], 1e-9) for rows in trials.values()]
    last = [rows[-1] for rows in trials.values() if rows]
    return {
        "aggregate_samples_per_s": inside / overlap if overlap > 0 else None,
        "overlap_s": overlap,
        "per_trial_samples_per_s": per,
        "started_together": all(r.get("together") for r in last),
        "warmup_s": [r.get("warmup_s") for r in last],
        "devices": sorted({r.get("device") for r in last}),
        "memory_fraction": last[0].get("memory_fraction") if last else None,
        "peak_memory_gib": [r.get("peak_memory_gib") for r in last],
    }


def packing_part(ctx: Context, out: dict) -> None:
    """One Tune run per pack size (1, then 4 trials) in one Ray session, each trial holding 1/4 of the GPU."""
    ctx.need_cuda()
    import ray
    from ray import tune

    packs = SMOKE_PACKS if ctx.smoke else PACKS
    window = SMOKE_PACK_WINDOW_S if ctx.smoke else PACK_WINDOW_S
    share = 1 / max(packs) if ctx.device.type == "cuda" else 0.0
    cores = C.cores_available()
    cpus = 0.5 if ctx.smoke else max(1, (cores - 1) // max(packs))
    out.update(share=share, cpus_per_trial=cpus, window_s=window, rows=[])
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers need not import benchmarks
    root = ctx.work / "packing"
    with C.ray_session(ctx.address, num_cpus=cores):
        for k in packs:
            if ctx.deadline.left() < window + 15:
                out["rows"].append({"trials": k, "skipped": "out of time"})
                continue
            ready = root / f"ready-{k}"
            ready.mkdir(parents=True, exist_ok=True)
            config = dict(share=share, smoke=ctx.smoke, window_s=window, ready_dir=str(ready), k=k)
            config["barrier_s"] = max(5.0, ctx.deadline.left() - window - 10)
            tuner = tune.Tuner(
                tune.with_resources(packed_trial, {"cpu": cpus, "gpu": share}),
                param_space=config,
                tune_config=tune.TuneConfig(num_samples=k, max_concurrent_trials=k),
                run_config=tune.RunConfig(name=f"pack-{k}", storage_path=str(root / "ray"), verbose=0),
            )
            grid = tuner.fit()
            row = {"trials": k, **pack_figures(read_results(root / "ray" / f"pack-{k}"))}
            row["errors"] = [error_line(e) for e in grid.errors]
            out["rows"].append(row)
            agg = row["aggregate_samples_per_s"]
            print(
                f"pack   {k} trial(s): "
                + (
                    f"{agg:9.1f} samples/s together over {row['overlap_s']:.1f} s"
                    if agg
                    else f"no common window {row['errors']}"
                ),
                flush=True,
            )
            ctx.progress()


# --- 4. a real trial's GPU wait -------------------------------------------------------------------
def run_bounded(cmd: list[str], seconds: float, log: Path, env: dict | None = None) -> tuple[int | None, str]:
    """Run `cmd` in its own process group for at most `seconds` (then SIGTERM to the group, SIGKILL 10 s
    later), its output appended to `log`; returns (exit code or None when stopped, the output's tail)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        f.write(f"$ {' '.join(cmd)}\n".encode())
        f.flush()
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        code = None
        try:
            code = p.wait(timeout=max(1.0, seconds))
        except subprocess.TimeoutExpired:
            f.write(f"\n[gpu_check: stopped after {seconds:.0f} s, the part's budget]\n".encode())
        finally:
            if code is None:  # out of time, or the part was stopped: end the command and all it started
                for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                    try:
                        os.killpg(p.pid, sig)
                        p.wait(timeout=wait)
                        break
                    except (ProcessLookupError, subprocess.TimeoutExpired):
                        continue
    return code, log.read_text(errors="replace")[-1500:]


def synthetic_cache(root: Path, tracks: int, seconds: float, workers: int, budget_s: float = 3600) -> Path:
    """An FMA-sized cache of int16 noise (the paper's 80/10/10 split, 8 genres), by `mgc_ray.synth_cache`."""
    cmd = [sys.executable, "-m", "mgc_ray.synth_cache", "--out", str(root), "--tracks", str(tracks)]
    cmd += ["--seconds", f"{seconds:g}", "--workers", str(workers)]
    code, tail = run_bounded(cmd, budget_s, root.parent / "synth_cache.log")
    if code is None:
        raise RuntimeError(f"writing the synthetic cache took more than {budget_s:.0f} s (the part's budget)")
    if code != 0:
        raise RuntimeError(f"synth_cache ended with {code}: {tail.strip().splitlines()[-1] if tail.strip() else ''}")
    return root


EPOCH_KEYS = ("epoch", "device", "time_this_iter_s")
EPOCH_PREFIXES = ("train/", "time/", "data/")  # the trial's own timing and data figures, whatever it adds


def trial_part(ctx: Context, out: dict) -> None:
    """Write the synthetic cache, run `python -m mgc_ray.tune --paper` on it, read its epochs."""
    ctx.need_cuda()
    size = SMOKE if ctx.smoke else FMA
    work = ctx.work / "trial"
    arch = "baseline_a_2d" if ctx.smoke else "densenet"
    out.update(arch=arch, tracks=size["tracks"], clip_seconds=size["seconds"])
    t0 = time.perf_counter()
    workers = max(1, C.cores_available() - 1)
    cache = synthetic_cache(work / "cache", size["tracks"], size["seconds"], workers, ctx.deadline.left() - 30)
    out["cache_write_s"] = time.perf_counter() - t0
    out["cache_gb"] = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) / 1e9
    ctx.progress()
    name = "gpu-check-trial"
    cmd = [sys.executable, "-m", "mgc_ray.tune", "--arch", arch, "--cache", str(cache), "--paper"]
    cmd += ["--max-epochs", "1" if ctx.smoke else "3", "--no-dashboard", "--experiment-name", name]
    cmd += ["--storage-path", str(work / "ray_results"), "--results-dir", str(work / "results")]
    cmd += ["--mlflow-uri", f"sqlite:///{work / 'mlflow.db'}"] + (["--smoke"] if ctx.smoke else [])
    out["command"] = " ".join(cmd)
    log = ctx.out / f"gpu_check_trial_{ctx.device.type}.log"
    log.unlink(missing_ok=True)
    t1 = time.perf_counter()
    try:
        rc, tail = run_bounded(
            cmd, ctx.deadline.left() - END_GRACE_S, log, {**os.environ, "MGC_HOME": str(work / "home")}
        )
    finally:  # stopped or not: the epochs it finished are figures
        out["run_s"] = time.perf_counter() - t1
        out["epochs"] = [
            {k: v for k, v in r.items() if k in EPOCH_KEYS or k.startswith(EPOCH_PREFIXES)}
            for rows in read_results(work / "ray_results" / name).values()
            for r in rows
        ]
    out.update(rc=rc, log=log.name, log_tail=tail if rc != 0 else "")
    waits = ", ".join(
        f"{100 * e['train/gpu_wait_share']:.1f} %" for e in out["epochs"] if e.get("train/gpu_wait_share") is not None
    )
    print(
        f"trial  {arch}: rc {rc}, {len(out['epochs'])} epoch(s)" + (f", GPU wait {waits}" if waits else ""), flush=True
    )
    if rc != 0:
        raise RuntimeError(f"mgc_ray.tune ended with {rc}: see {log.name} (its tail is in the report)")


# --- 5. the front end ------------------------------------------------------------------------------
def parity_clip(sr: int, seconds: float) -> np.ndarray:
    """A tone, a chirp and a little noise, with a silent first tenth (tests/unit/test_features.py's clip)."""
    rng = np.random.default_rng(0)
    t = np.arange(int(sr * seconds)) / sr
    y = 0.5 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * (sr / 8) * t * (1 + t / seconds))
    y = (y + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    y[: len(y) // 10] = 0.0
    return y


def frontend_part(ctx: Context, out: dict) -> None:
    """Parity with librosa on the device's FFT first, then clips/s against librosa on one core."""
    ctx.need_cuda()
    import librosa

    from mgc_ray.models.frontend import LogMel, PerInputZScore

    sr, window, mels, secs = (8000, 256, 32, 1.0) if ctx.smoke else (CACHE_SAMPLE_RATE, 1976, 224, 10.0)
    device = ctx.device
    # parity: the same clips through our LogMel on the device and through librosa (float32 in, as the paper)
    clips = np.stack(
        [parity_clip(sr, secs), (0.3 * np.random.default_rng(1).standard_normal(int(sr * secs))).astype(np.float32)]
    )
    logmel = LogMel(sr, window, mels).to(device)
    ours = logmel(torch.from_numpy(clips).to(device)).float().cpu().numpy()  # (2, n_mels, T)
    cpu = LogMel(sr, window, mels)(torch.from_numpy(clips)).numpy()
    ref = np.stack(
        [
            librosa.power_to_db(
                librosa.feature.melspectrogram(y=c, sr=sr, n_fft=window, hop_length=window // 2, n_mels=mels),
                ref=np.max,
            )
            for c in clips
        ]
    )
    diff = np.abs(ours - ref)
    out["parity"] = {
        "device": str(device),
        "clips": ["tone + chirp + noise", "white noise"],
        "median_db": float(np.median(diff)),
        "max_db": float(diff.max()),
        "max_db_vs_cpu": float(np.abs(ours - cpu).max()),
        "bounds_db": PARITY_BOUNDS_DB,
        "within": bool(np.median(diff) < PARITY_BOUNDS_DB[0] and diff.max() < PARITY_BOUNDS_DB[1]),
    }
    print(
        f"front  parity on {device}: median {out['parity']['median_db']:.4f} dB, max {out['parity']['max_db']:.4f} dB against librosa",
        flush=True,
    )
    ctx.progress()
    batch, cpu_clips = (4, 2) if ctx.smoke else (256, 16)
    x = (0.3 * torch.randn(batch, int(sr * secs))).clamp(-1, 1)
    fe = torch.nn.Sequential(LogMel(sr, window, mels), PerInputZScore()).to(device)
    xd = x.to(device)
    fe(xd)
    C.sync(device)
    reps = 2 if ctx.smoke else 20
    t0 = time.perf_counter()
    for _ in range(reps):
        fe(xd)
    C.sync(device)
    dev_rate = reps * batch / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(reps):
        fe(x.to(device, non_blocking=False))
    C.sync(device)
    with_copy = reps * batch / (time.perf_counter() - t0)
    host = x[:cpu_clips].numpy()
    with C.torch_threads(1):
        t0 = time.perf_counter()
        for c in host:  # the paper's way: one clip at a time on the CPU
            s = librosa.feature.melspectrogram(y=c, sr=sr, n_fft=window, hop_length=window // 2, n_mels=mels)
            db = librosa.power_to_db(s, ref=np.max)
            (db - db.mean()) / (db.std() + 1e-5)
        cpu_rate = len(host) / (time.perf_counter() - t0)
    out.update(device=str(device), batch=batch, clip_seconds=secs, clips_per_s=dev_rate)
    out.update(clips_per_s_with_copy=with_copy, librosa_clips_per_s_one_core=cpu_rate, librosa_clips=len(host))
    print(
        f"front  {dev_rate:9.1f} clips/s on {device.type} ({with_copy:.1f} with the copy from the host), {cpu_rate:.1f} clips/s per CPU core with librosa",
        flush=True,
    )
    ctx.progress()
