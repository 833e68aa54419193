"""Ray Data pipelines: cache shards -> crops -> batches on the trial's device.

Where each step runs, and why:
  - the driver reads the Parquet shards once (`CacheDatasets.build`) and, when
    the cache fits comfortably in the object store, materialises them there, so
    every trial on every node reads the same blocks (no trial holds its own copy
    of the cache); a larger cache streams from the shards' shared path instead;
  - cropping runs in Ray Data tasks on CPUs (`map_batches`): only the crop (10 s
    of int16, 441 kB) travels to the trial, not the 30-s clip;
  - noise and time stretch run on the trial's device (`augment.Augment`), where
    they cost nothing beside the model.
This module imports no torch: the crop UDF is pickled by reference to it, so
every Ray Data worker imports it, and torch + torchaudio would cost each worker
more than a second and ~640 MB (benchmarks/crop_worker.py).
Every epoch gets a new block order, a new local shuffle and a new random crop
per track (seeded by (seed, epoch, track_id), so a restarted epoch sees the
same crops).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import numpy as np

from mgc_ray.cache import INT16_SCALE  # int16 full scale -> [-1, 1)
from mgc_ray.config import SPLITS, epoch_seed

if TYPE_CHECKING:
    import torch

# Materialise the cache in the object store when it takes at most this share of it:
# below that, sharing one in-memory copy is cheaper than every trial re-reading Parquet.
MATERIALISE_SHARE = 0.3
# Crop tasks are light (slicing); a fraction of a CPU lets them run beside trials that
# hold whole CPUs on a small machine without starving the trials' Ray Data (trials holding every CPU hang it).
CROP_TASK_CPUS = 0.25


# --- crops (CPU, in Ray Data tasks) --------------------------------------------
# numpy in, numpy out; a torch tensor (predict, tests) works too without this module
# importing torch: a Ray Data worker that unpickles the crop UDF imports only numpy.
def _is_tensor(x) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _pad_end(x, length: int):
    """Zero-pad the last axis of a numpy array or torch tensor at its end to `length`."""
    n = x.shape[-1]
    if n >= length:
        return x
    if _is_tensor(x):
        import torch  # only a caller holding a tensor gets here, so torch is loaded already

        return torch.nn.functional.pad(x, (0, length - n))
    return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, length - n)])


def random_crop(x, crop_len: int, rng: np.random.Generator):
    """A uniformly placed crop of `crop_len` samples along the last axis.

    A track shorter than the crop is returned whole, zero-padded at its end
    (the audio starts at sample 0 of the crop, as it does in `centre_crop`).

    Args:
        x: (..., N) numpy array (int16 or float) or torch tensor.
        crop_len: samples in the crop.
        rng: numpy Generator (the data pipeline's, seeded per epoch).

    Returns:
        (..., crop_len), same type and dtype as `x`.
    """
    n = x.shape[-1]
    if n <= crop_len:
        return _pad_end(x, crop_len)
    start = int(rng.integers(0, n - crop_len + 1))
    return x[..., start:start + crop_len]


def centre_crop(x, crop_len: int):
    """The middle `crop_len` samples (validation crops); shorter tracks are zero-padded at the end.

    Args:
        x: (..., N) numpy array or torch tensor.
        crop_len: samples in the crop.

    Returns:
        (..., crop_len), same type and dtype as `x`.
    """
    n = x.shape[-1]
    if n <= crop_len:
        return _pad_end(x, crop_len)
    start = (n - crop_len) // 2
    return x[..., start:start + crop_len]


def cover_crops(x, crop_len: int, hop: int | None = None):
    """Crops that together cover the whole clip, for track-level scores.

    Crops start at 0, hop, 2 hop, ...; the last one is aligned to the end of
    the clip (so it may overlap its neighbour). A clip no longer than the crop
    gives one crop, zero-padded at the end. A 30-s clip with 10-s crops gives 3.

    Args:
        x: (N,) numpy array or torch tensor.
        crop_len: samples per crop.
        hop: distance between crop starts (default crop_len: no overlap but the last).

    Returns:
        (n, crop_len) with n = 1 + ceil((N - crop_len) / hop), same type and dtype as `x`.
    """
    hop = crop_len if hop is None else int(hop)
    if hop < 1:
        raise ValueError(f"hop must be >= 1, got {hop}")
    n = x.shape[-1]
    if n <= crop_len:
        crops = [_pad_end(x, crop_len)]
    else:
        starts = list(range(0, n - crop_len, hop)) + [n - crop_len]
        crops = [x[..., s:s + crop_len] for s in starts]
    if _is_tensor(x):
        import torch

        return torch.stack(crops)
    return np.stack(crops)




def _samples(x) -> np.ndarray:
    return np.asarray(x, dtype=np.int16)


def _crop_rows(batch: dict, *, crop_len: int, mode: str, seed: int = 0, epoch: int = 0) -> dict:
    """Ray Data batch UDF: whole clips -> fixed-length int16 crops.

    Args:
        batch: numpy batch with track_id, label, samples (one array per clip).
        crop_len: samples per crop at the cache rate.
        mode: "random" (training: new crop per track per epoch), "centre"
            (validation/test at crop level) or "cover" (crops covering the clip,
            one row each, for track-level scores).
    Returns:
        numpy batch with wave (n, crop_len) int16, label int64, track_id int64.
    """
    waves, labels, ids = [], [], []
    for tid, lab, s in zip(batch["track_id"], batch["label"], batch["samples"]):
        x = _samples(s)
        if mode == "random":
            rng = np.random.default_rng((int(seed), int(epoch), int(tid)))
            crops = [random_crop(x, crop_len, rng)]
        elif mode == "centre":
            crops = [centre_crop(x, crop_len)]
        elif mode == "cover":
            crops = list(cover_crops(x, crop_len))
        else:
            raise ValueError(f"unknown crop mode {mode!r}")
        waves.extend(crops)
        labels.extend([int(lab)] * len(crops))
        ids.extend([int(tid)] * len(crops))
    return {"wave": np.stack(waves).astype(np.int16, copy=False),
            "label": np.asarray(labels, dtype=np.int64),
            "track_id": np.asarray(ids, dtype=np.int64)}


@dataclass(frozen=True)
class CacheDatasets:
    """The cache's splits as Ray Datasets, built once in the driver and shared by trials.

    Attributes:
        train, val, test: Ray Datasets with columns track_id, label, split, num_samples, samples.
        sample_rate: the cache's rate (every crop length is counted in it).
        materialised: whether the blocks sit in the object store (else streamed from Parquet).
    """

    train: object
    val: object
    test: object
    sample_rate: int
    materialised: bool

    @classmethod
    def build(cls, manifest, materialise: bool | None = None) -> "CacheDatasets":
        """Read every split's shards (a `cache.Manifest`); materialise them if they fit (see MATERIALISE_SHARE)."""
        import ray

        if materialise is None:
            size = sum(_file_size(p) for s in SPLITS for p in manifest.shard_paths(s))
            store = ray.available_resources().get("object_store_memory", 0)
            materialise = size <= MATERIALISE_SHARE * store
        _quiet_ray_data()
        cols = ["track_id", "label", "samples"]
        splits = {}
        for split in SPLITS:
            ds = ray.data.read_parquet(manifest.shard_paths(split)).select_columns(cols)
            splits[split] = ds.materialize() if materialise else ds
        return cls(splits["train"], splits["val"], splits["test"], manifest.sample_rate, materialise)


def _file_size(path: str) -> int:
    return os.path.getsize(path)


def _quiet_ray_data() -> None:
    """Tune's table is the progress display: no per-epoch Ray Data bars or plan logs.

    Datasets capture the DataContext where they are built, so the driver calls this
    too (in `CacheDatasets.build`)."""
    import logging

    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no "Dataset ... execution finished" line per epoch
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # nor "Progress bars disabled": on purpose


def train_batches(ds, *, crop_len: int, batch_size: int, seed: int, epoch: int,
                  device: str = "cpu") -> Iterator[tuple["torch.Tensor", "torch.Tensor"]]:
    """One training epoch: new block order, local shuffle and random crops.

    Yields:
        (wave (B, crop_len) float32 in [-1, 1) on `device`, label (B,) int64).
    """
    _quiet_ray_data()
    epoch_ds = ds.randomize_block_order(seed=epoch_seed(seed, epoch)).map_batches(
        _crop_rows, fn_kwargs=dict(crop_len=crop_len, mode="random", seed=seed, epoch=epoch),
        batch_format="numpy", num_cpus=CROP_TASK_CPUS)
    yield from _to_device(epoch_ds, batch_size=batch_size, device=device, drop_last=True,
                          shuffle_buffer=4 * batch_size, shuffle_seed=epoch_seed(seed, epoch))


def eval_batches(ds, *, crop_len: int, batch_size: int, mode: str = "centre",
                 device: str = "cpu") -> Iterator[tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]]:
    """Deterministic crops for validation/test.

    Args:
        mode: "centre" (one centred crop per track, the paper's) or "cover"
            (crops covering the whole clip; average their logits per track_id).
    Yields:
        (wave (B, crop_len) float32 on `device`, label (B,), track_id (B,)).
    """
    _quiet_ray_data()
    crops = ds.map_batches(_crop_rows, fn_kwargs=dict(crop_len=crop_len, mode=mode),
                           batch_format="numpy", num_cpus=CROP_TASK_CPUS)
    yield from _to_device(crops, batch_size=batch_size, device=device, drop_last=False, with_ids=True)


def _to_device(ds, *, batch_size: int, device: str, drop_last: bool, shuffle_buffer: int | None = None,
               shuffle_seed: int | None = None, with_ids: bool = False):
    for b in ds.iter_torch_batches(batch_size=batch_size, prefetch_batches=2, device="cpu",
                                   drop_last=drop_last, local_shuffle_buffer_size=shuffle_buffer,
                                   local_shuffle_seed=shuffle_seed,
                                   pin_memory=str(device).startswith("cuda")):
        wave = b["wave"].to(device, non_blocking=True).float().div_(INT16_SCALE)  # (B, crop_len)
        label = b["label"].to(device, non_blocking=True).long()  # (B,)
        yield (wave, label, b["track_id"]) if with_ids else (wave, label)
