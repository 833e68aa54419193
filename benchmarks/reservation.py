"""What a trial's reservation for its own Ray Data reads costs its throughput.

    python -m benchmarks.reservation           # CPU: about 8 min on 2 quiet cores
    python -m benchmarks.reservation --smoke   # tiny: checks the script in a minute

A search's trial reserves one placement group on one node (`cluster.TrialResources.bundles`): its
trainable's CPUs and, beside them, the CPUs of its Ray Data reads, where every Ray Data task of the
trial runs (`data.pipeline.trial_reads`); no other trial, nor a trial retried after a node is lost,
can take those. Before, a trial held only its trainable's CPUs, and its reads took any free CPU.
This runs a real trial both ways: the driver's `placed_trainable` (`train_trial` itself, through
Tune) with the search's plan for this machine (`cluster.plan_resources`: 1 CPU to train, 1 for the
reads) and with the same plan less the reads bundle (what searches did before). Both ways alternate,
REPEATS times each, on a streamed and on a materialised cache of synthetic 30-s clips (FMA's length,
in FMA's shards of 64 tracks), of 2D Baseline A on small inputs (0.5-s crops, 512-sample windows, 32
mels, batch 32, augmentation on: the node-loss test's trial), a trial that trains fast enough on a CPU
to wait for its reads, so that what the reads get shows in its rate. Per trial, over the epochs after the first (whose
first batch carries Ray Data's start-up): training samples/s and the share of the training time
spent waiting for data (`train/data_wait_s` / `time/train_s`).

Reads alone: `data.pipeline.train_batches` into a consumer that only counts, in a task placed as
Tune places a trainable, both ways: with a reads bundle of 1 CPU this is the most any trial whose
reads hold one CPU can get, whatever trains it. A GPU trial's reads get `data_cpus` CPUs (a quarter
of its node's cores split among the trials its GPUs hold, at least one), so this rate times its
`data_cpus` is its ceiling (see the report's last section).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Sequence

import torch

from benchmarks import _common as C
from mgc_ray.config import PAPER
from mgc_ray.errors import run_cli

NAME = "reservation"
ARCH = "baseline_a_2d"
REPEATS = 3  # trials per (cache, way): the spread is over these
EPOCHS = 2  # per trial; the first is left out of the rates (Ray Data's start-up)
TRACKS, SECONDS = 480, 30.0  # 384 training clips (6 shards of 64), 0.5 GB of Parquet
SMALL_INPUT = dict(window=512, n_mels=32, crop_seconds=0.5, batch_size=32)  # tests/e2e/test_faults_at_scale.py's
SMOKE = dict(tracks=48, seconds=2.0, repeats=1, epochs=2, batch_size=4)
WAYS = ("reserved", "not reserved")  # the reads bundle, or none (reads on any free CPU)
CACHES = ("streamed", "materialised")
# A GPU node as the search plans it (cluster.plan_resources): 16 cores and one GPU, DenseNet-121 at
# a quarter of it (4 trials, each 3 CPUs to train and 1 for its reads), small models at an eighth.
GPU_NODE_CPUS = 16
DENSENET_H100_TARGET = 2000  # samples/s, benchmarks.trial's target for DenseNet-121 on one H100 with bf16


def _start_ray(address: str | None, num_cpus: int) -> None:
    """`C.ray_session`'s Ray, started again when its raylet missed Ray's fixed 30-s start-up wait (a busy
    shared machine), as `cluster.start_for_search` does for a search."""
    import ray

    from mgc_ray import cluster

    for attempt in range(1, cluster.RAY_START_ATTEMPTS + 1):
        try:
            cluster.init(address, num_cpus=num_cpus, logging_level="WARNING", log_to_driver=False)
            return
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception for it
            if "timed out during startup" not in str(exc) or attempt == cluster.RAY_START_ATTEMPTS:
                raise
            ray.shutdown()


def _cache(work: Path, tracks: int, seconds: float):
    from mgc_ray.data.cache import MANIFEST, read_manifest
    from mgc_ray.synth_cache import synthetic_dataset, write_synthetic_cache

    out = work / f"synth-{tracks}x{seconds:g}s"
    if (out / MANIFEST).is_file():
        return read_manifest(out)
    return write_synthetic_cache(out, synthetic_dataset(tracks, seed=0), seconds=seconds, workers=C.cores_available())


def _trial(datasets, manifest, res, config: dict, storage: Path, name: str) -> list[dict]:
    """One Tune trial of `train_trial` placed as the search places it; its per-epoch results."""
    from ray import tune

    from mgc_ray.search.driver import placed_trainable

    tuner = tune.Tuner(
        placed_trainable(datasets, manifest, res),
        param_space=config,
        tune_config=tune.TuneConfig(num_samples=1),
        run_config=tune.RunConfig(storage_path=str(storage), name=name, verbose=0),
    )
    (result,) = list(tuner.fit())
    if result.error is not None:
        raise RuntimeError(f"the {name} trial failed: {result.error}")
    return result.metrics_dataframe.to_dict("records")


def _reads_alone(datasets, res, crop_len: int, batch_size: int, epochs: int) -> list[tuple[int, float]]:
    """(samples, seconds) per epoch of `train_batches` into a consumer that only counts, in a task placed as
    Tune places a trainable: in a placement group of `res.bundles()`, bundle 0, child tasks captured."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    def count(datasets, crop_len, batch_size, epochs):
        from mgc_ray.data.pipeline import train_batches

        out = []
        for epoch in range(epochs):
            t0, n = time.perf_counter(), 0
            for wave, _ in train_batches(datasets, crop_len=crop_len, batch_size=batch_size, seed=0, epoch=epoch):
                n += len(wave)
            out.append((n, time.perf_counter() - t0))
        return out

    pg = placement_group(res.bundles(), strategy="STRICT_PACK")
    ray.get(pg.ready(), timeout=300)
    try:
        where = PlacementGroupSchedulingStrategy(pg, 0, placement_group_capture_child_tasks=True)
        task = ray.remote(count).options(num_cpus=res.cpus, scheduling_strategy=where)
        return ray.get(task.remote(datasets, crop_len, batch_size, epochs), timeout=600)
    finally:
        remove_placement_group(pg)


