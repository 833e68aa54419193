"""Model table at the paper's settings: input shape, parameters, CPU forward time per batch.

    python -m benchmarks.model_table            # writes results/model_table.md and .json (a few minutes on 2 cores)
    python -m benchmarks.model_table --smoke    # tiny sizes, one run: checks the script, not the machine

For each registered architecture: ModelConfig at the paper's window / n_mels
(config.PAPER), 10-s crops at 22,050 Hz (220,500 samples), the paper's batch
size; forward under torch.no_grad in eval mode, the median of `--runs` timed
runs after `--warmup` untimed ones, with the front end (log-mel or resample +
z-score) timed on its own as well. Also times `augment.Augment` on a batch of
32 crops with both stretch methods. The figures name the machine they ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from mgc_ray.config import CACHE_SAMPLE_RATE, CROP_SECONDS, PAPER
from mgc_ray.files import atomic_text
from mgc_ray.models import FrontEnd, build_model, input_shapes, list_models
from mgc_ray.trial.augment import Augment

RESULTS = Path(__file__).resolve().parent.parent / "results"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() where that is missing)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_1min_at_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def timed(fn: Callable[[], object], runs: int, warmup: int) -> list[float]:
    """Seconds per call of `fn` for `runs` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def measure_model(name: str, n_samples: int, batch: int, runs: int, warmup: int, **overrides) -> dict:
    preset = PAPER[name]
    kw = dict(window=preset.window, n_mels=preset.n_mels, sample_rate=CACHE_SAMPLE_RATE)
    kw.update(overrides)
    torch.manual_seed(0)
    model = build_model(name, **kw).eval()
    wave = (0.3 * torch.randn(batch, n_samples)).clamp(-1, 1)  # (B, N) at the cache rate
    fronts = [m for m in model.modules() if isinstance(m, FrontEnd)]
    with torch.no_grad():
        fwd = timed(lambda: model(wave), runs, warmup)
        front = timed(lambda: [f(wave) for f in fronts], runs, warmup)
    return {
        "arch": name,
        "label": preset.label,
        "window": kw["window"],
        "n_mels": kw["n_mels"],
        "input_shapes": [list(s) for s in input_shapes(model, n_samples)],
        "params": sum(p.numel() for p in model.parameters()),
        "batch": batch,
        "forward_s": statistics.median(fwd),
        "forward_runs_s": fwd,
        "frontend_s": statistics.median(front),
    }


def measure_augment(n_samples: int, batch: int, runs: int, warmup: int) -> list[dict]:
    wave = (0.3 * torch.randn(batch, n_samples)).clamp(-1, 1)
    out = []
    for method in ("sinc", "linear"):
        aug = Augment(stretch_method=method)
        gen = np.random.default_rng(0)
        t = timed(lambda: aug(wave, gen), runs, warmup)
        out.append({"stretch_method": method, "batch": batch, "n_samples": n_samples, "seconds": statistics.median(t)})
    return out


def shape_str(shapes: Sequence[Sequence[int]]) -> str:
    return " + ".join(" x ".join(str(v) for v in s[1:]) + (" (1D)" if len(s) == 2 else "") for s in shapes)


def to_markdown(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    lines = [
        "# Model table at the paper's settings" + (" (SMOKE RUN: tiny sizes, not the paper's)" if s["smoke"] else ""),
        "",
        f"Written by `python -m benchmarks.model_table`. Input: {s['crop_seconds']:g}-s crops at "
        f"{s['sample_rate']:,} Hz ({s['n_samples']:,} samples), the paper's batch size, "
        f"forward in eval mode under torch.no_grad on CPU, median of {s['runs']} runs after {s['warmup']} warm-up.",
        "",
        "| arch | paper row | window / mels | network input (per example) | parameters | batch | "
        "forward s / batch | of which front end s | ms / example |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["models"]:
        lines.append(
            f"| {r['arch']} | {r['label']} | {r['window']} / {r['n_mels']} | {shape_str(r['input_shapes'])} | "
            f"{r['params']:,} | {r['batch']} | {r['forward_s']:.3f} | {r['frontend_s']:.3f} | "
            f"{1000 * r['forward_s'] / r['batch']:.1f} |"
        )
    lines += [
        "",
        "Training augmentation (`augment.Augment`, noise p = 0.5, stretch p = 0.5), one batch on CPU:",
        "",
        "| stretch method | batch | samples | s / batch |",
        "|---|---:|---:|---:|",
    ]
    for a in report["augment"]:
        lines.append(f"| {a['stretch_method']} | {a['batch']} | {a['n_samples']:,} | {a['seconds']:.3f} |")
    lines += [
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} using {m['torch_threads']} threads, "
        f"Python {m['python']}, {m['platform']}; 1-min load average at start "
        f"{m['load_avg_1min_at_start']} (other processes share the machine when it is above 0).",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.model_table", description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="timed runs per model (median reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for model_table.md/.json")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, one run, to check the script quickly")
    args = ap.parse_args(argv)
    seconds, runs, warmup = CROP_SECONDS, args.runs, args.warmup
    small = {}
    if args.smoke:  # 1 s at 8 kHz, small windows: seconds in all
        seconds, runs, warmup = 1.0, 1, 0
        small = dict(sample_rate=8_000, window=256, n_mels=32)
    rate = small.get("sample_rate", CACHE_SAMPLE_RATE)
    n_samples = int(round(seconds * rate))
    report = {
        "machine": machine(),
        "settings": {
            "sample_rate": rate,
            "crop_seconds": seconds,
            "n_samples": n_samples,
            "runs": runs,
            "warmup": warmup,
            "smoke": args.smoke,
        },
        "models": [],
        "augment": [],
    }
    for name in list_models():
        batch = 2 if args.smoke else PAPER[name].batch_size
        r = measure_model(name, n_samples, batch, runs, warmup, **small)
        print(
            f"{name:14s} input {shape_str(r['input_shapes']):26s} params {r['params']:>10,}  batch {batch:2d}  "
            f"forward {r['forward_s']:.3f} s (front end {r['frontend_s']:.3f} s)",
            flush=True,
        )
        report["models"].append(r)
    report["augment"] = measure_augment(n_samples, 2 if args.smoke else 32, runs, warmup)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_text(args.out / "model_table.json", json.dumps(report, indent=2) + "\n")
    atomic_text(args.out / "model_table.md", to_markdown(report))
    print(f"wrote {args.out / 'model_table.md'} and model_table.json")
    return report


if __name__ == "__main__":
    main()
