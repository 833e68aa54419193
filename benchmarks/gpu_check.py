"""One GPU check: does a DenseNet-121 trial keep one H100/H200 busy? (<= 8 minutes, installs nothing)

    python -m benchmarks.gpu_check           # one CUDA GPU: writes results/benchmarks/gpu_check_cuda.{json,md}
    python -m benchmarks.gpu_check --smoke   # the CPU, tiny sizes: checks the script (the tests run it)

Four parts, each with its own share of the time budget (a part that runs out of
time says what it skipped):

1. DenseNet-121 training samples/s at 224 x 224 (the paper's window 1976, 224
   mels, 10-s crops at 22,050 Hz; front end, bf16 autocast, cross-entropy,
   backward, fused Adam, the cuDNN autotuner), at batch 32, 64, 128 and 256,
   three ways: eager (NCHW), channels_last, and compiled (`torch.compile`,
   channels_last), with each way's peak GPU memory; then a short
   `torch.profiler` view of a batch-32 step (where the time goes when a target
   is missed).
2. The share of time the GPU waits in a real Ray Tune trial: `python -m
   mgc_ray.tune --paper` on an FMA-sized synthetic cache (8,000 tracks x 30 s of
   int16 noise in the prepare layout), fed by Ray Data; the trial reports
   `train/gpu_wait_share` itself (CUDA events around every step: the part of
   the epoch the GPU spent outside the steps).
3. Packed trials: eight Ray actors each holding 1/8 of the GPU (and capped at
   it by `device.trial_device`), warmed up once; then 1, 2, 4 and 8 of them
   train DenseNet-121 at batch 32 over the same wall-clock window; aggregate
   samples/s.
4. The front end: log-mel + z-score of a batch on the GPU against the paper's way,
   librosa per clip on one CPU core.

Targets (one H200): >= 5,000 samples/s at the best batch and >= 2,500 at batch 32;
the GPU waits < 5 % of a trial's time; 4 packed trials >= 3x one trial.
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from benchmarks import _common as C
from mgc_ray.config import CACHE_SAMPLE_RATE, PAPER
from mgc_ray.errors import run_cli

NAME = "gpu_check"
BUDGET_S = {"speed": 160, "trial": 190, "packing": 80, "frontend": 15}  # 445 s of the 8 minutes; start-up aside
# --smoke runs on a CPU that may be shared: its budgets only stop a hung part (the sizes keep it short)
SMOKE_BUDGET_S = {"speed": 600, "trial": 900, "packing": 600, "frontend": 300}
BATCHES = (32, 64, 128, 256)
WAYS = ("eager", "channels_last", "compiled")
PACKS = (1, 2, 4, 8)
TARGET_BEST, TARGET_32, TARGET_WAIT, TARGET_PACK4 = 5000, 2500, 0.05, 3.0
FMA = dict(tracks=8000, seconds=30.0)  # FMA small: 8,000 clips of 30 s
SMOKE = dict(tracks=48, seconds=3.0)  # 38 training clips: one paper batch of 32
SMOKE_INPUT = dict(sample_rate=8000, window=256, n_mels=32, crop_seconds=1.0)
GENRES = 8


class Deadline:
    """Seconds left in one part's budget."""

    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


# --- 1. training speed ----------------------------------------------------------------
def _model(device: torch.device, way: str, smoke: bool):
    from mgc_ray.models import build_model
    from mgc_ray.trial.loop import compiled, make_optimizer, prepare_model

    kw = dict(SMOKE_INPUT) if smoke else dict(window=1976, n_mels=224, sample_rate=CACHE_SAMPLE_RATE)
    torch.manual_seed(0)
    model = prepare_model(build_model("densenet", **kw), device, channels_last=way != "eager")
    opt = make_optimizer(model, PAPER["densenet"].train_config())
    n = int((kw.get("crop_seconds") or 10.0) * kw["sample_rate"])
    return model, compiled(model, way == "compiled"), opt, n