def _stats(xs: Sequence[float]) -> dict:
    return {
        "mean": statistics.fmean(xs),
        "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0,
        "min": min(xs),
        "max": max(xs),
        "n": len(xs),
    }


def _trial_rates(rows: list[dict]) -> dict:
    """Samples/s and data-wait share over the epochs after the first (all of them if there is only one)."""
    later = rows[1:] or rows
    train_s = sum(r["time/train_s"] for r in later)
    return {
        "samples_per_s": statistics.fmean(r["train/samples_per_s"] for r in later),
        "wait_share": sum(r["train/data_wait_s"] for r in later) / train_s if train_s else 0.0,
        "epochs": [
            {k: r[k] for k in ("epoch", "train/samples_per_s", "train/data_wait_s", "time/train_s", "node_id")}
            for r in rows
        ],
    }


def run(args) -> dict:
    import ray

    from mgc_ray import cluster
    from mgc_ray.data.pipeline import CacheDatasets

    size = SMOKE if args.smoke else dict(tracks=TRACKS, seconds=SECONDS, repeats=REPEATS, epochs=EPOCHS)
    pre = PAPER[ARCH]
    batch = size.get("batch_size", SMALL_INPUT["batch_size"])
    crop_s = min(SMALL_INPUT["crop_seconds"], size["seconds"])
    config = dict(
        arch=ARCH,
        lr=pre.lr,
        weight_decay=pre.weight_decay,
        batch_size=batch,
        window=SMALL_INPUT["window"],
        n_mels=SMALL_INPUT["n_mels"],
        crop_seconds=crop_s,
        max_epochs=size["epochs"],
        seed=0,
    )
    report: dict = {"name": NAME, "smoke": args.smoke, "runs": [], "reads_alone": []}
    started = not ray.is_initialized()  # a test's Ray is used as it is
    if started:
        _start_ray(args.address, C.cores_available())
    with C.work_dir(args.work) as work, C.ray_session(args.address):
        report["machine"] = C.machine(torch.device("cpu"))
        with C.timed() as tw:
            manifest = _cache(work, size["tracks"], size["seconds"])
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        res = cluster.plan_resources(nodes, 0, None, None)
        ways = {"reserved": res, "not reserved": dataclasses.replace(res, data_cpus=0)}
        report["settings"] = {
            **size,
            "arch": ARCH,
            "config": config,
            "ray_cpus": ray.cluster_resources().get("CPU"),
            "bundles": {w: r.bundles() for w, r in ways.items()},
            "train_tracks": manifest.num_tracks["train"],
            "cache_write": tw,
        }
        crop_len = int(round(crop_s * manifest.sample_rate))
        for kind in CACHES:
            datasets = CacheDatasets.build(manifest, materialise=kind == "materialised")
            for rep in range(size["repeats"]):
                order = WAYS if rep % 2 == 0 else WAYS[::-1]  # alternate: drift in the machine's load hits both
                for way in order:
                    with C.timed() as t:
                        rows = _trial(datasets, manifest, ways[way], config, work / "tune", f"{kind}-{way}-{rep}")
                    rates = _trial_rates(rows)
                    report["runs"].append({"cache": kind, "way": way, "repeat": rep, "timed": t.as_dict(), **rates})
                    print(
                        f"{kind:12s} {way:12s} #{rep}: {rates['samples_per_s']:7.1f} samples/s, "
                        f"waiting {100 * rates['wait_share']:4.1f} % (load {t.load_start} -> {t.load_end})",
                        flush=True,
                    )
                    with C.timed() as t:
                        epochs = _reads_alone(datasets, ways[way], crop_len, batch, size["epochs"])
                    later = epochs[1:] or epochs
                    reads_rate = sum(n for n, _ in later) / sum(s for _, s in later)
                    report["reads_alone"].append(
                        {"cache": kind, "way": way, "repeat": rep, "timed": t.as_dict(), "samples_per_s": reads_rate}
                    )
                    print(f"{kind:12s} {way:12s} #{rep}: reads alone {reads_rate:7.1f} samples/s", flush=True)
            del datasets
    if started:
        ray.shutdown()  # C.ray_session leaves running a Ray it did not start
    report["summary"] = _summary(report)
    report["gpu"] = _gpu_reasoning(report["summary"])
    report["targets"] = _targets(report["summary"])
    return report


