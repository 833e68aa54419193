"""Faults at FMA small's size, injected for real into streamed epochs: a trial's node lost in a
cluster mid-search, Ray Data's read workers SIGKILLed mid-epoch, and an object store
already full of other work's objects. Each epoch must still hand out every training track
exactly once, and the same crops in the same order as an epoch nothing disturbed; the search
must log every epoch once and count every sample once.

The cache is `mgc_ray.synth_cache`'s: FMA small's 8,000 track ids and genres
(fma_samples/derived/fma_small_genre_top.csv), its 80/10/10 split (6,400 training tracks
in 100 shards of 64, as prepare writes them) and its epoch of 6,400 crops, but 3-s clips
instead of 30-s ones (1.1 GB instead of 10.6 GB, for CI's time): what a fault can lose or
repeat here are shards, blocks and tasks, and those are FMA small's count.
"""

import collections
import os
import signal
import zlib
from pathlib import Path

import pytest

from mgc_ray.config import CACHE_SAMPLE_RATE

TRACKS = 8000  # FMA small
CLIP_S = 3.0  # see the module doc: the shard and track counts are FMA small's
CROP = 2 * CACHE_SAMPLE_RATE  # 2-s training windows (the smoke search's crops)
BATCH = 32
TRAIN = 6400  # 80 % of 8,000: 200 batches of 32, none dropped
STORE_BYTES = 128 * 2**20  # a small local Ray's object store (tests' usual)
FILLER_BYTES = 8 * 2**20  # the full store's other objects, 8 MB each ...
FILLERS = 14  # ... 112 MB of the 128 MB: what a materialised cache or another trial holds
# A read worker is killed at the first batch from each of these on where one is busy: reading runs
# ahead of a consumer that only counts, and is over by about batch 100 of 200 on 2 cores.
KILL_FROM_BATCHES = (10, 30, 50)
# The cluster: a head without CPUs (the driver's node: no trial or Ray Data task runs there) and two
# nodes of 2 CPUs, each room for one trial of 1 CPU and its Ray Data reads, and two such trials. Before
# trials reserved their reads (cluster.plan_resources), the lost trial's retry took the surviving
# node's other CPU, the one its trial's Ray Data reads needed, and both trials hung.
NODE_CPUS = 2
TRIALS = 2  # one per node
SEARCH_EPOCHS = 2
# One trial at the paper's batch of 32 on small inputs, one torch thread: two epochs of 6,400 crops
# in ~45 s each on 2 cores (two trials of 2 CPUs with --smoke's batch of 8 and 2-s crops: 11 min).
SEARCH_SPACE = """# tests: a cheap trial over FMA small's training split
start: {lr: 1.0e-4, weight_decay: 1.0e-4, batch_size: 32, window: 512, n_mels: 32, crop_seconds: 0.5}
space:
  lr: {type: loguniform, low: 1.0e-5, high: 1.0e-3}
"""


@pytest.fixture(scope="module")
def scale_cache(tmp_path_factory, fma_samples) -> str:
    from mgc_ray import synth_cache

    out = tmp_path_factory.mktemp("scale") / "cache"
    genres = os.path.join(fma_samples, "derived", "fma_small_genre_top.csv")
    assert (
        synth_cache.main(["--out", str(out), "--tracks", str(TRACKS), "--seconds", str(CLIP_S), "--genres-csv", genres])
        == 0
    )
    return str(out)


