"""The next epoch's Ray Data execution starts while the trial validates (data.epochs.TrainEpochs):
seen through Ray Data's own execution hook, with the same crops in the same order as an epoch asked
for on its own; a trial stopped between epochs leaves no task or thread behind; every trial names
its data mode."""

import csv
import threading
import time
import zlib

import pytest

from mgc_ray.data.epochs import PREFETCH_BATCHES, THREAD_NAME, TrainEpochs
from mgc_ray.data.pipeline import CacheDatasets, train_batches
from mgc_ray.synth_cache import synthetic_dataset, write_synthetic_cache

CROP = 2000
BATCH = 8
EPOCHS = 3
WAIT_S = 120  # what "never" means here: a loaded 2-core machine starts an execution within seconds

# Ray Data's executions in this process, as (event, dataset id, thread), appended by the recorder that
# `executions` registers with Ray Data (its ExecutionCallback hook: called by every execution's executor).
EVENTS: list[tuple[str, str, str]] = []


def _recorder():
    """The ExecutionCallback class, made here so that Ray pickles it by value with the DataContext
    (its tasks' workers cannot import a test module)."""
    from ray.data._internal.execution.execution_callback import ExecutionCallback

    class Recorder(ExecutionCallback):
        def before_execution_starts(self, executor):
            EVENTS.append(("start", executor._dataset_id, threading.current_thread().name))

        def after_execution_succeeds(self, executor):
            EVENTS.append(("end", executor._dataset_id, threading.current_thread().name))

        def after_execution_fails(self, executor, error):
            EVENTS.append(("end", executor._dataset_id, threading.current_thread().name))

    return Recorder


@pytest.fixture(scope="module")
def executions(ray_local):
    """Ray Data's execution hook recording into EVENTS, for the Datasets built while it is on."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    recorder = _recorder()
    ctx.custom_execution_callback_classes.append(recorder)
    try:
        yield EVENTS
    finally:
        ctx.custom_execution_callback_classes.remove(recorder)


def _wait(check, what: str):
    end = time.monotonic() + WAIT_S
    while not (found := check()):
        assert time.monotonic() < end, f"{what}: not within {WAIT_S} s"
        time.sleep(0.02)
    return found


def _started(since: int) -> list[tuple[str, str, str]]:
    return [e for e in EVENTS[since:] if e[0] == "start"]


def _ended(dataset_id: str) -> bool:
    return ("end", dataset_id) in {e[:2] for e in EVENTS}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """160 training tracks in 10 shards: 20 batches an epoch."""
    out = tmp_path_factory.mktemp("prefetch") / "cache"
    return write_synthetic_cache(out, synthetic_dataset(200, n_genres=4), seconds=0.2, tracks_per_shard=16, workers=2)


@pytest.fixture(scope="module")
def longer_cache(tmp_path_factory):
    """1,024 training tracks in 64 shards of 16: a streamed epoch is 64 read tasks, far from over
    when its first batch is out (what a stop between epochs needs to be a test)."""
    out = tmp_path_factory.mktemp("prefetch_long") / "cache"
    return write_synthetic_cache(out, synthetic_dataset(1280, n_genres=4), seconds=0.2, tracks_per_shard=16, workers=2)


def _crops(batches) -> list[tuple[int, int]]:
    """(track id, CRC-32 of its crop) of every example, in the order handed out."""
    return [(int(t), zlib.crc32(w.numpy().tobytes())) for wave, _, tid in batches for t, w in zip(tid, wave)]


@pytest.mark.parametrize("materialise", [False, True], ids=["streamed", "materialised"])
def test_the_next_epoch_starts_before_it_is_asked_for_with_the_same_crops(cache, executions, materialise):
    datasets = CacheDatasets.build(cache, materialise=materialise)

    def batches(epoch):
        return train_batches(datasets, crop_len=CROP, batch_size=BATCH, seed=3, epoch=epoch, with_ids=True)

    alone = {e: _crops(batches(e)) for e in range(EPOCHS)}  # each epoch asked for on its own (as before)
    seen, since = {}, len(EVENTS)
    with TrainEpochs(batches, range(EPOCHS)) as epochs:
        for epoch, b in epochs:
            seen[epoch] = _crops(b)
            # the trial validates, checkpoints and reports now; asking for nothing, it sees the next
            # epoch's execution start on the prefetching thread, and its first batches pulled
            if epoch + 1 < EPOCHS:
                start = _wait(lambda: _started(since)[epoch + 1 :], f"epoch {epoch + 1}'s execution start")[0]
                assert start[2] == THREAD_NAME, f"epoch {epoch + 1} was started by {start[2]}, not the prefetch"
                _wait(lambda: epochs.ahead.ready >= PREFETCH_BATCHES, f"epoch {epoch + 1}'s first batches")
            else:
                assert epochs.ahead is None, "nothing is prefetched after the last epoch"
    started = _started(since)
    assert len(started) == EPOCHS and started[0][2] == "MainThread", "one execution per epoch, the first asked for"
    assert seen == alone, "every epoch: the same crops in the same order as the epoch asked for on its own"
    assert len(seen[0]) == (cache.num_tracks["train"] // BATCH) * BATCH
    assert seen[0] != seen[1], "epochs differ"
    assert not [t for t in threading.enumerate() if t.name == THREAD_NAME]


def test_a_trial_stopped_between_epochs_leaves_no_task_or_thread(longer_cache, executions):
    """ASHA stops a trial between epochs, while the next epoch is being prefetched: the trial's
    `with TrainEpochs(...)` closes it, which must end its Ray Data execution and free every CPU."""
    import ray

    datasets = CacheDatasets.build(longer_cache, materialise=False)
    since = len(EVENTS)
    epochs = TrainEpochs(
        lambda e: train_batches(datasets, crop_len=CROP, batch_size=BATCH, seed=3, epoch=e), range(EPOCHS)
    )
    with epochs:
        for epoch, b in epochs:
            for _ in b:
                pass
            nxt = _wait(lambda: _started(since)[1:], "epoch 1's execution start")[0]
            assert nxt[2] == THREAD_NAME
            _wait(lambda: epochs.ahead.ready >= 1, "epoch 1's first batch")
            assert not _ended(nxt[1]), "the prefetched epoch was still running when the trial stopped"
            break  # the trial is stopped after epoch 0 (its report): the `with` closes the prefetch
    _wait(lambda: _ended(nxt[1]), "the prefetched execution's end")
    _wait(lambda: not [t for t in threading.enumerate() if t.name == THREAD_NAME], "the prefetch thread's end")
    total = ray.cluster_resources()["CPU"]
    _wait(lambda: ray.available_resources().get("CPU", 0) == total, "every CPU free: no Ray Data task left")
    assert len(_started(since)) == 2, "epoch 2 never started"


def test_every_trial_names_its_data_mode(smoke_search):
    """The smoke search's demo cache fits in the object store: materialised, in each trial's results,
    MLflow run and the leaderboard, and in the search run's params."""
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=smoke_search.uri)
    parent = c.get_run(smoke_search.parent_run_id)
    assert parent.data.params["data_mode"] == "materialised"
    children = c.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert children and {r.data.tags["mgc.data_mode"] for r in children} == {"materialised"}
    assert all("train/first_batch_wait_s" in r.data.metrics for r in children)
    with open(smoke_search.results / "leaderboard.csv") as f:
        assert {row["data_mode"] for row in csv.DictReader(f)} == {"materialised"}
    assert "data materialised" in (smoke_search.results / "summary.md").read_text()
