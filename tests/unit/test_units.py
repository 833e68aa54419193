"""Fast unit tests of the pieces a search reaches only inside Ray: the epoch loop, the crop UDF,
config conversion, track-level averaging, the manifest record and atomic writes."""

import json

import numpy as np
import pytest
import torch

from mgc_ray.config import (
    PAPER,
    RECIPE_OFF,
    SEARCHED,
    TrainConfig,
    epoch_seed,
    is_paper_point,
)
from mgc_ray.data.cache import Manifest
from mgc_ray.data.pipeline import _crop_rows
from mgc_ray.errors import UserError
from mgc_ray.files import atomic_text, atomic_write
from mgc_ray.trial.loop import make_optimizer, track_level, train_epoch


# --- the epoch loop --------------------------------------------------------------
class _Tiny(torch.nn.Module):
    def __init__(self, n_in: int = 16, n_classes: int = 3):
        super().__init__()
        self.fc = torch.nn.Linear(n_in, n_classes)

    def forward(self, wave):
        return self.fc(wave)


def _batches(n_batches: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(3, 16, generator=g)
    out = []
    for _ in range(n_batches):
        y = torch.randint(0, 3, (8,), generator=g)
        out.append((centres[y] + 0.1 * torch.randn(8, 16, generator=g), y))
    return out


def test_train_epoch_counts_samples_and_lowers_the_loss():
    torch.manual_seed(0)
    model = _Tiny()
    opt = make_optimizer(model, TrainConfig(arch="any", lr=1e-2))
    data = _batches(10)
    first = train_epoch(model, data, opt)
    for _ in range(5):
        last = train_epoch(model, data, opt)
    assert first["samples"] == last["samples"] == 80
    assert last["loss"] < 0.5 * first["loss"], (first, last)
    assert first["samples_per_s"] > 0 and model.training


def test_train_epoch_applies_augment_and_refuses_an_empty_split():
    model, seen = _Tiny(), []

    def augment(wave, generator):
        seen.append(generator)
        return wave * 0

    opt = make_optimizer(model, TrainConfig(arch="any"))
    g = torch.Generator()
    train_epoch(model, _batches(2), opt, augment=augment, generator=g)
    assert seen == [g, g], "augment runs once per batch with the epoch's generator"
    with pytest.raises(RuntimeError, match="no batch"):
        train_epoch(model, [], opt)


# --- the crop UDF (runs in Ray Data tasks) -----------------------------------------
def _clips():
    lengths = (1000, 250, 600)
    return {
        "track_id": np.array([5, 9, 11]),
        "label": np.array([0, 2, 1]),
        "samples": [np.arange(n, dtype=np.int16) + i * 1000 for i, n in enumerate(lengths)],
    }


def test_random_crops_are_slices_reproducible_per_seed_epoch_and_track():
    a = _crop_rows(_clips(), crop_len=300, mode="random", seed=1, epoch=2)
    b = _crop_rows(_clips(), crop_len=300, mode="random", seed=1, epoch=2)
    c = _crop_rows(_clips(), crop_len=300, mode="random", seed=1, epoch=3)
    assert a["wave"].shape == (3, 300) and a["wave"].dtype == np.int16
    assert np.array_equal(a["wave"], b["wave"]) and not np.array_equal(a["wave"], c["wave"])
    assert a["label"].tolist() == [0, 2, 1] and a["track_id"].tolist() == [5, 9, 11]
    first = a["wave"][0]
    assert np.array_equal(first, np.arange(first[0], first[0] + 300)), "a contiguous slice of the clip"
    assert a["wave"][1, 250:].tolist() == [0] * 50, "a short clip is zero-padded at its end"


def test_centre_and_cover_crops():
    centre = _crop_rows(_clips(), crop_len=300, mode="centre")
    assert centre["wave"][0, 0] == 350 and centre["wave"].shape == (3, 300)
    cover = _crop_rows(_clips(), crop_len=300, mode="cover")
    assert cover["track_id"].tolist() == [5, 5, 5, 5, 9, 11, 11]  # 1000 -> 4 crops, 250 -> 1, 600 -> 2
    assert cover["wave"][3, -1] == 999, "the last crop ends at the clip's end"
    with pytest.raises(ValueError, match="unknown crop mode"):
        _crop_rows(_clips(), crop_len=300, mode="middle")
    assert "kind" not in centre and "kind" not in cover


def test_centre_and_cover_in_one_read_are_the_same_crops_tagged_by_kind():
    from mgc_ray.data.pipeline import CENTRE, COVER

    centre = _crop_rows(_clips(), crop_len=300, mode="centre")
    cover = _crop_rows(_clips(), crop_len=300, mode="cover")
    both = _crop_rows(_clips(), crop_len=300, mode="centre+cover")
    is_centre = both["kind"] == CENTRE
    assert set(both["kind"].tolist()) == {CENTRE, COVER} and len(both["kind"]) == 3 + 7
    for key in ("wave", "label", "track_id"):
        assert np.array_equal(both[key][is_centre], centre[key]), key
        assert np.array_equal(both[key][~is_centre], cover[key]), key


# --- config conversion -----------------------------------------------------------
def test_train_config_from_tunes_flat_dict():
    d = {
        "arch": "densenet",
        "lr": np.float64(3e-4),
        "batch_size": np.int64(64),
        "window": "1976",
        "crop_seconds": 5,
        "max_epochs": 3.0,
        "node_id": "ignored",
        "trial_id": "x",
    }
    cfg = TrainConfig.from_dict(d)
    assert (cfg.lr, cfg.batch_size, cfg.window, cfg.crop_seconds, cfg.max_epochs) == (3e-4, 64, 1976, 5.0, 3)
    assert type(cfg.batch_size) is int and type(cfg.lr) is float
    m = cfg.model_config(22_050, 0.01, 0.2, n_classes=10)
    assert (m.arch, m.n_classes, m.window, m.crop_samples, m.wave_std) == ("densenet", 10, 1976, 110_250, 0.2)
    with pytest.raises(ValueError, match="batch size"):
        TrainConfig.from_dict({"arch": "densenet", "batch_size": 0})


def test_paper_presets_and_the_paper_point():
    for arch, preset in PAPER.items():
        cfg = preset.train_config()
        assert {k: getattr(cfg, k) for k in SEARCHED} == preset.point()
        assert is_paper_point(arch, {k: str(v) for k, v in preset.point().items()}), "MLflow params are text"
        assert not is_paper_point(arch, {**preset.point(), "lr": 3e-4})
        assert is_paper_point(arch, {**preset.point(), "window": 512}, scaled={"window": 512})
        old = {k: v for k, v in preset.point().items() if k not in RECIPE_OFF}
        assert is_paper_point(arch, old), "a run recorded before the recipe options trained with them off"
        assert not is_paper_point(arch, {**preset.point(), "spec_mask": 0.1})
    assert not is_paper_point("densenet", {"lr": 1e-4})


def test_epoch_seeds_are_distinct_and_stable():
    seeds = {epoch_seed(s, e) for s in range(20) for e in range(100)}
    assert len(seeds) == 2000 and epoch_seed(1, 2) == 100_005


# --- track-level averaging -------------------------------------------------------
def test_track_level_averages_each_tracks_crops():
    logits = np.array([[1.0, 0.0], [3.0, 2.0], [0.0, 5.0], [2.0, 2.0]], dtype=np.float32)
    labels = np.array([1, 1, 0, 1])
    ids = np.array([7, 7, 3, 7])
    avg, lab, tracks = track_level(logits, labels, ids)
    assert tracks.tolist() == [3, 7] and lab.tolist() == [0, 1]
    assert np.allclose(avg, [[0.0, 5.0], [2.0, 4.0 / 3.0]])


# --- the manifest record and atomic writes -------------------------------------
def _doc(**over):
    from mgc_ray.config import CACHE_SCHEMA_VERSION

    return {
        "schema_version": CACHE_SCHEMA_VERSION,
        "sample_rate": 22050,
        "subset": "small",
        "split_scheme": "paper",
        "data_seed": 0,
        "fma_root": "/data",
        "label_names": ["a", "b", "c"],
        "counts": {"train": {"a": 1, "b": 1, "c": 1}},
        "num_tracks": {"train": 3, "val": 0, "test": 0},
        "wave_mean": 0.0,
        "wave_std": 0.2,
        "bad_tracks": [],
        "shards": {"train": ["shards/train-00000.parquet"]},
        "min_track_seconds": 2.0,
        "silence_peak": 1e-4,
        "tracks_per_shard": 64,
        "track_list_sha1": "f" * 40,
        "shard_sha256": {"shards/train-00000.parquet": "0" * 64},
        **over,
    }


def test_manifest_round_trip_and_checks():
    m = Manifest.from_dict(_doc(), "/caches/c")
    assert m.n_classes == 3 and m.shard_paths("train") == ["/caches/c/shards/train-00000.parquet"]
    assert Manifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    for bad, needle in (
        (_doc(schema_version=0), "schema 0"),
        ({k: v for k, v in _doc().items() if k != "counts"}, "lacks counts"),
        (_doc(wave_std="x"), "malformed"),
        (_doc(label_names=["a"]), "1 genre"),
    ):
        with pytest.raises(UserError, match=needle):
            Manifest.from_dict(bad, "/caches/c")


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = atomic_text(tmp_path / "a.txt", "old\n")

    def broken(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(path, broken)
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_worker_exit_tracebacks_stay_out_of_the_output():
    """Ray's SIGTERM of a finished worker, caught in a GC callback (seen in a trial worker's log), is dropped;
    any other error a worker prints is kept."""
    from mgc_ray.cluster import without_exit_tracebacks

    noise = [
        "Exception ignored in: <function WeakSet.__init__.<locals>._remove at 0x7f6dcaaca520>",
        "Traceback (most recent call last):",
        '  File "/usr/lib/python3.11/_weakrefset.py", line 39, in _remove',
        "    def _remove(item, selfref=ref(self)):",
        "",
        '  File ".../ray/_private/worker.py", line 1063, in sigterm_handler',
        "    raise_sys_exit_with_custom_error_message(",
        '  File "python/ray/_raylet.pyx", line 712, in ray._raylet.raise_sys_exit_with_custom_error_message',
        "SystemExit: 1",
    ]
    real = ["Traceback (most recent call last):", '  File "x.py", line 1, in f', "ValueError: bad"]
    assert without_exit_tracebacks(["epoch 1"] + noise + ["epoch 2"]) == ["epoch 1", "epoch 2"]
    assert without_exit_tracebacks(real + noise) == real


def test_a_stopped_trials_prefetcher_broken_pipe_stays_out_of_the_output():
    """Ray Data's prefetcher thread in a trial's worker stopped mid-epoch (seen when a full disk
    stopped a search): its broken pipe to the raylet is dropped; any other prefetcher error is kept."""
    from mgc_ray.cluster import without_exit_tracebacks

    head = [
        "Error in prefetcher thread.",
        "Traceback (most recent call last):",
        '  File ".../ray/data/_internal/block_batching/util.py", line 513, in _run',
        "    ray.wait(",
        '  File "python/ray/includes/common.pxi", line 117, in ray._raylet.check_status',
    ]
    assert without_exit_tracebacks(["epoch 3"] + head + ["OSError: Broken pipe", "done"]) == ["epoch 3", "done"]
    other = head + ["ray.exceptions.ObjectLostError: lost"]
    assert without_exit_tracebacks(other) == other


def test_a_lost_nodes_messages_are_one_line_each_and_once():
    """A node that dies makes each of its agents send the raylet's last 20 log lines (seen twice when a
    test removed a cluster node): one line each, once; other Ray errors are kept, first line only."""
    from mgc_ray.cluster import node_error_lines

    died = (
        "Raylet is terminated. Termination is unexpected. Possible reasons include: (1) SIGKILL by the user "
        "or system OOM killer. Last 20 lines of the Raylet logs:\n"
        "    [2026-12-02 13:14:38,156 W 21264 21273] (raylet) store.cc:366: Disconnecting client\n"
        "    [2026-12-02 13:14:56,247 I 21264 21264] (raylet) node_manager.cc:124: DisconnectClient\n"
    )
    dead = (
        "The node with node id: cbce5c and address: 192.0.2.2 has been marked dead because the detector "
        "has missed too many heartbeats from it.\n\t(2) raylet has lagging heartbeats due to slow network."
    )
    seen: set[str] = set()
    first = node_error_lines([died, dead], seen)
    assert len(first) == 2 and all("\n" not in line for line in first)
    assert first[0].startswith("Raylet is terminated. Termination is unexpected.") and "store.cc" not in first[0]
    assert "raylet.out" in first[0]
    assert first[1].endswith("missed too many heartbeats from it.")
    assert node_error_lines([died], seen) == [], "the second agent's copy is dropped"


def test_a_failed_trial_task_is_logged_in_one_line():
    """Tune logs a lost trial worker with a traceback of Ray's internals; the log keeps the exception's line."""
    import logging

    from mgc_ray.search.driver import _TrialFailureLine

    try:
        raise RuntimeError("The actor 1f59 is unavailable: RPC error: Socket closed\nmore detail")
    except RuntimeError as exc:
        record = logging.LogRecord(
            "ray.tune.execution.tune_controller",
            logging.ERROR,
            __file__,
            1,
            "Trial task failed for trial %s",
            ("train_trial_ed92",),
            (RuntimeError, exc, None),
        )
    assert _TrialFailureLine().filter(record)
    assert record.exc_info is None
    assert record.getMessage() == (
        "Trial task failed for trial train_trial_ed92: RuntimeError: The actor 1f59 is "
        "unavailable: RPC error: Socket closed"
    )
    assert logging.Formatter().format(record).count("\n") == 0


def test_a_stopped_trials_removed_placement_group_is_not_a_traceback_but_other_errors_are():
    """Tune removes a trial's placement group when it stops the trial; a read-ahead epoch's task that
    fails for that is not logged with a traceback (data.pipeline._quiet_ray_data), any other error is."""
    import io
    import logging

    from ray.exceptions import TaskPlacementGroupRemoved

    from mgc_ray.data.pipeline import _quiet_ray_data

    _quiet_ray_data()
    _quiet_ray_data()  # idempotent: one filter
    log = logging.getLogger("ray.data._internal.execution.streaming_executor_state")
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    log.addHandler(handler)
    try:
        for exc in (TaskPlacementGroupRemoved(), ValueError("a real failure")):
            try:
                raise exc
            except Exception as e:  # noqa: BLE001
                log.error("An exception was raised from a task", exc_info=e)
    finally:
        log.removeHandler(handler)
    text = out.getvalue()
    assert "TaskPlacementGroupRemoved" not in text and "ValueError: a real failure" in text
    assert text.count("Traceback") == 1
