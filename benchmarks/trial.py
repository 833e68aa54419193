"""Training speed of each architecture at paper settings, and how long a real trial waits for data.

    python -m benchmarks.trial                 # CPU: a few steps per arch + 2 epochs of 2 trials (~3 min on 2 cores)
    python -m benchmarks.trial --device cuda   # GPU: bf16 autocast and channels_last on and off, more steps,
                                               # and a 2,000-clip demo for the data wait (written first)
    python -m benchmarks.trial --smoke         # tiny: checks the script in seconds

1. Training samples per second of each registered architecture at the paper's
   settings (config.PAPER: window / n_mels, batch size; 10-s crops at 22,050 Hz):
   forward (front end included) + cross-entropy + backward + Adam step, through
   `loop.train_epoch` itself on a fixed random batch, after warm-up steps. On
   CUDA each arch runs four ways: bf16 autocast (`loop.autocast`) on/off x
   channels_last (`loop.prepare_model`) on/off. Both are CUDA-only in the
   trainer, so a CPU run measures fp32 contiguous only and says so.
2. ATen ops per training step (CPU, `torch.profiler`: every `aten::` event,
   nested ones included) of DenseNet-121 at paper settings, before and after
   the sync-free step: before = `Augment` stretching example by example with
   `torchaudio.functional.resample` (its kernel rebuilt on every call),
   torch's default Adam (per parameter on the CPU, for-each on CUDA) and a
   per-step `float(loss)`; after = the trial's `Augment` (`trainable.augment_for`:
   one resampling per distinct factor with cached kernels), fused Adam, the loss
   summed on the device. The augmentation is counted at batch 32; the network step at batch 2
   (its op count does not depend on the batch size).
3. A real trial's wait for data: the trial's own setup and epoch
   (`trainable.trial_setup`: the model from the registry on the device, Adam,
   the trial's `Augment` on the device, its recipe and `--compile`, cuDNN's
   autotuner on CUDA; `TrialSetup.batches` from the Ray Data cache, then
   `TrialSetup.train`, the epoch `trainable._epochs` runs), with the batch
   iterator wrapped so the time blocked in `next(batches)` is summed; share =
   that time / the epoch's time. Ray gets (available CPUs - 1) logical CPUs: a trial holds one CPU and
   Ray Data gets the rest (`cluster.resources`). On CPU the trainer and Ray Data
   share the same two cores, so this is the CPU trial's share, labelled so.

torch runs with the threads Ray gives a trial (OMP_NUM_THREADS = its CPUs: 1 on
CPU, 2 with a GPU) in both parts. On a shared 2-core machine that is also the
stable choice: with the cores oversubscribed, 2 OpenMP threads wait for each
other at every op (a side check under load 8: 2.5-6x slower than 1 thread).

Targets: DenseNet-121 at 224 x 224 >= 2,000 samples/s on one H100 with bf16 (GPU
only); GPU waiting for data < 10 % of a trial's time.
"""

from __future__ import annotations

import contextlib
import itertools
import statistics
import time
from typing import Iterator, Sequence

import numpy as np
import torch
import torchaudio

from benchmarks import _common as C
from mgc_ray.config import CACHE_SAMPLE_RATE, CROP_SECONDS, PAPER
from mgc_ray.errors import run_cli
from mgc_ray.models import build_model, input_shapes, list_models
from mgc_ray.trial.augment import Augment
from mgc_ray.trial.loop import compiled, make_optimizer, prepare_model, train_epoch
from mgc_ray.trial.trainable import TrialSetup, augment_for, trial_setup

