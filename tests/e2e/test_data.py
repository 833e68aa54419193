"""Ray Data epochs: genre-mixed batches, repeatable epochs without a barrier, stretch without silence."""

import os
import re

import numpy as np
import pytest
import torch
from conftest import FMA_SAMPLES

from mgc_ray.data.pipeline import (
    CacheDatasets,
    _crop_rows,
    decoded_bytes,
    train_batches,
)
from mgc_ray.prepare import plan_shards
from mgc_ray.synth_cache import synthetic_dataset, write_synthetic_cache
from mgc_ray.trial.augment import Augment

GENRES_CSV = os.path.join(FMA_SAMPLES, "derived", "fma_small_genre_top.csv")  # all 8,000 fma_small tracks
BATCH = 32


def _same_genre_pair_rate(labels: np.ndarray) -> float:
    """Share of pairs of examples in a batch that share a genre."""
    counts = np.bincount(labels)
    n = len(labels)
    return float((counts * (counts - 1)).sum() / (n * (n - 1)))


def _independent_rate(labels: np.ndarray) -> float:
    """The same share if a batch's tracks were drawn at random from the split (without replacement)."""
    counts = np.bincount(labels).astype(float)
    n = counts.sum()
    return float((counts * (counts - 1)).sum() / (n * (n - 1)))


@pytest.fixture(scope="module")
def fma_sized_labels(tmp_path_factory):
    """A cache with fma_small's 8,000 real track ids and genres (tiny noise clips), as prepare plans shards."""
    ds = synthetic_dataset(8000, genres_csv=GENRES_CSV)
    out = tmp_path_factory.mktemp("labels") / "cache"
    manifest = write_synthetic_cache(out, ds, seconds=0.05, workers=2)
    return ds, manifest


def test_neighbouring_fma_ids_share_genres_but_shards_are_mixed(fma_sized_labels):
    ds, _ = fma_sized_labels
    train = ds.tracks[ds.tracks["split"] == "train"].sort_index()
    by_id = train["label"].to_numpy()
    neighbours = float((by_id[1:] == by_id[:-1]).mean())
    expected = _independent_rate(by_id)
    assert neighbours > 0.5, "the real genre list: consecutive training ids mostly share a genre"
    plans = [p for p in plan_shards(ds.tracks, seed=0) if p.split == "train"]
    in_shards = np.mean([np.mean(np.diff(p.labels) == 0) for p in plans])
    assert abs(in_shards - expected) < 0.03, (in_shards, expected)
    assert all(len(set(p.labels)) == len(ds.label_names) for p in plans[:-1]), "every full shard holds every genre"


def test_training_batches_mix_genres_as_independent_sampling(fma_sized_labels, ray_local):
    ds, manifest = fma_sized_labels
    datasets = CacheDatasets.build(manifest, materialise=False)
    rates, seen = [], []
    for _, label in train_batches(datasets, crop_len=512, batch_size=BATCH, seed=0, epoch=0):
        rates.append(_same_genre_pair_rate(label.numpy()))
        seen.append(label.numpy())
    train_labels = ds.tracks.loc[ds.tracks["split"] == "train", "label"].to_numpy()
    assert len(rates) == len(train_labels) // BATCH
    expected = _independent_rate(train_labels)
    # 200 batches: the mean's standard error under independent sampling is ~0.003; the id-ordered
    # shards of before gave batches of mostly one genre (pair rate ~0.5)
    assert np.mean(rates) == pytest.approx(expected, abs=0.02), (np.mean(rates), expected)
    assert np.array_equal(np.bincount(np.concatenate(seen), minlength=8)[:8] > 0, np.ones(8, bool))


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    ds = synthetic_dataset(200, n_genres=4, seed=0)
    out = tmp_path_factory.mktemp("small") / "cache"
    return write_synthetic_cache(out, ds, seconds=0.2, tracks_per_shard=16, workers=2)


def _epoch(datasets, epoch: int) -> list[tuple[list[int], float]]:
    return [
        (label.tolist(), float(wave.double().sum()))
        for wave, label in train_batches(datasets, crop_len=2000, batch_size=8, seed=3, epoch=epoch)
    ]


@pytest.mark.parametrize("materialise", [False, True], ids=["streamed", "materialised"])
def test_an_epoch_repeats_exactly_and_the_next_differs(small_cache, ray_local, materialise):
    manifest = small_cache
    datasets = CacheDatasets.build(manifest, materialise=materialise)
    assert datasets.materialised is materialise
    first, again, other = _epoch(datasets, 0), _epoch(datasets, 0), _epoch(datasets, 1)
    assert first == again, "a restarted epoch sees the same batches in the same order"
    assert first != other
    n_train = manifest.num_tracks["train"]
    assert len(first) == n_train // 8
    # a fresh build (a resumed search's new driver) gives the same epoch too
    assert _epoch(CacheDatasets.build(manifest, materialise=materialise), 0) == first