def step_speed(device: torch.device, batch: int, way: str, *, steps: int, warmup: int, smoke: bool) -> dict:
    """Samples/s of `train_epoch` at one batch size and way, after `warmup` steps (compiles there)."""
    from mgc_ray.trial.loop import train_epoch

    torch.backends.cudnn.benchmark = device.type == "cuda"
    model, net, opt, n = _model(device, way, smoke)
    wave = (0.3 * torch.randn(batch, n)).clamp(-1, 1).to(device)  # (B, N)
    label = torch.randint(0, GENRES, (batch,), device=device)  # (B,)
    t0 = time.perf_counter()
    train_epoch(net, itertools.repeat((wave, label), warmup), opt, device=device)
    warm_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    r = train_epoch(net, itertools.repeat((wave, label), steps), opt, device=device)
    out = {
        "batch": batch,
        "way": way,
        "steps": steps,
        "warmup": warmup,
        "warmup_s": warm_s,
        "samples_per_s": r["samples_per_s"],
        "step_s": r["seconds"] / steps,
    }
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def profile_step(device: torch.device, smoke: bool, steps: int = 3) -> list[dict]:
    """The top kernels (or CPU ops) of a batch-32 channels_last step, by self time."""
    from torch.profiler import ProfilerActivity, profile

    from mgc_ray.trial.loop import train_epoch

    model, net, opt, n = _model(device, "channels_last", smoke)
    batch = 4 if smoke else 32
    wave = (0.3 * torch.randn(batch, n)).clamp(-1, 1).to(device)
    label = torch.randint(0, GENRES, (batch,), device=device)
    train_epoch(net, itertools.repeat((wave, label), 2), opt, device=device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        train_epoch(net, itertools.repeat((wave, label), steps), opt, device=device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    rows = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)[:12]
    total = sum(getattr(e, key) for e in prof.key_averages()) or 1
    return [
        {
            "name": e.key[:80],
            "calls": e.count // steps,
            "ms_per_step": getattr(e, key) / 1000 / steps,
            "share": getattr(e, key) / total,
        }
        for e in rows
    ]


def speed_part(device: torch.device, smoke: bool, deadline: Deadline) -> dict:
    batches = (2, 4) if smoke else BATCHES
    ways = ("eager", "channels_last") if smoke else WAYS
    steps, warmup = (1, 1) if smoke else (20, 5)
    rows, skipped = [], []
    # eager and channels_last first (seconds each); then compiled, batch 32 first (a compile each)
    order = [(b, w) for w in ways if w != "compiled" for b in batches] + [
        (b, "compiled") for b in sorted(batches, key=lambda b: (b != 32, b)) if "compiled" in ways
    ]
    for batch, way in order:
        need = 60 if way == "compiled" else 5
        if deadline.left() < need:
            skipped.append(f"{way} at batch {batch}")
            continue
        try:
            r = step_speed(device, batch, way, steps=steps, warmup=warmup if way != "compiled" else 3, smoke=smoke)
        except Exception as exc:  # noqa: BLE001 - an OOM or a compiler error is a figure too
            r = {"batch": batch, "way": way, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(r)
        print(
            f"speed  batch {batch:4d} {way:14s} "
            + (f"{r['samples_per_s']:9.1f} samples/s" if "error" not in r else r["error"]),
            flush=True,
        )
    prof = profile_step(device, smoke) if deadline.left() > 10 else []
    return {"rows": rows, "skipped": skipped, "profile": prof}


# --- 2. a real trial's GPU wait -----------------------------------------------------------
def synthetic_cache(root: Path, tracks: int, seconds: float, workers: int) -> Path:
    """An FMA-sized cache of int16 noise (the paper's 80/10/10 split, 8 genres), by `mgc_ray.synth_cache`."""
    from mgc_ray.synth_cache import synthetic_dataset, write_synthetic_cache

    write_synthetic_cache(root, synthetic_dataset(tracks), seconds, workers=workers)
    return root


def trial_part(work: Path, smoke: bool, deadline: Deadline) -> dict:
    """Prepare the synthetic cache, run `python -m mgc_ray.tune --paper` on it, read its epochs."""
    size = SMOKE if smoke else FMA
    t0 = time.perf_counter()
    cache = synthetic_cache(work / "cache", size["tracks"], size["seconds"], workers=max(1, C.cores_available() - 1))
    write_s = time.perf_counter() - t0
    arch = "baseline_a_2d" if smoke else "densenet"
    name = "gpu-check-trial"
    cmd = [
        sys.executable,
        "-m",
        "mgc_ray.tune",
        "--arch",
        arch,
        "--cache",
        str(cache),
        "--paper",
        "--max-epochs",
        "1" if smoke else "3",
        "--no-dashboard",
        "--experiment-name",
        name,
        "--storage-path",
        str(work / "ray_results"),
        "--results-dir",
        str(work / "results"),
        "--mlflow-uri",
        f"sqlite:///{work / 'mlflow.db'}",
    ] + (["--smoke"] if smoke else [])
    env = {**os.environ, "MGC_HOME": str(work / "home")}
    left = max(30.0, deadline.left())
    t1 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=left)
        rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-1500:]
    except subprocess.TimeoutExpired as exc:
        rc, tail = None, f"stopped after {left:.0f} s (the part's budget)\n" + str(exc.stdout or "")[-1000:]
    run_s = time.perf_counter() - t1
    epochs = []
    for result in sorted((work / "ray_results" / name).glob("*/result.json")):
        for line in result.read_text().splitlines():
            r = json.loads(line)
            epochs.append(
                {
                    k: r.get(k)
                    for k in (
                        "epoch",
                        "train/gpu_wait_share",
                        "train/data_wait_s",
                        "train/samples_per_s",
                        "device",
                        "time_this_iter_s",
                    )
                }
            )
    print(
        f"trial  {arch}: rc {rc}, {len(epochs)} epoch(s) "
        + ", ".join(
            f"GPU wait {100 * e['train/gpu_wait_share']:.1f} %"
            for e in epochs
            if e.get("train/gpu_wait_share") is not None
        ),
        flush=True,
    )
    return {
        "arch": arch,
        "tracks": size["tracks"],
        "clip_seconds": size["seconds"],
        "cache_write_s": write_s,
        "run_s": run_s,
        "rc": rc,
        "epochs": epochs,
        "log_tail": tail if rc != 0 else "",
        "command": " ".join(cmd),
    }


