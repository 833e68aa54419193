"""Trials per hour of a whole search: `python -m mgc_ray.tune` run as a user runs it, wall time read outside.

    python -m benchmarks.search                  # CPU: 1 concurrent trial, baseline_a_2d and densenet (4-5 min)
    python -m benchmarks.search --device cuda    # GPU: 1, 2 and 4 concurrent trials (--gpus-per-trial 1, 0.5, 0.25)
    python -m benchmarks.search --smoke          # tiny: one 1-trial search, checks the script

Each search runs in a subprocess: `python -m mgc_ray.tune --arch A --cache C
--num-samples N --max-epochs E --grace-period E --max-concurrent K
[--gpus-per-trial G] --space S ...`, on a demo cache prepared beforehand (not
timed), with a search space that fixes the paper's input settings and batch
size and searches only lr and weight decay, so every trial costs the same and
ASHA stops none (grace period = max epochs). Every search pays a fixed cost
(Ray start, building the datasets, MLflow, the test evaluation of the best
trial), so each concurrency level runs twice, with N = K and N = 3K trials:

- trials/hour (whole command) = N / wall time, start-up and evaluation included;
- trials/hour (marginal) = 2K / (wall(3K) - wall(K)): the rate once a search is
  running, what a long search approaches.

A CPU trial holds 1 CPU and reserves 1 for its Ray Data reads, so a 2-core
machine fits one trial at a time: 2 and 4 concurrent trials are not measured there.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Sequence

import yaml

from benchmarks import _common as C
from mgc_ray.config import PAPER
from mgc_ray.errors import UserError, run_cli
from mgc_ray.search.plan import FMA_SEARCH
from mgc_ray.search.rungs import REDUCTION_FACTOR
from mgc_ray.search.space import LogUniform

NAME = "search"
GPU_LEVELS = ((1, 1.0), (2, 0.5), (4, 0.25))  # (concurrent trials, --gpus-per-trial)
CPU_LEVELS = ((1, None),)  # what fits on 2 cores (see the module doc)
DEFAULT_ARCHS = ("baseline_a_2d", "densenet")
FMA_SMALL_TRAIN_CLIPS = 6400  # the paper split's training share of FMA small's 8,000 clips
TARGET_HOURS = 1.0  # the issue: 32 DenseNet trials with ASHA on an FMA-small-sized dataset within an hour on one H100
SMOKE_PAPER = dict(window=512, n_mels=32, crop_seconds=2.0, batch_size=4)  # like tune --smoke's inputs


def space_yaml(arch: str, path: Path, overrides: dict | None = None) -> Path:
    """A search space with the arch's paper settings fixed and only lr / weight decay searched."""
    pre = PAPER[arch]
    paper = {
        "lr": pre.lr,
        "weight_decay": pre.weight_decay,
        "batch_size": pre.batch_size,
        "window": pre.window,
        "n_mels": pre.n_mels,
        "crop_seconds": pre.crop_seconds,
        **(overrides or {}),
    }
    # a `paper:` block must restate the paper's settings exactly: with other (smoke) inputs it is a `start:` one
    doc = {
        "arch": arch,
        ("start" if overrides else "paper"): paper,
        "space": {"lr": LogUniform(1e-5, 1e-3).to_dict(), "weight_decay": LogUniform(1e-6, 1e-2).to_dict()},
    }
    path.write_text(
        "# written by benchmarks/search.py: fixed inputs, every trial costs the same\n"
        + yaml.safe_dump(doc, sort_keys=False)
    )
    return path