@pytest.mark.parametrize("materialise", [False, True], ids=["streamed", "materialised"])
def test_a_trial_reads_in_its_own_reservation_and_waits_for_no_other_cpu(small_cache, ray_local, materialise):
    """A trial's placement group as the search plans it on this 2-CPU Ray (1 CPU to train, 1 for its Ray
    Data reads), with the trainable placed as Tune places it (bundle 0, its child tasks captured), holds every
    CPU: a Ray Data task outside it would wait forever. Its epoch and validation finish, with the same
    batches as outside any trial."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from mgc_ray import cluster

    def in_a_trial(datasets, epoch: int) -> tuple:
        """What a trial sees: its reads bundle's CPUs, an epoch's batches as (labels, sum of waves) and the
        validation crops' (track id, label). Defined here, so that Ray pickles it whole (a worker cannot
        import a test module)."""
        from mgc_ray.data.pipeline import eval_batches, train_batches, trial_reads

        batches = train_batches(datasets, crop_len=2000, batch_size=8, seed=3, epoch=epoch)
        val = eval_batches(datasets.val, crop_len=2000, batch_size=8)
        return (
            trial_reads().cpus,
            [(label.tolist(), float(wave.double().sum())) for wave, label in batches],
            [(int(t), int(y)) for _, label, tid in val for t, y in zip(tid, label)],
        )

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    res = cluster.plan_resources(nodes, None, None, None)
    assert res.bundles() == [{"CPU": 1.0}, {"CPU": 1.0}] and res.max_concurrent == 1  # every CPU of this Ray
    assert sum(b["CPU"] for b in res.bundles()) == ray.cluster_resources()["CPU"]
    datasets = CacheDatasets.build(small_cache, materialise=materialise)
    outside = in_a_trial(datasets, 2)
    pg = placement_group(res.bundles(), strategy="STRICT_PACK")
    ray.get(pg.ready(), timeout=60)
    try:
        trial = ray.remote(in_a_trial).options(
            num_cpus=res.cpus,
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0, placement_group_capture_child_tasks=True),
        )
        try:
            cpus, epoch, val = ray.get(trial.remote(datasets, 2), timeout=120)
        except ray.exceptions.GetTimeoutError:
            pytest.fail("the trial's Ray Data waited for a CPU outside its reservation")
    finally:
        remove_placement_group(pg)
    assert cpus == res.data_cpus, "Ray Data planned for the reads bundle's CPUs"
    assert (epoch, val) == outside[1:], "the same batches and validation crops as outside any trial"
    assert len(val) == small_cache.num_tracks["val"]


def test_the_materialise_decision_prints_both_sizes(small_cache, ray_local, capsys):
    manifest = small_cache
    datasets = CacheDatasets.build(manifest)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "decoded" in ln]
    assert len(lines) == 1, "printed once"
    assert re.search(r"cache [\d.]+ GB decoded, object store [\d.]+ GB free: materialised", lines[0]), lines[0]
    assert datasets.materialised, "a tiny cache fits in the store"
    decoded = sum(decoded_bytes(p) for s in ("train", "val", "test") for p in manifest.shard_paths(s))
    raw = sum(manifest.num_tracks.values()) * round(0.2 * 22050) * 2
    assert raw <= decoded < 1.2 * raw, "the decision weighs the decoded samples, not the compressed files"


@pytest.mark.parametrize("method", ["sinc", "linear"])
def test_stretched_crops_of_long_tracks_end_in_audio(method):
    crop = 4000
    aug = Augment(noise_p=0.0, stretch_p=1.0, stretch_method=method)
    window = aug.input_len(crop)
    rng = np.random.default_rng(0)
    long = (rng.standard_normal(5 * crop) * 3000).astype(np.int16)  # a 20,000-sample track
    rows = _crop_rows(
        {"track_id": [1, 2, 3], "label": [0, 0, 0], "samples": [long, long, long]},
        crop_len=window,
        mode="random",
        seed=0,
        epoch=0,
    )
    wave = torch.from_numpy(rows["wave"]).float() / 32768  # (3, window)
    params = {
        "stretch": np.ones(3, dtype=bool),
        "rate": np.array([1.1, 0.9, 1.05]),
        "noise": np.zeros(3, dtype=bool),
        "noise_rel": np.zeros(3, dtype=np.float32),
    }
    out = aug.apply(wave, params, out_len=crop)
    assert out.shape == (3, crop)
    tail = out[:, -200:].abs().amax(dim=1)
    assert bool((tail > 1e-3).all()), f"a stretched crop ends in silence: {tail}"
    # the window is what made the difference: stretching the bare crop leaves zeros at the end
    bare = aug.apply(wave[:, :crop], params)
    assert float(bare[0, -200:].abs().max()) == 0.0
    # a track shorter than the crop is zero-padded as before
    short = _crop_rows(
        {"track_id": [4], "label": [0], "samples": [long[: crop // 2]]}, crop_len=window, mode="random", seed=0, epoch=0
    )["wave"]
    padded = aug.apply(torch.from_numpy(short).float(), {k: v[:1] for k, v in params.items()}, out_len=crop)
    assert padded.shape == (1, crop) and float(padded[0, -100:].abs().max()) == 0.0


def test_random_augment_output_has_the_crop_length():
    aug = Augment()
    wave = torch.randn(4, aug.input_len(3000)) * 0.1
    out = aug(wave, np.random.default_rng(0), out_len=3000)
    assert out.shape == (4, 3000)
    again = aug(wave, np.random.default_rng(0), out_len=3000)
    assert torch.equal(out, again)
