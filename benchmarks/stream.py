"""Ray Data at FMA's scale: first-batch wait per epoch, steady samples/s, object store peak, spill.

    python -m benchmarks.stream                                  # FMA small's size: 8,000 x 30 s (~10.6 GB)
    python -m benchmarks.stream --tracks 25000 --modes streamed  # FMA medium's track count
    python -m benchmarks.stream --smoke                          # tiny: checks the script in seconds

The cache is synthetic (`mgc_ray.synth_cache`: random int16 noise written straight
into the cache's Parquet format, no mp3), in a fresh folder deleted at the end (kept
under `--work DIR` for the next run there).
Each mode then runs `data.train_batches` for a few epochs into a consumer that
only counts (so the figures are the pipeline's, not a model's), with training
windows of `Augment.input_len(10 s)` samples, batches of 32, as a trial gets them:

- `streamed`: `CacheDatasets.build(materialise=False)`: every epoch reads the
  shards in a new seeded file order;
- `materialised`: the blocks in the object store (`materialise=True`), a new
  seeded block order every epoch;
- `before`: the previous code path (`read_parquet` on every shard, then
  `randomize_block_order`: it waits for all of its input), first epoch only
  and stopped after `--before-batches` batches: the barrier's first-batch wait.

Per epoch: the wait for the first batch (from asking for the epoch's batches),
the steady rate (samples after the first batch / the time after it), and over
each mode the object store's peak use and the bytes spilled to disk (Ray's
memory summary, polled every 0.5 s).

Then the fixed cost of an epoch besides its training batches, against a GPU epoch of
FMA small (6,400 samples at 2,000 samples/s: 3.2 s), part by part: the validation
pass's reading (the split's centre crops into a consumer that only counts, read every
epoch as before, and iterated from the trial's held copy as now), and the checkpoint
of DenseNet-121 at the paper's settings with its Adam state (written as a trial
writes it, then copied once as Tune copies it into a local --storage-path). The new
Ray Data execution of each epoch is the first-batch wait above.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from typing import Sequence

from benchmarks import _common as C
from mgc_ray.config import CACHE_SAMPLE_RATE, CROP_SECONDS
from mgc_ray.errors import UserError, run_cli
from mgc_ray.trial.trainable import HELD_VAL_BYTES

NAME = "stream"
MODES = ("streamed", "materialised", "before")
BATCH = 32  # the paper's 2D batch
FIRST_BATCH_TARGET_S = 2.0  # issue 12: the streamed first batch of an FMA-small-sized epoch within 2 s
BEFORE_FIRST_BATCH_S = 45.4  # results/benchmarks/scale_cpu.json before issue 12: first batch of a streamed epoch
POLL_S = 0.5
GPU_EPOCH_S = 6400 / 2000  # a DenseNet-121 epoch of FMA small on a GPU at 2,000 samples/s


class StoreWatch:
    """Polls Ray's object store use and spilled bytes in a thread; keeps the peaks."""

    def __init__(self) -> None:
        import ray

        self.address = ray.get_runtime_context().gcs_address
        self.peak_used = 0.0
        self.spilled = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> tuple[float, float]:
        from ray._private.internal_api import memory_summary

        text = memory_summary(address=self.address, stats_only=True)
        used = re.search(r"Plasma memory usage ([\d.]+) MiB", text)
        spilled = re.search(r"Spilled ([\d.]+) MiB", text)
        return (float(used.group(1)) * 2**20 if used else 0.0, float(spilled.group(1)) * 2**20 if spilled else 0.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                used, spilled = self._sample()
            except Exception:  # noqa: BLE001 - a missed sample is no reason to stop the benchmark
                used, spilled = 0.0, 0.0
            self.peak_used, self.spilled = max(self.peak_used, used), max(self.spilled, spilled)
            self._stop.wait(POLL_S)

    def __enter__(self) -> "StoreWatch":
        self.base_spilled = self._sample()[1]
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.spilled = max(0.0, self.spilled - self.base_spilled)


def count_epoch(batches, limit: int | None = None) -> dict:
    """Consume an epoch's batches, only counting; first-batch wait and the steady rate after it."""
    t0 = time.perf_counter()
    first, n, n_batches = None, 0, 0
    for wave, label in batches:
        if first is None:
            first = time.perf_counter()
        else:
            n += len(label)
        n_batches += 1
        if limit is not None and n_batches >= limit:
            break
    end = time.perf_counter()
    if first is None:
        raise RuntimeError("no batch: the training split is smaller than one batch")
    return {
        "first_batch_s": first - t0,
        "batches": n_batches,
        "steady_samples": n,
        "steady_s": end - first,
        "steady_samples_per_s": C.rate(n, end - first),
        "seconds": end - t0,
    }


def _before_batches(manifest, window: int, seed: int, epoch: int):
    """The code path before issue 12: read_parquet of every shard, randomize_block_order (a barrier)."""
    import ray

    from mgc_ray.config import epoch_seed
    from mgc_ray.data.pipeline import CROP_TASK_CPUS, _crop_rows, _to_device

    ds = ray.data.read_parquet(manifest.shard_paths("train")).select_columns(["track_id", "label", "samples"])
    epoch_ds = ds.randomize_block_order(seed=epoch_seed(seed, epoch)).map_batches(
        _crop_rows,
        fn_kwargs=dict(crop_len=window, mode="random", seed=seed, epoch=epoch),
        batch_format="numpy",
        num_cpus=CROP_TASK_CPUS,
    )
    yield from _to_device(
        epoch_ds,
        batch_size=BATCH,
        device="cpu",
        drop_last=True,
        shuffle_buffer=4 * BATCH,
        shuffle_seed=epoch_seed(seed, epoch),
    )


def run_mode(mode: str, manifest, window: int, epochs: int, before_batches: int) -> dict:
    from mgc_ray.data.pipeline import CacheDatasets, train_batches

    rows = []
    with StoreWatch() as watch, C.timed() as t:
        if mode == "before":
            with C.timed() as tb:
                pass
            rows.append({"epoch": 0, **count_epoch(_before_batches(manifest, window, 0, 0), limit=before_batches)})
        else:
            with C.timed() as tb:
                datasets = CacheDatasets.build(manifest, materialise=(mode == "materialised"))
            for epoch in range(epochs):
                rows.append(
                    {
                        "epoch": epoch,
                        **count_epoch(
                            train_batches(
                                datasets, crop_len=window, batch_size=BATCH, seed=0, epoch=epoch, device="cpu"
                            )
                        ),
                    }
                )
                print(
                    f"{mode} epoch {epoch}: first batch {rows[-1]['first_batch_s']:.2f} s, "
                    f"{rows[-1]['steady_samples_per_s']:.0f} samples/s",
                    flush=True,
                )
            del datasets
    steady_n = sum(r["steady_samples"] for r in rows)
    steady_s = sum(r["steady_s"] for r in rows)
    return {
        "mode": mode,
        "build_s": tb.seconds,
        "epochs": rows,
        "steady_samples_per_s": C.rate(steady_n, steady_s),
        "first_batch_s_max": max(r["first_batch_s"] for r in rows),
        "object_store_peak_bytes": watch.peak_used,
        "spilled_bytes": watch.spilled,
        **t.as_dict(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = C.parser("python -m benchmarks.stream", __doc__, device=False)
    p.add_argument("--tracks", type=int, default=8000, help="tracks (FMA small 8,000; medium 25,000)")
    p.add_argument("--seconds", type=float, default=30.0, help="clip length (FMA's 30 s; shorter if the disk is short)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per mode")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--before-batches", type=int, default=40, help="batches the 'before' run consumes")
    p.add_argument("--object-store-gb", type=float, help="a local Ray's object store (default Ray's: 30 %% of RAM)")
    args = p.parse_args(argv)
    tracks, seconds, epochs = args.tracks, args.seconds, args.epochs
    if args.smoke:
        tracks, seconds, epochs = 160, 1.0, 2
    if tracks < 10:
        raise UserError("--tracks must be >= 10")
    import torch

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
        size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
        print(f"synthetic cache: {tracks} x {seconds:g} s in {tw.seconds:.0f} s, {size / 1e9:.2f} GB", flush=True)
        with _ray(args):
            import ray

            store_total = ray.cluster_resources().get("object_store_memory", 0)
            for mode in args.modes:
                runs.append(run_mode(mode, manifest, window, epochs, args.before_batches))
            fixed = fixed_cost(manifest, crop, work, args.smoke)
        if args.work is None:  # a --work folder keeps its cache for the next run
            shutil.rmtree(cache, ignore_errors=True)
    from mgc_ray.data.pipeline import TRIAL_OBJECT_STORE_BYTES

    report = {
        "name": NAME,
        "machine": m,
        "smoke": args.smoke,
        "settings": {
            "tracks": tracks,
            "clip_seconds": seconds,
            "train_tracks": manifest.num_tracks["train"],
            "epochs": epochs,
            "batch": BATCH,
            "window_samples": window,
            "crop_samples": crop,
            "object_store_bytes": store_total,
            "trial_object_store_cap_bytes": TRIAL_OBJECT_STORE_BYTES,
            "joined_cluster": bool(args.address),
        },
        "cache": {**tw.as_dict(), "bytes": size, "reused": reused},
        "runs": runs,
        "fixed_cost": fixed,
    }
    report["targets"] = _targets(report)
    full = (tracks, seconds) == (8000, 30.0) or args.smoke
    C.write_report(C.out_dir(args), NAME if full else f"{NAME}_{tracks}x{seconds:g}s", report, to_markdown(report))
    return 0


def fixed_cost(manifest, crop: int, work, smoke: bool) -> dict:
    """The validation pass's reading (every epoch, and held), and a DenseNet-121 checkpoint (write, copy)."""
    import shutil as sh

    import torch

    from mgc_ray.config import PAPER
    from mgc_ray.data.pipeline import CacheDatasets, eval_batches
    from mgc_ray.trial.trainable import trial_setup

    datasets = CacheDatasets.build(manifest, materialise=False)
    reads = []
    for _ in range(2):
        with C.timed() as t:
            held = list(eval_batches(datasets.val, crop_len=crop, batch_size=2 * BATCH, device="cpu"))
        reads.append(t.seconds)
    with C.timed() as th:
        n_held = sum(len(b[1]) for b in held)
    held_bytes = sum(b[0].numel() * b[0].element_size() for b in held)
    del held, datasets
    cfg = PAPER["densenet"].train_config(**({"window": 512, "n_mels": 32, "crop_seconds": 1.0} if smoke else {}))
    setup = trial_setup(cfg, manifest, torch.device("cpu"))  # the trial's model and Adam
    setup.model(torch.zeros(2, setup.mcfg.crop_samples)).sum().backward()  # one step: Adam's state as after any epoch
    setup.optimizer.step()
    d, storage = work / "ckpt", work / "storage"
    with C.timed() as tw:  # the trial's checkpoint (`TrialSetup.save`)
        setup.save(d, list(manifest.label_names), epoch=0, metrics={}, history=[], cost={})
    size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
    with C.timed() as tc:
        sh.copytree(d, storage / "checkpoint_000000")
    sh.rmtree(d, ignore_errors=True)
    sh.rmtree(storage, ignore_errors=True)
    return {
        "val_tracks": n_held,
        "val_read_s": reads,
        "val_held_bytes": held_bytes,
        "val_held_iterate_s": th.seconds,
        "checkpoint_bytes": size,
        "checkpoint_write_s": tw.seconds,
        "checkpoint_copy_s": tc.seconds,
        "paper_settings": not smoke,
        "gpu_epoch_s": GPU_EPOCH_S,
    }


class _ray:
    """A local Ray with `--object-store-gb` (or the cluster at --address), stopped at the end."""

    def __init__(self, args) -> None:
        self.args = args

    def __enter__(self):
        import ray

        if ray.is_initialized():
            self.started = False
            return self
        from mgc_ray import cluster

        store = int(self.args.object_store_gb * 2**30) if self.args.object_store_gb else None
        cluster.init(self.args.address or None, object_store_memory=store, logging_level="WARNING", log_to_driver=False)
        self.started = True
        return self

    def __exit__(self, *exc):
        import ray

        if self.started:
            ray.shutdown()


def _targets(report: dict) -> list[dict]:
    s = report["settings"]
    by = {r["mode"]: r for r in report["runs"]}
    full = s["tracks"] >= 8000 and s["clip_seconds"] >= 30
    out = []
    if "streamed" in by:
        r = by["streamed"]
        status = (C.MET if r["first_batch_s_max"] < FIRST_BATCH_TARGET_S else C.NOT_MET) if full else C.NOT_MEASURED
        out.append(
            C.target(
                "stream: streamed first batch of an FMA-small-sized epoch (8,000 x 30 s)",
                f"< {FIRST_BATCH_TARGET_S:g} s (before: {BEFORE_FIRST_BATCH_S} s)",
                f"{r['first_batch_s_max']:.2f} s at most over {len(r['epochs'])} epochs of "
                f"{s['tracks']} x {s['clip_seconds']:g} s; {r['steady_samples_per_s']:.0f} samples/s",
                status,
                "" if full else "run at FMA small's size: python -m benchmarks.stream",
            )
        )
    if "materialised" in by:
        r = by["materialised"]
        out.append(
            C.target(
                f"stream: materialised epochs ({s['tracks']:,} x {s['clip_seconds']:g} s)",
                "first batch within about a second",
                f"{r['first_batch_s_max']:.2f} s at most; {r['steady_samples_per_s']:.0f} samples/s",
                C.MEASURED,
            )
        )
    return out


def to_markdown(report: dict) -> list[str]:
    s, c = report["settings"], report["cache"]
    lines = [
        C.title("Ray Data at FMA's scale: first batch, steady rate, object store", report["smoke"]),
        "",
        f"Written by `python -m benchmarks.stream`: a synthetic cache of {s['tracks']:,} tracks x {s['clip_seconds']:g} s "
        f"({s['train_tracks']:,} training tracks; {c['bytes'] / 1e9:.2f} GB of Parquet, "
        + ("reused from an earlier run's --work" if c.get("reused") else f"written in {c['seconds']:.0f} s")
        + f"), batches of {s['batch']} windows of {s['window_samples']:,} samples "
        f"(a 10-s crop plus the stretch's margin) into a consumer that only counts; object store "
        f"{s['object_store_bytes'] / 1e9:.1f} GB; a streamed trial's Ray Data capped at "
        f"{s['trial_object_store_cap_bytes'] / 2**30:.0f} GiB of it.",
        "",
    ]
    rows = []
    for r in report["runs"]:
        for e in r["epochs"]:
            rows.append(
                [
                    r["mode"],
                    e["epoch"],
                    f"**{e['first_batch_s']:.2f}**",
                    e["batches"],
                    f"{e['steady_samples_per_s']:.0f}",
                    f"{r['object_store_peak_bytes'] / 1e9:.2f} GB",
                    f"{r['spilled_bytes'] / 1e9:.2f} GB",
                    f"{r['load_start']} -> {r['load_end']}",
                ]
            )
    lines += C.md_table(
        [
            "mode",
            "epoch",
            "first batch (s)",
            "batches",
            "steady samples/s",
            "store peak (mode)",
            "spilled (mode)",
            "load 1-min",
        ],
        rows,
        "lrrrrrrl",
    )
    if any(r["mode"] == "before" for r in report["runs"]):
        lines += [
            "",
            "`before` is the code path before issue 12 (read_parquet of every shard, then "
            "randomize_block_order, which waits for all of its input), stopped after its first batches: its "
            f"first-batch wait is the barrier's. The earlier measurement on the demo-mp3 cache: "
            f"{BEFORE_FIRST_BATCH_S} s (scale_cpu.json).",
        ]
    f = report["fixed_cost"]
    streamed = [e["first_batch_s"] for r in report["runs"] if r["mode"] == "streamed" for e in r["epochs"][1:]]
    lines += [
        "",
        f"## Fixed cost of an epoch (against a {f['gpu_epoch_s']:.1f}-s GPU epoch of FMA small)",
        "",
        *C.md_table(
            ["part", "seconds", "share of the GPU epoch", "note"],
            [
                [
                    "new Ray Data execution (streamed first batch, warm workers)",
                    f"{max(streamed):.2f}" if streamed else "-",
                    f"{100 * max(streamed) / f['gpu_epoch_s']:.0f} %" if streamed else "-",
                    "overlaps nothing: the GPU waits for it",
                ],
                [
                    f"validation reading, every epoch ({f['val_tracks']} centre crops)",
                    " / ".join(f"{x:.2f}" for x in f["val_read_s"]),
                    f"{100 * min(f['val_read_s']) / f['gpu_epoch_s']:.0f} %",
                    "before: read again every epoch",
                ],
                [
                    f"validation reading, held ({f['val_held_bytes'] / 1e9:.2f} GB of float32 on the trial's device)",
                    f"{f['val_held_iterate_s']:.3f}",
                    f"{100 * f['val_held_iterate_s'] / f['gpu_epoch_s']:.1f} %",
                    "now: read in the first epoch only"
                    if f["val_held_bytes"] <= HELD_VAL_BYTES
                    else f"above the {HELD_VAL_BYTES / 2**30:g} GiB a trial holds: read every epoch, as before",
                ],
                [
                    f"checkpoint write (DenseNet-121 + Adam state, {f['checkpoint_bytes'] / 1e6:.0f} MB)",
                    f"{f['checkpoint_write_s']:.2f}",
                    f"{100 * f['checkpoint_write_s'] / f['gpu_epoch_s']:.0f} %",
                    "every epoch: what a restart needs",
                ],
                [
                    "checkpoint copy into a local --storage-path (Tune's)",
                    f"{f['checkpoint_copy_s']:.2f}",
                    f"{100 * f['checkpoint_copy_s'] / f['gpu_epoch_s']:.0f} %",
                    "inside tune.report",
                ],
            ],
            "lrrl",
        ),
        "",
        "The validation pass's model time is not in these figures (it is the model's, on the GPU); "
        "each trial reports its own split per epoch as time/train_s, time/val_s, time/checkpoint_s and "
        "time/report_s.",
    ]
    return lines


if __name__ == "__main__":
    run_cli(main)