# --- a trial's node lost mid-search (a ray.cluster_utils.Cluster: a head and two worker nodes) ---
# First in the file: the cluster is gone before the streamed-epoch tests start their local Ray.
@pytest.mark.slow
def test_a_lost_node_under_ray_data_costs_the_search_nothing(scale_cache, tmp_path, rel, cli_runs, faults):
    """Two trials of 1 CPU, one per 2-CPU node, each streaming FMA small's 6,400 training tracks every
    epoch with its Ray Data reads in the CPU it reserved beside it. One trial's node is removed (raylet,
    trial and Ray Data tasks killed) once it has checkpointed an epoch: the other trial finishes
    undisturbed, the lost one waits for a node with room for it and its reads, resumes there from its
    checkpoint, and the search ends as if nothing had happened but the restart."""
    from ray.cluster_utils import Cluster

    space = tmp_path / "space.yaml"
    space.write_text(SEARCH_SPACE)
    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={"num_cpus": 0, "include_dashboard": False, "object_store_memory": STORE_BYTES},
    )
    workers = [cluster.add_node(num_cpus=NODE_CPUS, object_store_memory=STORE_BYTES) for _ in range(2)]
    cluster.wait_for_nodes()
    try:
        run = cli_runs(
            "mgc_ray.tune",
            *rel.args(
                tmp_path,
                "--cache",
                scale_cache,
                "--space",
                str(space),
                "--address",
                cluster.address,
                "--shared-storage",
                "--cpus-per-trial",
                "1",
                "--num-samples",
                str(TRIALS),
                "--max-epochs",
                str(SEARCH_EPOCHS),
                "--grace-period",
                str(SEARCH_EPOCHS),
            ),  # no ASHA cut
            cwd=tmp_path,
            env=rel.env(tmp_path / "home"),
        )
        exp = run.wait_until(lambda: rel.experiment_dir(tmp_path), 300, "the Tune experiment folder")

        def checkpointed():
            for trial, rows in rel.trial_results(exp).items():
                if rows and any(exp.glob(f"train_trial_{trial}_*/checkpoint_*")):
                    return trial, rows[0]["node_id"]
            return None

        lost, node_id = run.wait_until(checkpointed, 600, "the trial's first checkpoint")
        worker = next(w for w in workers if w.node_id == node_id)
        cluster.remove_node(worker, allow_graceful=False)
        assert run.wait(1200) == 0, run.tail()
    finally:
        cluster.shutdown()
    out = run.output
    assert "Traceback" not in out, run.tail()

    assert "2 at once, 1 CPU + 0 GPU each (and 1 CPU for its Ray Data reads)" in out, run.tail()

    results = rel.trial_results(exp)
    assert len(results) == TRIALS and lost in results
    (other,) = set(results) - {lost}
    for rows in results.values():
        assert sorted({r["epoch"] for r in rows}) == list(range(SEARCH_EPOCHS)), "every epoch ran"
        assert rows[-1]["cost/samples_seen"] == SEARCH_EPOCHS * TRAIN, "every epoch's samples counted once"
    rows = results[lost]
    survivor = rows[-1]["node_id"]
    assert rows[-1]["restored_epochs"] >= 1 and survivor != worker.node_id, (
        "the lost trial resumed from its checkpoint on the surviving node"
    )
    assert {r["node_id"] for r in results[other]} == {survivor}, "the other trial ran there, one trial per node"
    assert [r["restored_epochs"] for r in results[other]] == [0] * SEARCH_EPOCHS, "and finished undisturbed"

    c, parent, children = rel.mlflow_search(tmp_path, dataset=f"cache-{Path(scale_cache).name}")
    assert parent.info.status == "FINISHED"
    assert len(children) == TRIALS and all(r.info.status == "FINISHED" for r in children)
    by_trial = {r.data.tags["mgc.trial_id"]: r for r in children}
    assert by_trial[lost].data.tags["mgc.restarts"] == "1" and "mgc.restarts" not in by_trial[other].data.tags
    for r in children:
        assert [m.step for m in c.get_metric_history(r.info.run_id, "val/loss")] == list(range(SEARCH_EPOCHS))
    faults.record(
        "a trial's node lost mid-search (a head and 2 worker nodes of 2 CPUs, a 1-CPU trial on each, "
        "8,000-track streamed cache)",
        1,
        "the other trial finished undisturbed; the lost one waited for a node with room for it and its "
        "Ray Data reads and resumed there from its checkpoint; each epoch logged once in MLflow, each "
        "sample counted once; Ray's messages one line each, no traceback",
    )


# --- streamed epochs in a local Ray ------------------------------------------------------------
@pytest.fixture(scope="module")
def streamed(scale_cache):
    """The scale cache streamed (as a trial sees a cache too large to materialise) in a local Ray."""
    import ray

    from mgc_ray import cluster
    from mgc_ray.data.cache import read_manifest
    from mgc_ray.data.pipeline import CacheDatasets

    cluster.init(None, num_cpus=2, object_store_memory=STORE_BYTES, logging_level="WARNING")
    try:
        yield CacheDatasets.build(read_manifest(scale_cache), materialise=False)
    finally:
        ray.shutdown()


