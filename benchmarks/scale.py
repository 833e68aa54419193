"""An FMA-small-sized demo dataset: writing it, preparing its cache (time and size), one DenseNet epoch over it.

    python -m benchmarks.scale                            # 40 tracks per genre = 320 x 30 s (4-6 min on 2 cores)
    python -m benchmarks.scale --tracks-per-genre 1000    # FMA small's size: 8,000 x 30 s (~30+ min to write on 2 cores)
    python -m benchmarks.scale --device cuda              # the DenseNet epoch on the GPU
    python -m benchmarks.scale --smoke                    # tiny: checks the script in seconds

Always in a fresh folder (nothing reused, so every step is timed from scratch),
with Ray started before the timers:

1. `demo.write_demo`: synthesise and mp3-encode the clips (the demo's own cost;
   a user with FMA has the mp3s already);
2. `prepare.prepare`: decode, downmix, resample and write the int16 Parquet cache
   as Ray tasks: time, tracks/s and the cache's size on disk;
3. `CacheDatasets.build`: read the shards into the object store (once per search);
4. one training epoch of DenseNet-121 at paper settings over the training split,
   the trial's own setup and epoch (`trainable.trial_setup`: Ray Data batches,
   the trial's `Augment`, `train_epoch`; see `benchmarks.trial`), with the time
   waiting for data.

Rates are measured per track at the size run. FMA small's 8,000 clips are only
reached with `--tracks-per-genre 1000`; below that the report adds a linear
projection to 8,000 clips, labelled as such, never as a measurement.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Sequence

from benchmarks import _common as C
from benchmarks.trial import trial_wait
from mgc_ray.config import CACHE_SAMPLE_RATE
from mgc_ray.errors import run_cli

NAME = "scale"
FMA_SMALL_TRACKS = 8000
FMA_CLIP_SECONDS = 30.0
EPOCH_ARCH = "densenet"
SMOKE_EPOCH = dict(window=512, n_mels=32, crop_seconds=2.0, batch_size=4)
SMOKE_ARCH = "baseline_a_2d"  # the smoke run checks the loop, not DenseNet (benchmarks.trial's smoke builds that)


def main(argv: Sequence[str] | None = None) -> int:
    p = C.parser("python -m benchmarks.scale", __doc__)
    p.add_argument("--tracks-per-genre", type=int, default=40, help="demo tracks per genre (FMA small: 1000)")
    p.add_argument("--seconds", type=float, default=30.0, help="clip length (FMA's 30 s)")
    args = p.parse_args(argv)
    device = C.resolve_device(args.device)
    m = C.machine(device)
    tpg, seconds, overrides, arch = args.tracks_per_genre, args.seconds, {}, EPOCH_ARCH
    if args.smoke:
        tpg, seconds, overrides, arch = 3, 3.0, SMOKE_EPOCH, SMOKE_ARCH
    from mgc_ray.data.pipeline import CacheDatasets

    with C.work_dir(args.work) as work, C.ray_session(args.address):
        fresh = work / f"scale-{uuid.uuid4().hex[:8]}"  # nothing is reused: both steps are timed from scratch
        data = C.demo_data(fresh, tpg, seconds, address=args.address)
        tw, tp, manifest, n = data.write, data.prepare, data.manifest, data.tracks
        size = data.cache_bytes()
        mp3_bytes = sum(f.stat().st_size for f in Path(data.root).rglob("*.mp3"))
        print(f"write_demo: {8 * tpg} clips in {tw.seconds:.1f} s", flush=True)
        print(f"prepare: {n} clips in {tp.seconds:.1f} s, cache {size / 1e6:.0f} MB", flush=True)
        with C.timed() as tb:
            datasets = CacheDatasets.build(manifest)
        epoch = trial_wait(datasets, manifest, arch, device, epochs=1, overrides=overrides)
        e = epoch["epochs"][0]
        print(
            f"one {arch} epoch: {e['batches']} batches in {e['seconds']:.1f} s, "
            f"{e['samples_per_s']:.1f} samples/s, {100 * e['wait_share']:.1f} % waiting for data",
            flush=True,
        )
    n_train = manifest.num_tracks["train"]
    report = {
        "name": NAME,
        "machine": m,
        "smoke": args.smoke,
        "settings": {
            "tracks_per_genre": tpg,
            "tracks": 8 * tpg,
            "clip_seconds": seconds,
            "sample_rate": CACHE_SAMPLE_RATE,
            "epoch_arch": arch,
            "epoch_overrides": overrides,
            "joined_cluster": bool(args.address),
        },
        "write_demo": {**tw.as_dict(), "tracks_per_s": C.rate(8 * tpg, tw.seconds), "mp3_bytes": mp3_bytes},
        "prepare": {
            **tp.as_dict(),
            "tracks": n,
            "tracks_per_s": C.rate(n, tp.seconds),
            "cache_bytes": size,
            "bad_tracks": len(manifest.bad_tracks),
            "bytes_per_track": size / n,
            "int16_bytes": n * seconds * CACHE_SAMPLE_RATE * 2,
        },
        "materialise": {**tb.as_dict(), "materialised": datasets.materialised},
        "epoch": {**e, "arch": arch, "train_tracks": n_train},
        "projection_to_fma_small": None
        if 8 * tpg >= FMA_SMALL_TRACKS
        else _project(
            FMA_SMALL_TRACKS * FMA_CLIP_SECONDS / (8 * tpg * seconds),
            FMA_SMALL_TRACKS / (8 * tpg),
            tw.seconds,
            tp.seconds,
            size,
            e["seconds"],
        ),
    }
    report["targets"] = _targets(report)
    C.write_report(C.out_dir(args), NAME, report, to_markdown(report))
    return 0


def _project(
    audio_factor: float, track_factor: float, write_s: float, prepare_s: float, size: int, epoch_s: float
) -> dict:
    """Linear in hours of audio (writing, preparing, the cache) and in clips (an epoch: one crop per clip).
    NOT a measurement: parallelism, caches and memory can bend it."""
    return {
        "factor": track_factor,
        "audio_factor": audio_factor,
        "write_demo_s": write_s * audio_factor,
        "prepare_s": prepare_s * audio_factor,
        "cache_bytes": size * audio_factor,
        "epoch_s": epoch_s * track_factor,
    }


def _targets(report: dict) -> list[dict]:
    s, pr, e = report["settings"], report["prepare"], report["epoch"]
    full = s["tracks"] >= FMA_SMALL_TRACKS
    measured = (
        f"{s['tracks']} clips here: prepare {pr['tracks_per_s']:.1f} clips/s, cache "
        f"{pr['bytes_per_track'] / 1e6:.2f} MB/clip, {e['arch']} epoch {e['samples_per_s']:.1f} samples/s "
        f"on {report['machine']['device']}"
    )
    return [
        C.target(
            "scale: FMA-small-sized demo (8,000 x 30 s) prepared, cached, one DenseNet epoch",
            "report time and cache size",
            measured,
            C.MEASURED if full else C.NOT_MEASURED,
            ""
            if full
            else (
                "the 8,000-clip run was not done here (writing the demo alone takes ~30+ min on "
                "2 cores); run python -m benchmarks.scale --tracks-per-genre 1000"
            ),
        )
    ]


def to_markdown(report: dict) -> list[str]:
    s, w, pr, mt, e = (report[k] for k in ("settings", "write_demo", "prepare", "materialise", "epoch"))
    lines = [
        C.title("Scale: an FMA-small-sized demo, prepared and cached, one DenseNet epoch", report["smoke"]),
        "",
        f"Written by `python -m benchmarks.scale`: {s['tracks']} demo clips ({s['tracks_per_genre']} per genre) of "
        f"{s['clip_seconds']:g} s, in a fresh folder. **Measured at this size only.**",
        "",
    ]
    lines += C.md_table(
        ["step", "clips", "seconds", "clips/s", "size", "load 1-min"],
        [
            [
                "write_demo (synthesis + mp3 encoding; not a user's cost)",
                s["tracks"],
                f"{w['seconds']:.1f}",
                C.fmt(w["tracks_per_s"]),
                f"{w['mp3_bytes'] / 1e6:.0f} MB of mp3",
                f"{w['load_start']} -> {w['load_end']}",
            ],
            [
                "prepare (decode + resample + int16 Parquet, Ray tasks)",
                pr["tracks"],
                f"{pr['seconds']:.1f}",
                f"**{C.fmt(pr['tracks_per_s'])}**",
                f"**{pr['cache_bytes'] / 1e6:.0f} MB** cache "
                f"({pr['bytes_per_track'] / 1e6:.2f} MB/clip; raw int16 {pr['int16_bytes'] / 1e6:.0f} MB)",
                f"{pr['load_start']} -> {pr['load_end']}",
            ],
            [
                "CacheDatasets.build (into the object store, once per search)",
                pr["tracks"],
                f"{mt['seconds']:.1f}",
                C.fmt(C.rate(pr["tracks"], mt["seconds"])),
                "materialised" if mt["materialised"] else "streamed",
                f"{mt['load_start']} -> {mt['load_end']}",
            ],
            [
                f"one {e['arch']} training epoch ({report['machine']['device']}), batch {e['batch']}",
                e["train_tracks"],
                f"{e['seconds']:.1f}",
                f"**{C.fmt(e['samples_per_s'])}** samples/s",
                f"{100 * e['wait_share']:.1f} % waiting for data",
                f"{e['load_start']} -> {e['load_end']}",
            ],
        ],
        "lrrrll",
    )
    pj = report["projection_to_fma_small"]
    if pj:
        lines += [
            "",
            f"**Not measured: FMA small's 8,000 clips of 30 s.** A linear projection from the {s['tracks']} "
            f"clips above (x{pj['audio_factor']:.0f} the audio, x{pj['factor']:.0f} the clips per epoch; an "
            "estimate, not a measurement: parallelism, memory and the object store's size can bend it):",
            "",
        ]
        lines += C.md_table(
            ["step (projected, 8,000 clips)", "projected"],
            [
                ["write_demo", f"~{pj['write_demo_s'] / 60:.0f} min"],
                ["prepare", f"~{pj['prepare_s'] / 60:.0f} min"],
                ["cache size", f"~{pj['cache_bytes'] / 1e9:.1f} GB"],
                [f"one {e['arch']} epoch on {report['machine']['device']}", f"~{pj['epoch_s'] / 60:.0f} min"],
            ],
            "lr",
        )
        lines += [
            "",
            "To measure it: `python -m benchmarks.scale --tracks-per-genre 1000` (on 2 cores the demo "
            "alone takes 30+ min; on a 16-core node writing and preparing scale with the cores).",
        ]
    if report["machine"]["gpu"] is None:
        lines += ["", f"The DenseNet epoch on a GPU: {C.NO_GPU} (`--device cuda` on a GPU node)."]
    return lines


if __name__ == "__main__":
    run_cli(main)