def _summary(report: dict) -> dict:
    out = {}
    for kind in CACHES:
        by_way = {}
        for way in WAYS:
            runs = [r for r in report["runs"] if r["cache"] == kind and r["way"] == way]
            alone = [r for r in report["reads_alone"] if r["cache"] == kind and r["way"] == way]
            if runs:
                by_way[way] = {
                    "samples_per_s": _stats([r["samples_per_s"] for r in runs]),
                    "wait_share": _stats([r["wait_share"] for r in runs]),
                    "reads_alone": _stats([r["samples_per_s"] for r in alone]),
                }
        if len(by_way) == 2:
            r, n = by_way["reserved"], by_way["not reserved"]
            by_way["cost"] = {
                "samples_per_s": 1 - r["samples_per_s"]["mean"] / n["samples_per_s"]["mean"],
                "wait_share_points": r["wait_share"]["mean"] - n["wait_share"]["mean"],
                "reads_alone": 1 - r["reads_alone"]["mean"] / n["reads_alone"]["mean"],
            }
        out[kind] = by_way
    return out


def _gpu_reasoning(summary: dict) -> dict:
    """A GPU trial's reads ceiling on a 16-core, one-GPU node as the search plans it, from the reads-alone rates."""
    from mgc_ray.cluster import plan_resources

    node = [{"Alive": True, "Resources": {"CPU": GPU_NODE_CPUS, "GPU": 1}}]
    plans = {share: plan_resources(node, share, None, None) for share in (0.25, 0.125)}
    per_cpu = {kind: summary[kind]["reserved"]["reads_alone"]["mean"] for kind in CACHES if summary[kind]}
    return {
        "node_cpus": GPU_NODE_CPUS,
        "plans": {
            str(share): {"cpus": r.cpus, "data_cpus": r.data_cpus, "trials": r.max_concurrent}
            for share, r in plans.items()
        },
        "reads_per_cpu": per_cpu,
        "ceiling": {kind: {str(s): rate * r.data_cpus for s, r in plans.items()} for kind, rate in per_cpu.items()},
    }


def _targets(summary: dict) -> list[dict]:
    parts = []
    for kind in CACHES:
        cost = summary[kind].get("cost")
        if cost:
            parts.append(f"{kind}: {100 * cost['samples_per_s']:+.1f} % of a CPU trial's samples/s")
    return [
        C.target(
            "reservation: what a trial's Ray Data reads bundle costs it",
            "measure (issue 22)",
            "; ".join(parts) + " (positive: slower reserved)",
            C.MEASURED,
            "a GPU trial's reads are capped at its reads bundle: see reservation_cpu.md",
        )
    ]


def _pm(s: dict, scale: float = 1.0, digits: int = 3) -> str:
    return f"{C.fmt(scale * s['mean'], digits)} ± {C.fmt(scale * s['sd'], 2)}"