NAME = "trial"
TARGET_DENSENET = 2000  # samples/s, DenseNet-121 at 224 x 224, one H100, bf16
TARGET_WAIT = 0.10  # share of a GPU trial's time spent waiting for data
WAIT_ARCHS = ("baseline_a_2d", "densenet")  # a small model (data-bound if anything is) and the paper's best
SMOKE_INPUT = dict(sample_rate=8_000, window=256, n_mels=32)  # 1-s crops: seconds for all five archs
CPU_TRACKS_PER_GENRE = 20  # 128 training clips: 4 batches of 32 per epoch, minutes of DenseNet on 2 cores
GPU_TRACKS_PER_GENRE = 250  # 1,600 training clips: 50 batches per epoch (FMA small: 200)


def step_rate(
    arch: str,
    device: torch.device,
    *,
    amp: bool,
    channels_last: bool,
    steps: int,
    warmup: int,
    n_samples: int,
    batch: int,
    overrides: dict,
    cudnn_benchmark: bool = False,
    fused: bool = True,
    compile: bool = False,
) -> dict:
    """Samples/s of `train_epoch` on one fixed random batch (fresh model and Adam).

    `cudnn_benchmark` (CUDA only): let cuDNN time its conv algorithms for these fixed shapes
    (`torch.backends.cudnn.benchmark`; the trial turns it on); `fused`: fused Adam (the trial's);
    `compile`: torch.compile the model (the trial's --compile; compiled in the warm-up steps)."""
    torch.backends.cudnn.benchmark = cudnn_benchmark and device.type == "cuda"
    preset = PAPER[arch]
    kw = {"window": preset.window, "n_mels": preset.n_mels, "sample_rate": CACHE_SAMPLE_RATE, **overrides}
    torch.manual_seed(0)
    model = build_model(arch, **kw)
    model = prepare_model(model, device) if channels_last else model.to(device)  # prepare_model: channels_last on CUDA
    opt = make_optimizer(model, preset.train_config(), fused=fused)
    net = compiled(model, compile)
    wave = (0.3 * torch.randn(batch, n_samples)).clamp(-1, 1).to(device)  # (B, N) at the cache rate
    label = torch.randint(0, 8, (batch,), device=device)  # (B,)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if warmup:
        train_epoch(net, itertools.repeat((wave, label), warmup), opt, device=device, amp=amp)
    C.sync(device)
    with C.timed(device) as t:
        r = train_epoch(net, itertools.repeat((wave, label), steps), opt, device=device, amp=amp)
    out = {
        "arch": arch,
        "label": preset.label,
        "window": kw["window"],
        "n_mels": kw["n_mels"],
        "input_shapes": [list(s) for s in input_shapes(model, n_samples)],
        "batch": batch,
        "steps": steps,
        "warmup": warmup,
        "amp_bf16": amp and device.type == "cuda",
        "channels_last": channels_last and device.type == "cuda",
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "fused_adam": fused,
        "compiled": compile,
        "torch_threads": torch.get_num_threads(),
        "samples_per_s": r["samples_per_s"],
        "step_s": r["seconds"] / steps,
        **t.as_dict(),
    }
    if device.type == "cuda":
        out["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    torch.backends.cudnn.benchmark = False
    return out


class Augment1000(Augment):
    """`augment.Augment` as it was before the fix: stretch factors on a 1/1000 grid.

    torchaudio's sinc resampler convolves with one kernel per output phase, as long as
    the reduced ratio's numerator: a factor such as 0.937 = 937/1000 (gcd 1) means a
    (1000, 1, 951) kernel whose taps are > 98 % zeros (only ~13 lie inside the windowed
    sinc), 0.94 = 47/50 a (50, 1, 61) one. `Augment` now draws on a 1/100 grid (at most
    100 phases; the factor stays uniform over [0.9, 1.1], in 21 steps instead of 201).
    """

    RATE_STEPS = 1000


class AugmentBefore(Augment):
    """`Augment` before the sync-free step: a host read of the factors (`tolist`), then one
    `torchaudio.functional.resample` per stretched example, which builds its kernel each call."""

    def stretch_sinc(self, wave: torch.Tensor, rate: np.ndarray, out_len: int | None = None) -> torch.Tensor:
        n = out_len or wave.shape[1]
        out = torch.nn.functional.pad(wave[:, :n], (0, max(0, n - wave.shape[1]))).clone()  # (B, n)
        for i, r in enumerate(torch.as_tensor(rate).tolist()):
            orig = int(round(r * self.RATE_STEPS))
            if orig == self.RATE_STEPS:
                continue
            y = torchaudio.functional.resample(wave[i : i + 1], orig, self.RATE_STEPS)[:, :n]  # (1, ~N / r)
            out[i] = torch.nn.functional.pad(y, (0, n - y.shape[1]))[0]
        return out


def _aten_count(fn) -> tuple[int, int]:
    """(every aten:: event, the top-level ones: called from Python, not from inside another aten op)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.events() if e.name.startswith("aten::")]

    def nested(e) -> bool:
        p = e.cpu_parent
        while p is not None:
            if p.name.startswith("aten::"):
                return True
            p = p.cpu_parent
        return False

    return len(events), sum(1 for e in events if not nested(e))


def aten_ops(arch: str, *, n_samples: int, aug_batch: int, step_batch: int, overrides: dict) -> list[dict]:
    """ATen ops of one training step on the CPU, before and after the sync-free step (module doc, part 2)."""
    preset = PAPER[arch]
    kw = {"window": preset.window, "n_mels": preset.n_mels, "sample_rate": CACHE_SAMPLE_RATE, **overrides}
    rows = []
    for way, fused in (("before", False), ("after", True)):
        torch.manual_seed(0)
        model = build_model(arch, **kw)
        opt = make_optimizer(model, preset.train_config(), fused=fused)
        aug = AugmentBefore() if way == "before" else augment_for(model)  # after: the trial's
        wave = (0.3 * torch.randn(aug_batch, n_samples)).clamp(-1, 1)  # (B, N)
        aug(wave, np.random.default_rng(0))  # warm-up: cached kernels
        aug_ops, aug_top = _aten_count(lambda: aug(wave, np.random.default_rng(1)))
        small = wave[:step_batch]
        label = torch.zeros(step_batch, dtype=torch.long)
        train_epoch(model, [(small, label)], opt)  # warm-up: Adam's state

        def step():
            if way == "before":  # the old loop's per-step read of the loss
                r = train_epoch(model, [(small, label)], opt)
                float(torch.tensor(r["loss"]))
            else:
                train_epoch(model, [(small, label)], opt)

        step_ops, step_top = _aten_count(step)
        rows.append(
            {
                "arch": arch,
                "way": way,
                "augment_batch": aug_batch,
                "augment_ops": aug_ops,
                "augment_top_level_ops": aug_top,
                "step_batch": step_batch,
                "step_ops": step_ops,
                "step_top_level_ops": step_top,
                "fused_adam": fused,
            }
        )
    return rows


def augment_cost(device: torch.device, *, batch: int, n_samples: int, repeats: int) -> list[dict]:
    """Seconds per training batch of `Augment` on `device`: now (1/100 grid) and before the fix (1/1000).

    The two alternate call by call (a load spike hits both alike), each with its own generator
    seeded alike, so both draw the same examples to stretch and noise, and the same factors up
    to the grid's rounding.
    """
    wave = (0.3 * torch.randn(batch, n_samples)).clamp(-1, 1).to(device)  # (B, N)
    ways = [("before the fix: factors on a 1/1000 grid", Augment1000), ("now: factors on a 1/100 grid", Augment)]
    augs = [cls().to(device) for _, cls in ways]
    gens = [np.random.default_rng(0) for _ in ways]
    for aug, gen in zip(augs, gens):
        aug(wave, gen)  # warm-up
    times: list[list[float]] = [[] for _ in ways]
    with C.timed(device) as t:
        for _ in range(repeats):  # each call draws new factors: the median over many draws
            for k, (aug, gen) in enumerate(zip(augs, gens)):
                a = time.perf_counter()
                aug(wave, gen)
                C.sync(device)
                times[k].append(time.perf_counter() - a)
    return [
        {
            "augment": label,
            "rate_steps": cls.RATE_STEPS,
            "batch": batch,
            "n_samples": n_samples,
            "repeats": repeats,
            "seconds_median": statistics.median(ts),
            "seconds_mean": sum(ts) / len(ts),
            "load_start": t.load_start,
            "load_end": t.load_end,
        }
        for (label, cls), ts in zip(ways, times)
    ]


class WaitTimer:
    """Wraps a batch iterator; `wait` sums the seconds spent blocked in its `next()`."""

    def __init__(self, batches: Iterator) -> None:
        self.it, self.wait, self.first, self.n = iter(batches), 0.0, None, 0

    def __iter__(self) -> "WaitTimer":
        return self

    def __next__(self):
        t0 = time.perf_counter()
        try:
            return next(self.it)
        finally:
            dt = time.perf_counter() - t0
            self.wait += dt
            if self.first is None:
                self.first = dt
            self.n += 1


def _timed_epoch(setup: TrialSetup, datasets, epoch: int) -> dict:
    """One training epoch of the trial (`TrialSetup.batches`, `TrialSetup.train`) with the time blocked in
    next(batches) summed."""
    batches = WaitTimer(setup.batches(datasets, epoch))
    with C.timed(setup.device) as t:
        tr = setup.train(batches, epoch)
    return {
        "epoch": epoch,
        "batches": batches.n - 1,
        "batch": setup.cfg.batch_size,
        "seconds": tr["seconds"],
        "wait_s": batches.wait,
        "first_batch_wait_s": batches.first,
        "wait_share": batches.wait / tr["seconds"],
        "samples_per_s": tr["samples_per_s"],
        "torch_threads": torch.get_num_threads(),
        "load_start": t.load_start,
        "load_end": t.load_end,
    }


def trial_wait(datasets, manifest, arch: str, device: torch.device, *, epochs: int, overrides: dict) -> dict:
    """The training epochs of a trial at the paper's settings for `arch` (`trainable.trial_setup`, `overrides`
    on top) with the data wait timed; one row per epoch."""
    cfg = PAPER[arch].train_config(max_epochs=epochs, **overrides)
    autotune = torch.backends.cudnn.benchmark  # trial_setup turns cuDNN's autotuner on on CUDA, as in a trial
    rows = []
    try:
        with C.torch_threads(C.trial_cpus(device)):  # what Ray gives a trial (OMP_NUM_THREADS = its CPUs)
            setup = trial_setup(cfg, manifest, device)
            for epoch in range(epochs):
                rows.append(_timed_epoch(setup, datasets, epoch))
    finally:
        torch.backends.cudnn.benchmark = autotune
    total = sum(r["seconds"] for r in rows)
    wait = sum(r["wait_s"] for r in rows)
    later = rows[1:] or rows
    return {
        "arch": arch,
        "label": PAPER[arch].label,
        "augment": repr(setup.augment),
        "recipe": repr(setup.recipe),
        "compiled": cfg.compile,
        "epochs": rows,
        "wait_share": wait / total,
        "wait_share_after_first_epoch": sum(r["wait_s"] for r in later) / sum(r["seconds"] for r in later),
        "samples_per_s": sum(r["batches"] * r["batch"] for r in rows) / total,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = C.parser("python -m benchmarks.trial", __doc__)
    p.add_argument("--archs", nargs="+", default=list_models(), choices=list_models(), help="archs of part 1")
    p.add_argument("--steps", type=int, help="timed steps per arch (default 3 on CPU, 30 on CUDA)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 1 on CPU, 10 on CUDA)")
    p.add_argument("--epochs", type=int, default=2, help="epochs of each real trial (part 2)")
    p.add_argument(
        "--tracks-per-genre",
        type=int,
        help="demo tracks per genre for part 2 (default 20 on CPU: 4 batches per epoch; 250 on CUDA: "
        "50 batches per epoch, so that an epoch's start-up weighs about as on FMA)",
    )
    p.add_argument("--seconds", type=float, default=30.0, help="demo clip length (FMA's 30 s)")
    p.add_argument("--skip-wait", action="store_true", help="parts 1 and 2 only")
    p.add_argument("--ops-only", action="store_true", help="part 2 only: ATen ops per DenseNet step, before/after")
    args = p.parse_args(argv)
    device = C.resolve_device(args.device)
    m = C.machine(device)
    cuda = device.type == "cuda"
    steps = args.steps or (30 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    tpg = args.tracks_per_genre or (GPU_TRACKS_PER_GENRE if cuda else CPU_TRACKS_PER_GENRE)
    seconds, crop_s, epochs, overrides, wait_overrides = args.seconds, CROP_SECONDS, args.epochs, {}, {}
    archs, wait_archs = args.archs, WAIT_ARCHS
    if args.smoke:
        steps, warmup, crop_s, epochs, tpg, seconds = 1, 0, 1.0, 1, 3, 3.0
        overrides = SMOKE_INPUT
        wait_overrides = dict(window=512, n_mels=32, crop_seconds=2.0, batch_size=4)
        wait_archs = ("baseline_a_2d",)
    n_samples = int(round(crop_s * overrides.get("sample_rate", CACHE_SAMPLE_RATE)))

    ops = aten_ops(
        "densenet", n_samples=n_samples, aug_batch=2 if args.smoke else 32, step_batch=2, overrides=overrides
    )
    for o in ops:
        print(
            f"densenet ATen ops (top-level), {o['way']:6s}: Augment {o['augment_ops']} ({o['augment_top_level_ops']}) "
            f"per batch of {o['augment_batch']}, step {o['step_ops']} ({o['step_top_level_ops']}) "
            "(forward, loss, backward, Adam)",
            flush=True,
        )
    if args.ops_only:
        archs = []
    speed = []
    # (bf16 autocast, channels_last, cudnn.benchmark): the trainer's setting first, then each one off,
    # then cuDNN's autotuner on top (the trial turns it on: `trainable._train`)
    # then fused Adam off (the trial's is fused), then the compiled model (--compile), each with the autotuner
    combos = (
        [
            (True, True, False, True, False),
            (True, False, False, True, False),
            (False, True, False, True, False),
            (False, False, False, True, False),
            (True, True, True, True, False),
            (True, True, True, False, False),
            (True, True, True, True, True),
        ]
        if cuda
        else [(False, False, False, True, False)]
    )
    threads = contextlib.ExitStack()
    threads.enter_context(C.torch_threads(C.trial_cpus(device)))  # a trial's threads (see the module doc)
    for arch in archs:
        batch = 2 if args.smoke else PAPER[arch].batch_size
        for amp, cl, bench, fused, comp in combos:
            r = step_rate(
                arch,
                device,
                amp=amp,
                channels_last=cl,
                steps=steps,
                warmup=warmup,
                n_samples=n_samples,
                batch=batch,
                overrides=overrides,
                cudnn_benchmark=bench,
                fused=fused,
                compile=comp,
            )
            speed.append(r)
            print(
                f"{arch:14s} bf16={'on ' if r['amp_bf16'] else 'off'} channels_last={'on ' if r['channels_last'] else 'off'}"
                f"{' cudnn.benchmark' if r['cudnn_benchmark'] else ''}{'' if r['fused_adam'] else ' foreach-Adam'}"
                f"{' compiled' if r['compiled'] else ''} {r['samples_per_s']:8.1f} samples/s "
                f"({r['step_s']:.3f} s/step)",
                flush=True,
            )
    aug = (
        []
        if args.ops_only
        else augment_cost(
            device,
            batch=2 if args.smoke else 32,
            n_samples=n_samples,
            repeats=3 if args.smoke else (50 if cuda else 10),
        )
    )
    threads.close()
    for a in aug:
        print(f"Augment, {a['augment']}: {a['seconds_median']:.3f} s per batch of {a['batch']} (median)", flush=True)
    waits = []
    if not (args.skip_wait or args.ops_only):
        from mgc_ray.data.pipeline import CacheDatasets

        with C.work_dir(args.work) as work:
            data = C.demo_data(work, tpg, seconds, address=args.address)
            with C.ray_session(args.address, num_cpus=max(1, C.cores_available() - 1)):
                datasets = CacheDatasets.build(data.manifest)
                for arch in wait_archs:
                    w = trial_wait(datasets, data.manifest, arch, device, epochs=epochs, overrides=wait_overrides)
                    waits.append(w)
                    print(
                        f"{arch:14s} trial on Ray Data ({device.type}): waits {100 * w['wait_share']:.1f} % of "
                        f"its training time, {w['samples_per_s']:.1f} samples/s",
                        flush=True,
                    )
            n_train = data.manifest.num_tracks["train"]
    report = {
        "name": NAME,
        "machine": m,
        "smoke": args.smoke,
        "settings": {
            "steps": steps,
            "warmup": warmup,
            "crop_seconds": crop_s,
            "n_samples": n_samples,
            "epochs": epochs,
            "train_tracks": n_train if waits else None,
            "clip_seconds": seconds,
            "ray_cpus": max(1, C.cores_available() - 1),
            "joined_cluster": bool(args.address),
        },
        "speed": speed,
        "augment": aug,
        "wait": waits,
        "aten_ops": ops,
    }
    report["targets"] = _targets(report)
    # --ops-only writes trial_ops_<device>.*, beside (not over) a full run's report
    C.write_report(C.out_dir(args), NAME + ("_ops" if args.ops_only else ""), report, to_markdown(report))
    return 0


def _targets(report: dict) -> list[dict]:
    dev = report["machine"]["device"]
    dn = [r for r in report["speed"] if r["arch"] == "densenet"]
    out = []
    if dev.startswith("cuda") and dn:
        best = max(r["samples_per_s"] for r in dn if r["amp_bf16"] and not r["cudnn_benchmark"])
        out.append(
            C.target(
                "trial: DenseNet-121 at 224 x 224, one GPU, bf16",
                f">= {TARGET_DENSENET:,} samples/s",
                f"{best:,.0f} samples/s on {report['machine']['gpu']}",
                C.MET if best >= TARGET_DENSENET else C.NOT_MET,
            )
        )
    else:
        cpu = f"; CPU here: {dn[0]['samples_per_s']:.1f} samples/s (fp32)" if dn else ""
        out.append(
            C.target(
                "trial: DenseNet-121 at 224 x 224, one H100, bf16",
                f">= {TARGET_DENSENET:,} samples/s",
                f"{C.NO_GPU}{cpu}",
                C.NOT_MEASURED,
                "GPU only: run python -m benchmarks.trial --device cuda on an H100",
            )
        )
    dnw = [w for w in report["wait"] if w["arch"] == "densenet"] or report["wait"]
    if dev.startswith("cuda") and dnw:
        share = dnw[0]["wait_share_after_first_epoch"]
        out.append(
            C.target(
                "trial: GPU waiting for data",
                f"< {100 * TARGET_WAIT:g} % of a trial's time",
                f"{100 * share:.1f} % ({dnw[0]['arch']}, epochs after the first)",
                C.MET if share < TARGET_WAIT else C.NOT_MET,
            )
        )
    else:
        cpu = "; ".join(
            f"CPU trial {w['arch']}: {100 * w['wait_share']:.1f} % waiting over all epochs, "
            f"{100 * w['wait_share_after_first_epoch']:.1f} % after the first"
            for w in report["wait"]
        )
        out.append(
            C.target(
                "trial: GPU waiting for data",
                f"< {100 * TARGET_WAIT:g} % of a trial's time",
                f"{C.NO_GPU}" + (f" ({cpu}, labelled CPU)" if cpu else ""),
                C.NOT_MEASURED,
                "GPU only: run python -m benchmarks.trial --device cuda",
            )
        )
    return out


def to_markdown(report: dict) -> list[str]:
    s, dev = report["settings"], report["machine"]["device"]
    lines = [
        C.title("Trial speed at paper settings, and the share of a trial spent waiting for data", report["smoke"]),
        "",
        f"Written by `python -m benchmarks.trial` on {dev}. Part 1: `loop.train_epoch` (forward with the front end, "
        f"cross-entropy, backward, Adam step) on one random batch of {s['crop_seconds']:g}-s crops at the "
        f"paper's batch size; {s['steps']} timed steps after {s['warmup']} warm-up; torch on "
        f"{report['speed'][0]['torch_threads'] if report['speed'] else torch.get_num_threads()} thread(s), as Ray "
        "gives a trial holding that many CPUs.",
        "",
    ]
    if not report["speed"]:  # --ops-only
        lines = lines[:2]
    lines += (
        []
        if not report["speed"]
        else C.md_table(
            [
                "arch",
                "paper row",
                "window / mels",
                "network input",
                "batch",
                "bf16 autocast",
                "channels_last" + (" (+ cudnn.benchmark)" if dev.startswith("cuda") else ""),
                "s / step",
                "samples/s",
                "load 1-min",
            ]
            + (["peak GPU GB"] if dev.startswith("cuda") else []),
            [
                [
                    r["arch"],
                    r["label"],
                    f"{r['window']} / {r['n_mels']}",
                    " + ".join(" x ".join(map(str, sh[1:])) for sh in r["input_shapes"]),
                    r["batch"],
                    "on" if r["amp_bf16"] else "off",
                    ("on" if r["channels_last"] else "off")
                    + (" + cudnn.benchmark" if r["cudnn_benchmark"] else "")
                    + ("" if r.get("fused_adam", True) else ", for-each Adam")
                    + (", compiled" if r.get("compiled") else ""),
                    f"{r['step_s']:.3f}",
                    f"**{C.fmt(r['samples_per_s'])}**",
                    f"{r['load_start']} -> {r['load_end']}",
                ]
                + ([f"{r['peak_memory_gb']:.1f}"] if dev.startswith("cuda") else [])
                for r in report["speed"]
            ],
            "llllrllrrl" + ("r" if dev.startswith("cuda") else ""),
        )
    )
    ops = report.get("aten_ops") or []
    if ops:
        lines += [
            "",
            "ATen ops per DenseNet-121 training step on the CPU (`torch.profiler`, every `aten::` event, "
            "nested ones included; part 2 of the module doc): before = per-example torchaudio resample, "
            "torch's default Adam (one parameter at a time on the CPU, for-each on CUDA), a per-step loss read; "
            "after = one resampling per distinct factor with cached "
            "kernels, fused Adam, the loss read once per epoch.",
            "",
        ]
        top = "augment_top_level_ops" in ops[0]
        lines += C.md_table(
            ["way", "Augment ops (batch)", "step ops (batch)", "total"]
            + (["top-level: Augment", "step", "total"] if top else []),
            [
                [
                    o["way"],
                    f"{o['augment_ops']:,} ({o['augment_batch']})",
                    f"{o['step_ops']:,} ({o['step_batch']})",
                    f"**{o['augment_ops'] + o['step_ops']:,}**",
                ]
                + (
                    [
                        f"{o['augment_top_level_ops']:,}",
                        f"{o['step_top_level_ops']:,}",
                        f"**{o['augment_top_level_ops'] + o['step_top_level_ops']:,}**",
                    ]
                    if top
                    else []
                )
                for o in ops
            ],
            "lrrr" + ("rrr" if top else ""),
        )
        lines += (
            [
                "",
                "Top-level: called from Python, not from inside another ATen op (what a host-side "
                "dispatcher pays for per op).",
            ]
            if top
            else []
        )
    if not report["speed"]:
        return lines
    dn = [r for r in report["speed"] if r["arch"] == "densenet"]
    lines += [
        "",
        f"`augment.Augment` (the trial's augmentation: time stretch and noise, each p = 0.5) on {dev}, per "
        f"batch of {report['augment'][0]['batch']} crops, median of {report['augment'][0]['repeats']} calls "
        "(each draws new factors; the two alternate call by call and draw alike); the stretch runs torchaudio's "
        "sinc resampler once per stretched example:",
        "",
    ]
    lines += C.md_table(
        ["Augment", "s / batch (median)", "s / batch (mean)"]
        + (["share of a DenseNet step (fastest row above)"] if dn else [])
        + ["load 1-min"],
        [
            [a["augment"], f"{a['seconds_median']:.4f}", f"{a['seconds_mean']:.4f}"]
            + ([f"{100 * a['seconds_mean'] / min(r['step_s'] for r in dn):.1f} %"] if dn else [])
            + [f"{a['load_start']} -> {a['load_end']}"]
            for a in report["augment"]
        ],
        "lrr" + ("r" if dn else "") + "l",
    )
    if not dev.startswith("cuda"):
        lines += [
            "",
            f"bf16 autocast and channels_last on/off: {C.NO_GPU}; both are CUDA-only in `loop.autocast` "
            "and `loop.prepare_model`, so every row above is fp32 with contiguous tensors. Run "
            "`python -m benchmarks.trial --device cuda` on a GPU node for the four variants.",
        ]
    if report["wait"]:
        label = "GPU" if dev.startswith("cuda") else "CPU (trainer and Ray Data share the same cores)"
        lines += [
            "",
            f"Part 2: a real trial training from the Ray Data cache, on {label}: {s['train_tracks']} training "
            f"clips of {s['clip_seconds']:g} s, {s['epochs']} epoch(s), paper settings, "
            "the trial's own setup and epoch (`trainable.trial_setup`: its `Augment` on the device, its recipe); "
            f"Ray given {s['ray_cpus']} logical CPU(s); torch in the trainer with "
            f"{report['wait'][0]['epochs'][0]['torch_threads']} thread(s), as Ray gives a trial holding that "
            "many CPUs. 'wait' = time blocked in `next(batches)`; the first "
            "epoch's first batch also carries Ray Data's start-up.",
            "",
        ]
        rows = []
        for w in report["wait"]:
            for e in w["epochs"]:
                rows.append(
                    [
                        w["arch"],
                        e["epoch"],
                        e["batches"],
                        f"{e['seconds']:.1f}",
                        f"{e['wait_s']:.2f}",
                        f"{e['first_batch_wait_s']:.2f}",
                        f"{e['wait_s'] - e['first_batch_wait_s']:.2f}",
                        f"**{100 * e['wait_share']:.1f} %**",
                        C.fmt(e["samples_per_s"]),
                        f"{e['load_start']} -> {e['load_end']}",
                    ]
                )
        lines += C.md_table(
            [
                "arch",
                "epoch",
                "batches",
                "epoch s",
                "wait s",
                "of which first batch s",
                "of which later batches s",
                "wait share",
                "samples/s",
                "load 1-min",
            ],
            rows,
            "lrrrrrrrrl",
        )
        lines += [
            "",
            "The wait sits in each epoch's first batch (Ray Data starting the epoch's plan; in a trial's "
            "first epoch also its workers); later batches arrive prefetched. An FMA epoch has 200 batches of 32 "
            "(6,400 training clips) where this demo's has a few, so the first batch weighs far less there.",
        ]
    lines += ["", "Targets:", ""]
    lines += C.md_table(
        ["target", "goal", "measured", "status", "note"],
        [[t["target"], t["goal"], t["measured"], t["status"], t["note"]] for t in report["targets"]],
        "lllll",
    )
    return lines


if __name__ == "__main__":
    run_cli(main)