def run_search(
    work: Path,
    cache: str,
    arch: str,
    space: Path,
    *,
    trials: int,
    epochs: int,
    concurrent: int,
    gpus: float | None,
    address: str | None,
) -> dict:
    """One `python -m mgc_ray.tune` in a subprocess; returns its wall time and Tune's own running time."""
    name = f"bench-{arch}-{trials}x{concurrent}-{uuid.uuid4().hex[:6]}"
    cmd = [
        sys.executable,
        "-m",
        "mgc_ray.tune",
        "--arch",
        arch,
        "--cache",
        cache,
        "--num-samples",
        str(trials),
        "--max-epochs",
        str(epochs),
        "--grace-period",
        str(epochs),
        "--max-concurrent",
        str(concurrent),
        "--space",
        str(space),
        "--no-dashboard",
        "--experiment-name",
        name,
        "--mlflow-uri",
        f"sqlite:///{work / 'mlflow.db'}",
        "--results-dir",
        str(work / "results"),
        "--storage-path",
        str(work / "ray"),
    ]
    if gpus is not None:
        cmd += ["--gpus-per-trial", f"{gpus:g}"]
    if address:
        cmd += ["--address", address]
    env = {**os.environ, "MGC_HOME": str(work / "home"), "PYTHONUNBUFFERED": "1"}
    if not address:
        # tune starts a Ray of its own unless $RAY_ADDRESS names a cluster: clear one the caller's
        # environment may set, so every timed search runs locally, as the other scripts do
        env["RAY_ADDRESS"] = "local"
    shown = " ".join(cmd[1:]).replace(str(work), "$WORK").replace(sys.executable, "python")
    print(f"$ python {shown}", flush=True)
    with C.timed() as t:
        proc = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout[-2000:] + proc.stderr[-3000:]).strip()
        raise UserError(f"the tune command failed (exit {proc.returncode}); its output ends with:\n{tail}")
    return {
        "arch": arch,
        "trials": trials,
        "epochs": epochs,
        "concurrent": concurrent,
        "gpus_per_trial": gpus,
        "command": "python " + shown,
        **t.as_dict(),
        "trials_per_hour": C.rate(trials * 3600, t.seconds),
        "tune_running_s": _tune_running_s(proc.stdout),
    }


def _tune_running_s(out: str) -> float | None:
    """Tune's last 'Total running time: 1min 5s' (its own loop, without the CLI's start-up and evaluation)."""
    found = re.findall(r"Total running time: (?:(\d+)hr )?(?:(\d+)min )?(\d+)s", out)
    if not found:
        return None
    h, m, s = found[-1]
    return 3600 * int(h or 0) + 60 * int(m or 0) + int(s)


def main(argv: Sequence[str] | None = None) -> int:
    p = C.parser("python -m benchmarks.search", __doc__)
    p.add_argument("--archs", nargs="+", default=list(DEFAULT_ARCHS), choices=sorted(PAPER))
    p.add_argument("--max-epochs", type=int, default=1, help="epochs per trial (default 1)")
    p.add_argument("--waves", type=int, default=3, help="the second run of each level has waves x K trials")
    p.add_argument(
        "--tracks-per-genre",
        type=int,
        default=8,
        help="demo tracks per genre (default 8: 51 training clips, one batch of 32 per epoch)",
    )
    p.add_argument("--seconds", type=float, default=15.0, help="demo clip length (tune's demo: 15 s)")
    args = p.parse_args(argv)
    device = C.resolve_device(args.device)
    m = C.machine(device)
    levels = GPU_LEVELS if device.type == "cuda" else CPU_LEVELS
    archs, tpg, seconds, waves, overrides = args.archs, args.tracks_per_genre, args.seconds, args.waves, None
    if args.smoke:
        archs, tpg, seconds, waves, overrides = ["baseline_a_2d"], 3, 3.0, 1, SMOKE_PAPER
    runs = []
    with C.work_dir(args.work) as work:
        data = C.demo_data(work, tpg, seconds, address=args.address)
        for arch in archs:
            space = space_yaml(arch, work / f"space-{arch}{'-smoke' if args.smoke else ''}.yaml", overrides)
            for k, gpus in levels:
                for n in sorted({k, waves * k}):
                    r = run_search(
                        work,
                        data.cache,
                        arch,
                        space,
                        trials=n,
                        epochs=args.max_epochs,
                        concurrent=k,
                        gpus=gpus,
                        address=args.address,
                    )
                    runs.append(r)
                    print(
                        f"  {arch}: {n} trial(s), {k} at once: {r['seconds']:.1f} s, "
                        f"{r['trials_per_hour']:.0f} trials/hour (whole command)",
                        flush=True,
                    )
        n_train = data.manifest.num_tracks["train"]
    report = {
        "name": NAME,
        "machine": m,
        "smoke": args.smoke,
        "settings": {
            "train_tracks": n_train,
            "clip_seconds": seconds,
            "max_epochs": args.max_epochs,
            "waves": waves,
            "inputs": overrides or "paper",
            "joined_cluster": bool(args.address),
        },
        "runs": runs,
        "levels": _levels(runs),
    }
    report["targets"] = _targets(report)
    C.write_report(C.out_dir(args), NAME, report, to_markdown(report))
    return 0