def markdown(report: dict, smoke: bool) -> list[str]:
    st = report["settings"]
    lines = [
        C.title("What a trial's reservation for its Ray Data reads costs it", smoke),
        "",
        f"Written by `python -m benchmarks.reservation`: a real Tune trial (`search.driver.placed_trainable`, "
        f"`train_trial`) of {st['arch']} on small inputs (batch {st['config']['batch_size']}, "
        f"{st['config']['crop_seconds']:g}-s crops, window {st['config']['window']}, {st['config']['n_mels']} mels, "
        f"augmentation on), {st['epochs']} epochs over "
        f"{st['train_tracks']} training clips of {st['seconds']:g} s (synthetic, FMA's shards of 64 tracks), "
        f"on a local Ray of {st['ray_cpus']:g} CPUs. Reserved: the search's plan "
        f"`{st['bundles']['reserved']}` (bundle 0 trains, bundle 1 holds every Ray Data task of the trial); "
        f"not reserved: `{st['bundles']['not reserved']}`, reads on any free CPU (searches before). "
        f"{st['repeats']} trials each way, alternating; each trial's rate is its mean over the epochs after "
        "the first (Ray Data's start-up); shown: mean ± standard deviation over the trials.",
        "",
    ]
    rows = []
    for kind in CACHES:
        s = report["summary"][kind]
        for way in WAYS:
            if way in s:
                w = s[way]
                rows.append(
                    [
                        kind,
                        way,
                        _pm(w["samples_per_s"]),
                        f"{C.fmt(w['samples_per_s']['min'])} – {C.fmt(w['samples_per_s']['max'])}",
                        _pm(w["wait_share"], 100, 2) + " %",
                        _pm(w["reads_alone"]),
                    ]
                )
        if "cost" in s:
            c = s["cost"]
            rows.append(
                [
                    kind,
                    "**cost of reserving**",
                    f"**{100 * c['samples_per_s']:+.1f} %**",
                    "",
                    f"{100 * c['wait_share_points']:+.1f} points",
                    f"{100 * c['reads_alone']:+.1f} %",
                ]
            )
    lines += C.md_table(
        ["cache", "way", "trial samples/s", "trials' range", "waiting for data", "reads alone samples/s"], rows
    )
    loads = [r["timed"]["load_start"] for r in report["runs"]] + [r["timed"]["load_end"] for r in report["runs"]]
    loads = [x for x in loads if x is not None]
    if loads:
        lines += ["", f"1-min load average during the trials: {min(loads):g} to {max(loads):g}."]
    g = report["gpu"]
    lines += ["", "## What it will cost a GPU trial", ""]
    p4, p8 = g["plans"]["0.25"], g["plans"]["0.125"]
    text = (
        f"On this machine a CPU trial's reads get one CPU either way: the trial holds one of {st['ray_cpus']:g}, "
        "so the reads had the other to themselves before, and reserve it now. What the reservation changes is "
        "where a trial's reads may run. A GPU trial's reads now run on its reads bundle only: on a node of "
        f"{g['node_cpus']} cores and one GPU, DenseNet-121 trials at 1/4 of the GPU are {p4['trials']:g} per node "
        f"with {p4['cpus']:g} CPUs to train and {p4['data_cpus']:g} for reads each, small models at 1/8 "
        f"{p8['trials']:g} per node with {p8['cpus']:g} + {p8['data_cpus']:g}. Before, those trials shared the "
        f"node's {g['node_cpus'] // 4} kept cores (and any idle CPU in the cluster) for their reads, so one trial "
        "could read on several while the others trained or validated; now each reads on its own and never "
        "waits for another's. The reads-alone rate above is what one read CPU delivers on this machine, "
        "whatever trains on it, so it is a GPU trial's ceiling per read CPU: "
    )
    text += "; ".join(
        f"{kind} {C.fmt(rate)} samples/s per CPU, {C.fmt(g['ceiling'][kind]['0.25'])} samples/s for a DenseNet "
        "trial at 1/4"
        for kind, rate in g["reads_per_cpu"].items()
    )
    text += (
        f". A GPU trial that trains faster (DenseNet-121's target on one H100 is {DENSENET_H100_TARGET:,} "
        "samples/s) waits for data with 1 read CPU where, before, it could borrow idle ones; a small model at "
        f"1/8 gets {p8['data_cpus']:g} read CPU where 8 trials shared {g['node_cpus'] // 4} before, more per "
        "trial when all are busy. These rates are from a shared 2-core machine's cores; a GPU node's cores "
        "read faster, and `python -m benchmarks.gpu_check` measures the GPU's wait in a real trial there."
    )
    lines += [text]
    lines += ["", "Targets:", ""]
    lines += C.md_table(
        ["target", "goal", "measured", "status", "note"],
        [[t["target"], t["goal"], t["measured"], t["status"], t["note"]] for t in report["targets"]],
        "lllll",
    )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = C.parser(f"python -m benchmarks.{NAME}", __doc__, device=False).parse_args(argv)
    report = run(args)
    C.write_report(C.out_dir(args), NAME, report, markdown(report, args.smoke))
    return 0


if __name__ == "__main__":
    run_cli(main)