# --- 3. packed trials ---------------------------------------------------------------------
class PackedTrial:
    """A Ray actor holding 1/8 of the GPU (capped at it by `device.trial_device`), warmed up once:
    DenseNet-121 at batch 32, trained from `start_at` for `seconds` on each call."""

    def __init__(self, share: float, smoke: bool) -> None:
        from mgc_ray.trial.device import trial_device
        from mgc_ray.trial.loop import train_epoch

        self.td = trial_device(share)
        self.device = torch.device(self.td.device)
        # by name: this class is shipped by value, and naming torch.backends.cudnn here would make
        # cloudpickle try (and fail) to pickle that module object itself
        setattr(importlib.import_module("torch.backends.cudnn"), "benchmark", self.device.type == "cuda")
        _, self.net, self.opt, n = _model(self.device, "channels_last", smoke)
        batch = 4 if smoke else 32
        self.data = (
            (0.3 * torch.randn(batch, n)).clamp(-1, 1).to(self.device),
            torch.randint(0, GENRES, (batch,), device=self.device),
        )
        train_epoch(self.net, itertools.repeat(self.data, 3), self.opt, device=self.device)  # cuDNN autotuner
        self.train_epoch = train_epoch

    def ready(self) -> str:
        return self.td.name

    def run(self, start_at: float, seconds: float) -> dict:
        late = time.time() - start_at
        time.sleep(max(0.0, start_at - time.time()))
        t0, samples = time.time(), 0
        while time.time() - t0 < seconds:
            samples += self.train_epoch(self.net, itertools.repeat(self.data, 5), self.opt, device=self.device)[
                "samples"
            ]
        t1 = time.time()
        out = {
            "device": self.td.name,
            "share": self.td.share,
            "memory_fraction": self.td.memory_fraction,
            "start": t0,
            "end": t1,
            "late_s": max(0.0, late),
            "samples_per_s": samples / max(t1 - t0, 1e-9),
        }
        if self.device.type == "cuda":
            out["peak_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return out


def packing_part(smoke: bool, deadline: Deadline, address: str | None) -> dict:
    """max(PACKS) actors start and warm up once; then 1, 2, 4, 8 of them train over the same window."""
    import ray

    packs = (1, 2) if smoke else PACKS
    seconds = 1.0 if smoke else 8.0
    gpu = not smoke and torch.cuda.is_available()
    share = 1 / max(packs) if gpu else 0.0
    rows = []
    if __name__ != "__main__":  # imported (the tests): workers cannot import this script, so ship it by value
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with C.ray_session(address, num_cpus=C.cores_available()):
        cpus = 0.5 if smoke else max(1, (C.cores_available() - 1) // max(packs))
        actor = ray.remote(num_cpus=cpus, num_gpus=share)(PackedTrial)
        trials = [actor.remote(share, smoke) for _ in range(max(packs))]
        try:
            ray.get([t.ready.remote() for t in trials], timeout=max(10.0, deadline.left()))  # all warmed up
        except Exception as exc:  # noqa: BLE001 - an OOM while packing is the figure
            return {
                "rows": [
                    {"trials": k, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"} for k in packs
                ],
                "share": share,
            }
        for k in packs:
            if deadline.left() < seconds + 5:
                rows.append({"trials": k, "skipped": "out of time"})
                continue
            start_at = time.time() + 2
            got = ray.get([t.run.remote(start_at, seconds) for t in trials[:k]], timeout=max(10.0, deadline.left()))
            overlap = max(0.0, min(g["end"] for g in got) - max(g["start"] for g in got))
            rows.append(
                {
                    "trials": k,
                    "aggregate_samples_per_s": sum(g["samples_per_s"] for g in got),
                    "per_trial": got,
                    "overlap_s": overlap,
                    "window_s": seconds,
                }
            )
            print(
                f"pack   {k} trial(s): {rows[-1]['aggregate_samples_per_s']:9.1f} samples/s together "
                f"(all ran together for {overlap:.1f} of {seconds:g} s)",
                flush=True,
            )
        for t in trials:
            ray.kill(t)
    return {"rows": rows, "share": share}


# --- 4. the front end ---------------------------------------------------------------------
def frontend_part(device: torch.device, smoke: bool) -> dict:
    import librosa

    from mgc_ray.models.frontend import LogMel, PerInputZScore

    sr, window, mels, secs = (8000, 256, 32, 1.0) if smoke else (CACHE_SAMPLE_RATE, 1976, 224, 10.0)
    batch, cpu_clips = (4, 2) if smoke else (256, 16)
    x = (0.3 * torch.randn(batch, int(sr * secs))).clamp(-1, 1)
    fe = torch.nn.Sequential(LogMel(sr, window, mels), PerInputZScore()).to(device)
    xd = x.to(device)
    fe(xd)
    C.sync(device)
    reps = 2 if smoke else 20
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
    clips = x[:cpu_clips].numpy()
    with C.torch_threads(1):
        t0 = time.perf_counter()
        for c in clips:  # the paper's way: one clip at a time on the CPU
            s = librosa.feature.melspectrogram(y=c, sr=sr, n_fft=window, hop_length=window // 2, n_mels=mels)
            db = librosa.power_to_db(s, ref=np.max)
            (db - db.mean()) / (db.std() + 1e-5)
        cpu_rate = len(clips) / (time.perf_counter() - t0)
    print(
        f"front  {dev_rate:9.1f} clips/s on {device.type} ({with_copy:.1f} with the copy from the host), "
        f"{cpu_rate:.1f} clips/s per CPU core with librosa",
        flush=True,
    )
    return {
        "device": str(device),
        "batch": batch,
        "clip_seconds": secs,
        "clips_per_s": dev_rate,
        "clips_per_s_with_copy": with_copy,
        "librosa_clips_per_s_one_core": cpu_rate,
        "librosa_clips": len(clips),
    }


# --- report -------------------------------------------------------------------------------
def targets(report: dict) -> list[dict]:
    cuda = report["machine"]["device"].startswith("cuda")
    gpu = report["machine"].get("gpu") or C.NO_GPU
    ok = [r for r in report["speed"]["rows"] if "samples_per_s" in r]
    out = []
    best = max(ok, key=lambda r: r["samples_per_s"], default=None)
    b32 = max((r for r in ok if r["batch"] == 32), key=lambda r: r["samples_per_s"], default=None)
    wait = [
        e["train/gpu_wait_share"] for e in report["trial"]["epochs"][1:] if e.get("train/gpu_wait_share") is not None
    ]
    packs = {r["trials"]: r.get("aggregate_samples_per_s") for r in report["packing"]["rows"]}
    items = [
        (
            "gpu_check: DenseNet-121 at its best batch, one H200",
            f">= {TARGET_BEST:,} samples/s",
            best and best["samples_per_s"],
            TARGET_BEST,
            best and f"{best['samples_per_s']:,.0f} samples/s (batch {best['batch']}, {best['way']}) on {gpu}",
        ),
        (
            "gpu_check: DenseNet-121 at batch 32, one H200",
            f">= {TARGET_32:,} samples/s",
            b32 and b32["samples_per_s"],
            TARGET_32,
            b32 and f"{b32['samples_per_s']:,.0f} samples/s ({b32['way']}) on {gpu}",
        ),
    ]
    for name, goal, value, bar, text in items:
        status = (C.MET if value >= bar else C.NOT_MET) if cuda and value is not None else C.NOT_MEASURED
        out.append(
            C.target(
                name,
                goal,
                text if cuda and text else C.NO_GPU,
                status,
                "" if cuda else "run python -m benchmarks.gpu_check on a GPU node",
            )
        )
    w = max(wait) if wait else None
    out.append(
        C.target(
            "gpu_check: GPU waiting for data in a Ray Tune trial",
            f"< {100 * TARGET_WAIT:g} %",
            f"{100 * w:.1f} % (worst epoch after the first)" if cuda and w is not None else C.NO_GPU,
            (C.MET if w < TARGET_WAIT else C.NOT_MET) if cuda and w is not None else C.NOT_MEASURED,
        )
    )
    ratio = packs[4] / packs[1] if cuda and packs.get(4) and packs.get(1) else None
    out.append(
        C.target(
            "gpu_check: 4 packed DenseNet trials vs one",
            f">= {TARGET_PACK4:g}x",
            f"{ratio:.2f}x" if ratio else C.NO_GPU,
            (C.MET if ratio >= TARGET_PACK4 else C.NOT_MET) if ratio else C.NOT_MEASURED,
        )
    )
    return out


def to_markdown(report: dict) -> list[str]:
    dev = report["machine"]["device"]
    lines = [
        C.title(
            "GPU check: DenseNet-121 trials on one GPU", report["smoke"], "tiny sizes on the CPU, not a measurement"
        ),
        "",
        f"Written by `python -m benchmarks.gpu_check` on {dev} ({report['machine'].get('gpu') or C.NO_GPU}) in "
        f"{report['seconds']:.0f} s. See the script's docstring for what each part runs.",
        "",
        "## 1. Training samples/s (bf16 autocast, fused Adam, cuDNN autotuner)",
        "",
    ]
    rows = report["speed"]["rows"]
    lines += C.md_table(
        ["batch", "way", "samples/s", "s / step", "warm-up s", "peak GiB"],
        [
            [
                r["batch"],
                r["way"],
                f"**{C.fmt(r['samples_per_s'])}**" if "samples_per_s" in r else r["error"],
                f"{r['step_s']:.4f}" if "step_s" in r else "",
                f"{r['warmup_s']:.1f}" if "warmup_s" in r else "",
                f"{r['peak_memory_gib']:.1f}" if "peak_memory_gib" in r else "",
            ]
            for r in rows
        ],
        "rlrrrr",
    )
    if report["speed"]["skipped"]:
        lines += ["", "Skipped (the part's time budget): " + ", ".join(report["speed"]["skipped"])]
    if report["speed"]["profile"]:
        lines += ["", "Where a batch-32 channels_last step spends its time (`torch.profiler`, self time):", ""]
        lines += C.md_table(
            ["op / kernel", "calls / step", "ms / step", "share"],
            [
                [f"`{p['name']}`", p["calls"], f"{p['ms_per_step']:.2f}", f"{100 * p['share']:.1f} %"]
                for p in report["speed"]["profile"]
            ],
            "lrrr",
        )
    t = report["trial"]
    lines += [
        "",
        "## 2. A real Ray Tune trial fed by Ray Data",
        "",
        f"`{t['arch']}` at the paper's settings on a synthetic cache of {t['tracks']:,} tracks x "
        f"{t['clip_seconds']:g} s (written in {t['cache_write_s']:.0f} s); the search took {t['run_s']:.0f} s "
        f"(exit code {t['rc']}).",
        "",
    ]
    lines += C.md_table(
        ["epoch", "device", "samples/s", "GPU wait share", "host data wait s"],
        [
            [
                e["epoch"],
                e["device"],
                C.fmt(e["train/samples_per_s"] or 0),
                f"{100 * e['train/gpu_wait_share']:.1f} %" if e.get("train/gpu_wait_share") is not None else "(no GPU)",
                f"{e['train/data_wait_s']:.2f}" if e.get("train/data_wait_s") is not None else "",
            ]
            for e in t["epochs"]
        ],
        "rlrrr",
    )
    if t["log_tail"]:
        lines += ["", "The search failed; its last output:", "", "```", t["log_tail"], "```"]
    lines += [
        "",
        "## 3. Packed trials on one GPU (DenseNet-121, batch 32, each actor holding and capped at "
        f"{report['packing'].get('share', 0):g} of the GPU)",
        "",
    ]
    lines += C.md_table(
        ["trials", "together samples/s", "per trial", "overlap s"],
        [
            [
                r["trials"],
                f"**{C.fmt(r['aggregate_samples_per_s'])}**"
                if "aggregate_samples_per_s" in r
                else r.get("error") or r.get("skipped"),
                ", ".join(C.fmt(g["samples_per_s"]) for g in r.get("per_trial", [])),
                f"{r['overlap_s']:.1f} of {r['window_s']:g}" if "overlap_s" in r else "",
            ]
            for r in report["packing"]["rows"]
        ],
        "rrlr",
    )
    f = report["frontend"]
    lines += [
        "",
        "## 4. The front end (log-mel + z-score)",
        "",
        f"On {f['device']}: **{C.fmt(f['clips_per_s'])} clips/s** in batches of {f['batch']} "
        f"({C.fmt(f['clips_per_s_with_copy'])} with the copy from the host); the paper's way, librosa per "
        f"clip on one CPU core: **{C.fmt(f['librosa_clips_per_s_one_core'])} clips/s** "
        f"({f['clip_seconds']:g}-s clips).",
        "",
        "## Targets",
        "",
    ]
    lines += C.md_table(
        ["target", "goal", "measured", "status", "note"],
        [[x["target"], x["goal"], x["measured"], x["status"], x["note"]] for x in report["targets"]],
        "lllll",
    )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    p = C.parser("python -m benchmarks.gpu_check", __doc__)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    device = torch.device("cpu") if args.smoke else C.resolve_device("cuda" if args.device == "auto" else args.device)
    budget = SMOKE_BUDGET_S if args.smoke else BUDGET_S
    overall = Deadline(sum(budget.values()))

    def part(name: str) -> Deadline:  # its own budget, less what an overrun before it took from the rest
        later = list(budget)[list(budget).index(name) + 1 :]
        return Deadline(max(5.0, min(budget[name], overall.left() - sum(budget[k] for k in later))))

    report = {"name": NAME, "machine": C.machine(device), "smoke": args.smoke, "budget_s": budget}
    report["speed"] = speed_part(device, args.smoke, part("speed"))
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the trial subprocess and the packed tasks need the GPU's memory
    with C.work_dir(args.work) as work:
        report["trial"] = trial_part(work, args.smoke, part("trial"))
    report["packing"] = packing_part(args.smoke, part("packing"), args.address)
    report["frontend"] = frontend_part(device, args.smoke)
    report["seconds"] = time.perf_counter() - t0
    report["targets"] = targets(report)
    C.write_report(C.out_dir(args), NAME, report, to_markdown(report))
    return 0


if __name__ == "__main__":
    run_cli(main)
