"""The wait at an epoch's start, before and after the next epoch's Ray Data execution is started early.

    python -m benchmarks.epoch_gap                 # FMA small's 8,000 tracks, 3-s clips; both modes, both ways
    python -m benchmarks.epoch_gap --seconds 30 --modes streamed   # FMA's 30-s clips (10.6 GB of Parquet)
    python -m benchmarks.epoch_gap --smoke         # tiny: checks the script in seconds

Each epoch is a new Ray Data execution (`data.train_batches`), and a trial used to ask for it only
after validating, checkpointing and reporting the epoch before: the GPU waited for that execution's
first batch at every epoch's start. `data.epochs.TrainEpochs` starts epoch e + 1 the moment epoch
e's batches run out, so its first batch is read while the trial validates and checkpoints. This
measures the wait that is left: the time from the training loop asking for an epoch's first batch
to getting it, for epochs after the first (epoch 0 also starts Ray Data's worker processes, once
per trial), in each data mode:

- `streamed`: `CacheDatasets.build(materialise=False)` (the shards read in a new order every epoch);
- `materialised`: the blocks in the object store (`materialise=True`);

and each way:

- `before`: `train_batches(..., epoch=e)` asked for when epoch e starts (the trial before issue 23);
- `after`: the epochs of `TrainEpochs` (the trial now).

The cache is synthetic (`mgc_ray.synth_cache`: FMA small's track count and 80/10/10 split, random
int16 noise) with 3-s clips by default, as the project's other at-scale tests use: the epoch's
shards, blocks and tasks are FMA small's; a 30-s clip only makes each shard's read longer. The
training windows are a trial's at the paper's settings (a 10-s crop plus the stretch's margin,
batches of 32). The consumer stands in for a GPU, so the figures are the data path's, not a model's:
it sleeps per batch for a DenseNet-121 epoch of FMA small on an H200 (3.2 s over the epoch's
batches), and between epochs for the validation pass, checkpoint and report (`--between-s`).
Runs are interleaved (each repeat runs every mode and way in turn) so that the shared machine's
load falls on all of them alike.
"""

from __future__ import annotations

import shutil
import statistics
import time
from typing import Sequence

from benchmarks import _common as C
from benchmarks.stream import BATCH, GPU_EPOCH_S
from benchmarks.stream import _ray as local_ray
from mgc_ray.config import CACHE_SAMPLE_RATE, CROP_SECONDS
from mgc_ray.errors import UserError, run_cli

NAME = "epoch_gap"
MODES = ("streamed", "materialised")
WAYS = ("before", "after")
# Between two epochs a trial validates (800 centre crops of FMA small: ~0.15 s for DenseNet-121 on an
# H200 at about 3x its 2,000 training samples/s), writes its checkpoint (0.31 s for DenseNet-121 and its
# Adam state, stream_cpu.md) and reports (Tune's copy, 0.04 s): about half a second.
BETWEEN_S = 0.5
GAP_TARGET = 0.05  # issue 23: the GPU idle less than 5 % of an epoch


def _consume(batches, step_s: float) -> dict:
    """One epoch into a stand-in GPU: the wait for the first batch, then `step_s` of sleep per batch."""
    it = iter(batches)
    t0 = time.perf_counter()
    first = next(it, None)
    wait = time.perf_counter() - t0
    if first is None:
        raise RuntimeError("no batch: the training split is smaller than one batch")
    n, slept = len(first[1]), step_s
    time.sleep(step_s)
    for _, label in it:
        n += len(label)
        time.sleep(step_s)
        slept += step_s
    seconds = time.perf_counter() - t0
    return {"first_batch_wait_s": wait, "samples": n, "seconds": seconds, "model_s": slept}


def run_once(datasets, mode: str, way: str, *, window: int, epochs: int, step_s: float, between_s: float) -> dict:
    """`epochs` epochs of one mode and way; returns per-epoch rows (epoch 0 included, marked)."""
    from mgc_ray.data.epochs import TrainEpochs
    from mgc_ray.data.pipeline import train_batches

    def batches(epoch: int):
        return train_batches(datasets, crop_len=window, batch_size=BATCH, seed=0, epoch=epoch, device="cpu")

    rows = []
    with C.timed() as t:
        if way == "before":
            for epoch in range(epochs):
                rows.append({"epoch": epoch, "ready_at_start": 0, **_consume(batches(epoch), step_s)})
                time.sleep(between_s)  # validation, checkpoint, report: then the next epoch is asked for
        else:
            with TrainEpochs(batches, range(epochs)) as run:
                for epoch, b in run:
                    ready = run.ahead.ready if run.ahead is not None else 0  # before this epoch was taken
                    rows.append({"epoch": epoch, "ready_at_start": ready, **_consume(b, step_s)})
                    time.sleep(between_s)
    for r in rows:
        print(
            f"{mode} {way} epoch {r['epoch']}: first batch after {r['first_batch_wait_s']:.3f} s "
            f"({r['ready_at_start']} ready), epoch {r['seconds']:.1f} s",
            flush=True,
        )
    return {"mode": mode, "way": way, "epochs": rows, **t.as_dict()}