def _levels(runs: list[dict]) -> list[dict]:
    """Per (arch, concurrency): whole-command and marginal trials/hour."""
    out = []
    for arch in dict.fromkeys(r["arch"] for r in runs):
        for k in dict.fromkeys(r["concurrent"] for r in runs if r["arch"] == arch):
            rs = sorted((r for r in runs if r["arch"] == arch and r["concurrent"] == k), key=lambda r: r["trials"])
            lo, hi = rs[0], rs[-1]
            marginal = (
                C.rate((hi["trials"] - lo["trials"]) * 3600, hi["seconds"] - lo["seconds"])
                if hi is not lo and hi["seconds"] > lo["seconds"]
                else None
            )
            fixed = lo["seconds"] - lo["trials"] * 3600 / marginal if marginal else None
            out.append(
                {
                    "arch": arch,
                    "concurrent": k,
                    "gpus_per_trial": lo["gpus_per_trial"],
                    "whole_command_trials_per_hour": hi["trials_per_hour"],
                    "marginal_trials_per_hour": marginal,
                    "fixed_cost_s": fixed,
                }
            )
    return out


def _targets(report: dict) -> list[dict]:
    gpu = report["machine"]["device"].startswith("cuda")
    out = []
    for lv in report["levels"]:
        rate = lv["marginal_trials_per_hour"] or lv["whole_command_trials_per_hour"]
        out.append(
            C.target(
                f"search: trials/hour, {lv['arch']}, {lv['concurrent']} concurrent"
                + (f" ({lv['gpus_per_trial']:g} GPU each)" if gpu else " (CPU)"),
                "none set: report",
                f"{rate:,.0f} trials/hour ({report['settings']['max_epochs']} "
                f"epoch(s) of {report['settings']['train_tracks']} clips)",
                C.MEASURED,
                "marginal rate" if lv["marginal_trials_per_hour"] else "whole command",
            )
        )
    epochs = halving_epochs(FMA_SEARCH["num_samples"], FMA_SEARCH["max_epochs"], 1, REDUCTION_FACTOR)
    need = epochs * FMA_SMALL_TRAIN_CLIPS / (3600 * TARGET_HOURS)
    out.append(
        C.target(
            f"search: {FMA_SEARCH['num_samples']} DenseNet trials with ASHA on an FMA-small-sized dataset, one H100",
            f"within {TARGET_HOURS:g} hour",
            (C.NO_GPU + "; " if not gpu else "")
            + (
                f"arithmetic, not a measurement: the default FMA search ({FMA_SEARCH['num_samples']} trials, ASHA "
                f"halving from epoch 1 to {FMA_SEARCH['max_epochs']}) trains ~{epochs} epochs of "
                f"{FMA_SMALL_TRAIN_CLIPS:,} clips, so it needs >= {need:,.0f} training samples/s sustained over the "
                "search (besides validation and start-up)"
            ),
            C.NOT_MEASURED,
            "this script times demo-sized searches; to measure: `time python -m mgc_ray.tune --arch densenet "
            "--cache <scale.py's 8,000-clip cache> --gpus-per-trial 0.25` on the GPU node",
        )
    )
    if not gpu:
        for arch in dict.fromkeys(r["arch"] for r in report["runs"]):
            out.append(
                C.target(
                    f"search: trials/hour, {arch}, 2 and 4 concurrent (0.5 / 0.25 GPU each)",
                    "none set: report",
                    C.NO_GPU,
                    C.NOT_MEASURED,
                    "a 2-core CPU fits one trial; run search.py --device cuda",
                )
            )
    return out


