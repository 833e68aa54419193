"""ASHA's rungs: training samples seen as the time unit, the default grace period's rule, and a
cut among trials that are all still at chance told to the user (through a real Tuner)."""

import math
import sys

import pytest

from mgc_ray.config import METRIC, MODE
from mgc_ray.data.cache import Manifest
from mgc_ray.search import rungs
from mgc_ray.search.rungs import REDUCTION_FACTOR, make_scheduler
from mgc_ray.search.space import load_space


def test_the_grace_rule_gives_each_batch_the_paper_batchs_updates_and_room_to_learn():
    # FMA small (6,400 training tracks), DenseNet's paper batch 32, batches up to 64: batch 64
    # takes 100 steps an epoch, batch 32 200, so equal updates need 2 epochs.
    assert rungs.grace_epochs(6400, [32], 64, 20) == 2
    # 70 training clips (a small collection), batch 64: one step an epoch, so learning has not
    # started by epoch 2 (where trials were cut at chance before): at most half of max_epochs.
    assert rungs.grace_epochs(70, [32], 64, 12) == 6
    assert rungs.grace_epochs(38, [8], 8, 2) == 1, "the smoke search keeps its one-epoch rung"
    assert rungs.grace_epochs(100_000, [32], 32, 1) == 1
    assert rungs.samples_per_epoch(70, [16, 32, 64]) == 64, "a batch of 64 drops 6 of 70 tracks"


def _manifest(train: dict, val: dict) -> Manifest:
    genres = tuple(sorted(train))
    return Manifest(
        schema_version=4,
        sample_rate=22050,
        subset="t",
        split_scheme="paper",
        data_seed=0,
        fma_root="t",
        label_names=genres,
        counts={"train": train, "val": val, "test": val},
        num_tracks={"train": sum(train.values()), "val": sum(val.values()), "test": sum(val.values())},
        wave_mean=0.0,
        wave_std=0.1,
        bad_tracks=(),
        shards={"train": (), "val": (), "test": ()},
        min_track_seconds=1.0,
        silence_peak=0.0,
        tracks_per_shard=4,
        track_list_sha1="t",
        shard_sha256={},
    )


def test_chance_is_the_loss_of_predicting_the_training_mix():
    balanced = _manifest({f"g{i}": 10 for i in range(8)}, {f"g{i}": 2 for i in range(8)})
    assert rungs.chance_loss(balanced) == pytest.approx(math.log(8))
    skewed = _manifest({"a": 90, "b": 10}, {"a": 9, "b": 1})
    assert rungs.chance_loss(skewed) == pytest.approx(-(0.9 * math.log(0.9) + 0.1 * math.log(0.1)))
    assert rungs.at_chance([2.08, 2.30], math.log(8)) and not rungs.at_chance([2.08, 1.5], math.log(8))


def test_the_scheduler_counts_samples_and_its_rungs_sit_at_whole_epochs():
    sched = make_scheduler(
        [load_space("densenet")],
        _manifest({f"g{i}": 800 for i in range(8)}, {f"g{i}": 100 for i in range(8)}),
        max_epochs=20,
        grace_period=None,
    )
    assert sched._time_attr == "cost/samples_seen" and sched.per_epoch == 6400
    milestones = sorted(m for m, _ in sched._brackets[0]._rungs)
    assert milestones == [2 * 6400, 4 * 6400, 8 * 6400, 16 * 6400], "grace 2 epochs, halving: rungs at 2, 4, 8, 16"
    given = make_scheduler(
        [load_space("densenet")],
        _manifest({f"g{i}": 800 for i in range(8)}, {f"g{i}": 100 for i in range(8)}),
        max_epochs=20,
        grace_period=5,
    )
    assert min(m for m, _ in given._brackets[0]._rungs) == 5 * 6400


CHANCE = math.log(10)


def _flat(config):
    """A trial that never leaves chance (its loss a hair above ln 10, lower for a lower lr)."""
    from ray import tune

    for epoch in range(config["max_epochs"]):
        tune.report({METRIC: CHANCE + config["lr"], "epoch": epoch, rungs.TIME_ATTR: 32 * (epoch + 1)})


@pytest.mark.slow
def test_a_cut_among_trials_all_at_chance_is_told(ray_local, tmp_path, capsys):
    from ray import cloudpickle, tune

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import a test module
    sched = rungs.SampleASHA(max_epochs=4, grace=1, per_epoch=32, chance=CHANCE, reduction_factor=REDUCTION_FACTOR)
    grid = tune.Tuner(
        _flat,
        param_space={"max_epochs": 4, "lr": tune.grid_search([1e-5, 1e-4, 1e-3, 1e-2])},
        tune_config=tune.TuneConfig(
            metric=METRIC, mode=MODE, scheduler=sched, max_concurrent_trials=1, reuse_actors=True
        ),
        run_config=tune.RunConfig(name="flat", storage_path=str(tmp_path / "ray"), verbose=0),
    ).fit()
    stopped = [r for r in grid if len(r.metrics_dataframe) < 4]
    assert stopped, "ASHA cut the worse trials"
    out = capsys.readouterr().out
    assert "were still at chance" in out and "--grace-period" in out
    assert 32 in sched.chance_cuts
    note = rungs.chance_note(sched)
    assert note.startswith("ASHA cut trials at rungs where every trial was still at chance: 1 epoch (")