def summarise(runs: list[dict]) -> list[dict]:
    """Per mode and way: the waits of every epoch after the first, over every repeat."""
    out = []
    for mode in MODES:
        for way in WAYS:
            waits = [
                e["first_batch_wait_s"] for r in runs if (r["mode"], r["way"]) == (mode, way) for e in r["epochs"][1:]
            ]
            if not waits:
                continue
            out.append(
                {
                    "mode": mode,
                    "way": way,
                    "n": len(waits),
                    "mean_s": statistics.fmean(waits),
                    "sd_s": statistics.stdev(waits) if len(waits) > 1 else 0.0,
                    "min_s": min(waits),
                    "median_s": statistics.median(waits),
                    "max_s": max(waits),
                }
            )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = C.parser("python -m benchmarks.epoch_gap", __doc__, device=False)
    p.add_argument("--tracks", type=int, default=8000, help="tracks (FMA small: 8,000, of which 6,400 train)")
    p.add_argument("--seconds", type=float, default=3.0, help="clip length (3 s as the at-scale tests; FMA's is 30)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is not a gap between epochs)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each mode and way")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--between-s", type=float, default=BETWEEN_S, help="validation + checkpoint + report, per epoch")
    p.add_argument("--gpu-epoch-s", type=float, default=GPU_EPOCH_S, help="the stand-in model's time per epoch")
    p.add_argument("--object-store-gb", type=float, help="a local Ray's object store (default Ray's: 30 %% of RAM)")
    args = p.parse_args(argv)
    tracks, seconds, epochs, repeats = args.tracks, args.seconds, args.epochs, args.repeats
    gpu_epoch_s, between_s = args.gpu_epoch_s, args.between_s
    if args.smoke:  # 4 batches an epoch: a 3.2-s stand-in would sleep 0.8 s per batch
        tracks, seconds, epochs, repeats, gpu_epoch_s, between_s = 160, 1.0, 3, 1, 0.2, 0.05
    if tracks < 10 or epochs < 2 or repeats < 1:
        raise UserError("--tracks must be >= 10, --epochs >= 2 (the gap is between epochs), --repeats >= 1")
    import torch

    from mgc_ray.data.pipeline import CacheDatasets
    from mgc_ray.synth_cache import synthetic_dataset, write_synthetic_cache
    from mgc_ray.trial.augment import Augment

    m = C.machine(torch.device("cpu"))
    crop = int(round(CROP_SECONDS * CACHE_SAMPLE_RATE)) if not args.smoke else CACHE_SAMPLE_RATE // 2
    window = Augment().input_len(crop)
    runs = []
    with C.work_dir(args.work) as work:
        cache = work / f"synth-{tracks}x{seconds:g}"
        reused = (cache / "manifest.json").is_file()
        with C.timed() as tw:
            if reused:  # a complete one from an earlier run with this --work
                from mgc_ray.data.cache import read_manifest

                manifest = read_manifest(cache)
            else:
                shutil.rmtree(cache, ignore_errors=True)
                manifest = write_synthetic_cache(cache, synthetic_dataset(tracks), seconds)
        train = manifest.num_tracks["train"]
        step_s = gpu_epoch_s / max(1, train // BATCH)  # the stand-in GPU's step: an epoch in gpu_epoch_s
        print(f"synthetic cache: {tracks} x {seconds:g} s ({train} train) in {tw.seconds:.0f} s", flush=True)
        out = C.out_dir(args)
        name = NAME if (tracks, seconds) == (8000, 3.0) else f"{NAME}_{tracks}x{seconds:g}s"

        def write(done: int) -> None:  # after every repeat: a run stopped later keeps what it measured
            report = {
                "name": NAME,
                "machine": dict(m),
                "smoke": args.smoke,
                "settings": {
                    "tracks": tracks,
                    "clip_seconds": seconds,
                    "train_tracks": train,
                    "epochs": epochs,
                    "repeats": done,
                    "batch": BATCH,
                    "window_samples": window,
                    "gpu_epoch_s": gpu_epoch_s,
                    "step_s": step_s,
                    "between_s": between_s,
                    "joined_cluster": bool(args.address),
                },
                "cache": {**tw.as_dict(), "reused": reused},
                "runs": runs,
                "summary": summarise(runs),
            }
            report["targets"] = _targets(report)
            C.write_report(out, name, report, to_markdown(report))

        with local_ray(args):
            built = {mode: CacheDatasets.build(manifest, materialise=(mode == "materialised")) for mode in args.modes}
            for repeat in range(repeats):
                for mode in args.modes:
                    for way in WAYS:
                        runs.append(
                            run_once(
                                built[mode],
                                mode,
                                way,
                                window=window,
                                epochs=epochs,
                                step_s=step_s,
                                between_s=between_s,
                            )
                        )
                write(repeat + 1)
            del built
        if args.work is None:
            shutil.rmtree(cache, ignore_errors=True)
    return 0


def _targets(report: dict) -> list[dict]:
    s = report["settings"]
    out = []
    by = {(r["mode"], r["way"]): r for r in report["summary"]}
    for mode in MODES:
        before, after = by.get((mode, "before")), by.get((mode, "after"))
        if not (before and after):
            continue
        share = after["mean_s"] / s["gpu_epoch_s"]
        full = s["tracks"] >= 8000 and not report["smoke"]
        out.append(
            C.target(
                f"epoch_gap: the wait at a {mode} epoch's start ({s['tracks']:,} x {s['clip_seconds']:g} s)",
                f"< {100 * GAP_TARGET:.0f} % of a {s['gpu_epoch_s']:g}-s GPU epoch",
                f"{after['mean_s']:.2f} s mean ({100 * share:.0f} %), before {before['mean_s']:.2f} s; "
                f"{after['n']} epochs, {s['between_s']:g} s between epochs",
                (C.MET if share < GAP_TARGET else C.NOT_MET) if full else C.NOT_MEASURED,
                "" if full else "run at FMA small's size: python -m benchmarks.epoch_gap",
            )
        )
    return out


def to_markdown(report: dict) -> list[str]:
    s = report["settings"]
    lines = [
        C.title("The wait at an epoch's start: before and after the next epoch is prefetched", report["smoke"]),
        "",
        f"Written by `python -m benchmarks.epoch_gap`: a synthetic cache of {s['tracks']:,} tracks x "
        f"{s['clip_seconds']:g} s ({s['train_tracks']:,} training tracks, FMA small's split), batches of "
        f"{s['batch']} windows of {s['window_samples']:,} samples. The consumer stands in for the GPU: "
        f"{1000 * s['step_s']:.0f} ms of sleep per batch (a {s['gpu_epoch_s']:g}-s DenseNet-121 epoch of FMA "
        f"small on an H200) and {s['between_s']:g} s between epochs (validation, checkpoint, report), so the "
        "figures are the data path's. The wait is from asking for an epoch's first batch to getting it, "
        f"for epochs 1 to {s['epochs'] - 1} of {s['repeats']} run(s) per mode and way "
        "(epoch 0 also starts Ray Data's workers, once per trial).",
        "",
        "- `before`: each epoch's `train_batches` asked for when the epoch starts (the trial before issue 23);",
        "- `after`: `data.epochs.TrainEpochs`, which starts the next epoch's execution when an epoch's "
        "batches run out (the trial now).",
        "",
    ]
    rows = []
    for r in report["summary"]:
        rows.append(
            [
                r["mode"],
                r["way"],
                r["n"],
                f"**{r['mean_s']:.3f}**",
                f"{r['sd_s']:.3f}",
                f"{r['min_s']:.3f} / {r['median_s']:.3f} / {r['max_s']:.3f}",
                f"{100 * r['mean_s'] / s['gpu_epoch_s']:.1f} %",
            ]
        )
    lines += C.md_table(
        ["mode", "way", "epochs", "mean wait (s)", "sd (s)", "min / median / max (s)", "of a GPU epoch"], rows
    )
    lines += ["", "Every epoch:", ""]
    per = []
    for i, r in enumerate(report["runs"]):
        for e in r["epochs"]:
            per.append(
                [
                    r["mode"],
                    r["way"],
                    i // (2 * len({x["mode"] for x in report["runs"]})),
                    e["epoch"],
                    f"{e['first_batch_wait_s']:.3f}",
                    e["ready_at_start"],
                    f"{e['seconds']:.1f}",
                    f"{C.rate(e['samples'], e['seconds']):.0f}",
                    f"{r['load_start']} -> {r['load_end']}",
                ]
            )
    lines += C.md_table(
        [
            "mode",
            "way",
            "repeat",
            "epoch",
            "first batch wait (s)",
            "batches ready",
            "epoch (s)",
            "samples/s",
            "load 1-min (run)",
        ],
        per,
        "llrrrrrrl",
    )
    lines += [
        "",
        "`batches ready`: the next epoch's batches the prefetch had pulled when the epoch began (at most "
        "`data.epochs.PREFETCH_BATCHES`). On this 2-core machine an epoch is bound by the CPUs' reading and "
        "cropping, not by the stand-in's 3.2 s; the wait at its start is what the GPU would see.",
        "",
        "What the prefetch can hide: it starts when an epoch's batches run out, so it has the time between "
        f"epochs ({s['between_s']:g} s here) before the next epoch asks; the wait left is the first batch's "
        "time less that, and nothing when the first batch comes sooner.",
    ]
    return lines


if __name__ == "__main__":
    run_cli(main)