def halving_epochs(trials: int, max_epochs: int, grace: int, rf: int) -> int:
    """Epochs a search trains when each rung (grace, grace * rf, ...) keeps 1/rf of the trials.

    ASHA's aim; it decides asynchronously, so a real search trains about this many.
    32 trials, 20 epochs, grace 1, rf 2: 32 + 16 + 8*2 + 4*4 + 2*8 + 1*4 = 100.
    """
    total, alive, done, rung = 0, trials, 0, grace
    while True:
        stop = min(rung, max_epochs)
        total += alive * (stop - done)
        if stop >= max_epochs:
            return total
        alive, done, rung = max(1, alive // rf), stop, rung * rf


def to_markdown(report: dict) -> list[str]:
    s = report["settings"]
    gpu = report["machine"]["device"].startswith("cuda")
    lines = [
        C.title("Search throughput: trials per hour of `python -m mgc_ray.tune`", report["smoke"]),
        "",
        f"Written by `benchmarks/search.py`. Demo cache of {s['train_tracks']} training clips of "
        f"{s['clip_seconds']:g} s; {s['max_epochs']} epoch(s) per trial at "
        f"{'the paper' if s['inputs'] == 'paper' else 'tiny'} input settings, only lr and weight decay searched "
        "(every trial costs the same; ASHA stops none). Wall time of the whole command, measured outside it.",
        "",
    ]
    lines += C.md_table(
        ["arch", "trials", "at once", "GPU / trial", "wall s", "Tune's own s", "trials/hour (whole)", "load 1-min"],
        [
            [
                r["arch"],
                r["trials"],
                r["concurrent"],
                "–" if r["gpus_per_trial"] is None else f"{r['gpus_per_trial']:g}",
                f"{r['seconds']:.1f}",
                "–" if r["tune_running_s"] is None else r["tune_running_s"],
                C.fmt(r["trials_per_hour"]),
                f"{r['load_start']} -> {r['load_end']}",
            ]
            for r in report["runs"]
        ],
        "lrrrrrrl",
    )
    lines += [
        "",
        "Per concurrency level: 'marginal' = extra trials / extra wall time between the two runs (the rate "
        "inside a running search); 'fixed cost' = what one search pays besides its trials (Ray start, datasets, "
        "MLflow, the test evaluation).",
        "",
    ]
    lines += C.md_table(
        ["arch", "at once", "trials/hour (whole command)", "trials/hour (marginal)", "fixed cost s"],
        [
            [
                lv["arch"],
                lv["concurrent"],
                C.fmt(lv["whole_command_trials_per_hour"]),
                f"**{C.fmt(lv['marginal_trials_per_hour'])}**",
                C.fmt(lv["fixed_cost_s"]),
            ]
            for lv in report["levels"]
        ],
        "lrrrr",
    )
    if not gpu:
        lines += [
            "",
            f"2 and 4 concurrent trials (`--gpus-per-trial 0.5` / `0.25`): not measured here ({C.NO_GPU}; "
            "on 2 CPU cores one CPU trial fits, with the other core reserved for its Ray Data reads). Run "
            "`python -m benchmarks.search --device cuda` on a GPU node.",
        ]
    lines += ["", "Commands (MGC_HOME, MLflow store, results and Tune storage in a temporary folder):", ""]
    lines += [f"    {r['command']}" for r in report["runs"]]
    return lines


if __name__ == "__main__":
    run_cli(main)