def _read_workers(rel) -> list[int]:
    """Ray Data's workers reading and cropping shards right now (titled `ray::MapBatches(_read_crops)`)."""
    pids = (int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit())
    return [p for p in pids if rel.cmdline(p).startswith("ray::MapBatches(_read_crops)")]


def _epoch(datasets, epoch: int, on_batch=None) -> list[tuple[int, int]]:
    """(track id, CRC-32 of its crop) of every example of a streamed epoch, in the order handed out."""
    from mgc_ray.data.pipeline import train_batches

    seen = []
    for i, (wave, _, tid) in enumerate(
        train_batches(datasets, crop_len=CROP, batch_size=BATCH, seed=0, epoch=epoch, with_ids=True)
    ):
        seen += [(int(t), zlib.crc32(w.numpy().tobytes())) for t, w in zip(tid, wave)]
        if on_batch:
            on_batch(i)
    return seen


@pytest.fixture(scope="module")
def undisturbed(streamed) -> list[tuple[int, int]]:
    return _epoch(streamed, 1)


def _assert_same_epoch(seen, undisturbed, train_ids):
    counts = collections.Counter(t for t, _ in seen)
    assert len(counts) == TRAIN and set(counts) == train_ids, "every training track was handed out"
    assert max(counts.values()) == 1, f"tracks handed out twice: {[t for t, n in counts.items() if n > 1][:10]}"
    assert seen == undisturbed, "the same crops in the same order as the undisturbed epoch"


def _train_ids(datasets) -> set[int]:
    import pyarrow.parquet as pq

    return {
        int(t) for p in datasets.train_files for t in pq.read_table(p, columns=["track_id"])["track_id"].to_pylist()
    }


@pytest.mark.slow
def test_killed_ray_data_workers_lose_and_repeat_nothing(streamed, undisturbed, rel, faults):
    killed = []

    def kill(i):
        busy = (
            _read_workers(rel) if len(killed) < len(KILL_FROM_BATCHES) and i >= KILL_FROM_BATCHES[len(killed)] else []
        )
        if busy:
            os.kill(busy[0], signal.SIGKILL)
            killed.append((i, busy[0]))

    seen = _epoch(streamed, 1, kill)
    assert len(killed) == len(KILL_FROM_BATCHES), f"killed only {killed} (batch, pid): reading ended early"
    _assert_same_epoch(seen, undisturbed, _train_ids(streamed))
    faults.record(
        "a Ray Data read worker SIGKILLed mid streamed epoch (8,000-track cache)",
        len(killed),
        "Ray Data re-ran the task: every track handed out once, the same crops in the same order",
    )


def _spilled_bytes() -> float:
    import re

    import ray
    from ray._private.internal_api import memory_summary

    text = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    found = re.search(r"Spilled ([\d.]+) MiB", text)
    return float(found.group(1)) * 2**20 if found else 0.0


@pytest.mark.slow
def test_a_full_object_store_spills_and_the_epoch_goes_on(streamed, undisturbed, faults):
    import numpy as np
    import ray

    before = _spilled_bytes()
    rng = np.random.default_rng(0)
    fillers = [rng.integers(0, 255, FILLER_BYTES, dtype=np.uint8) for _ in range(FILLERS)]
    refs = [ray.put(a) for a in fillers]  # held: Ray may spill them to disk, never drop them
    seen = _epoch(streamed, 1)
    spilled = _spilled_bytes() - before
    assert spilled >= FILLER_BYTES, "the store was full: the epoch's blocks made Ray spill the other objects"
    _assert_same_epoch(seen, undisturbed, _train_ids(streamed))
    assert all(np.array_equal(ray.get(r), a) for r, a in zip(refs, fillers)), "the spilled objects came back whole"
    faults.record(
        f"the object store full ({FILLERS * FILLER_BYTES >> 20} of {STORE_BYTES >> 20} MB held by other "
        "objects) during a streamed epoch (8,000-track cache)",
        1,
        f"Ray spilled {spilled / 2**20:.0f} MB of them to disk and read them back whole; every track "
        "handed out once, the same crops in the same order",
    )
