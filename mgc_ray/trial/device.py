"""The device a trial trains on, and how trials share a GPU.

Ray decides which GPUs a trial holds; this module turns that into a torch device
and nothing else: a trial with GPUs trains on exactly those (and fails with one
line if torch sees no CUDA), a trial with none never touches CUDA. Ray 2.60 no
longer blanks CUDA_VISIBLE_DEVICES for a zero-GPU worker
(RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO now defaults off), so "cuda whenever torch
sees one" would put every CPU trial on the node's first GPU.

`choose_device`, `memory_fraction` and `oom_error` are pure: tests drive them with
simulated GPU ids on a CPU machine. `trial_device` reads Ray and CUDA and calls them.

Sharing: a trial holding a fraction of a GPU caps its own caching allocator at that
share (`torch.cuda.set_per_process_memory_fraction`), so a neighbour's growth cannot
make it run out of memory, and its own out-of-memory error names its batch size and
share: an error of its own, which recurs (trainable.py stops its retries). An
out-of-memory error well below the cap means the GPU itself was full (a process
outside Ray, or CUDA contexts beyond the headroom): `GpuBusyError`, retried.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

# A trial's cap is its share of this part of the GPU's memory: the rest holds what the caching
# allocator does not count, each process's CUDA context and kernels (~0.5 GiB per trial: 8 trials
# on an 80 GiB GPU take ~5 % of it).
GPU_HEADROOM = 0.92
# An out-of-memory error with less than this part of the cap reserved was not the trial's cap.
OWN_CAP_REACHED = 0.8


class DeviceError(RuntimeError):
    """Ray gave the trial GPUs that torch cannot use, or more than a trial uses."""


class GpuMemoryError(RuntimeError):
    """The trial ran out of its own share of GPU memory: it recurs at this batch size and share."""


class GpuBusyError(RuntimeError):
    """CUDA ran out of memory below the trial's cap: the GPU was full with other work (retried)."""


@dataclass(frozen=True)
class TrialDevice:
    """Where a trial trains."""

    device: str  # "cpu" or "cuda:<index as torch sees it>"
    name: str  # "cpu" or the GPU's name, e.g. "NVIDIA H200"
    gpu_ids: tuple[str, ...] = ()  # the ids Ray assigned (node-level)
    share: float = 0.0  # GPUs the trial holds (a fraction when trials share one)
    memory_fraction: float | None = None  # the allocator's cap as a part of the GPU; None: no cap


def choose_device(gpu_ids: Sequence[str], cuda_available: bool, cuda_count: int, visible: str | None) -> str:
    """The torch device for a trial Ray gave `gpu_ids`.

    Args:
        gpu_ids: the GPU ids Ray assigned (`get_accelerator_ids()["GPU"]`); empty: a CPU trial.
        cuda_available, cuda_count: what torch sees (never asked for a CPU trial).
        visible: CUDA_VISIBLE_DEVICES as the trial sees it (None: unset).

    Returns:
        "cpu", or "cuda:i" for the assigned GPU (index 0 when Ray narrowed CUDA_VISIBLE_DEVICES
        to it, as it does; its node index when nothing narrowed it).

    Raises:
        DeviceError: several GPUs (a trial trains on one), or GPUs but no CUDA in torch.
    """
    ids = [str(i) for i in gpu_ids]
    if not ids:
        return "cpu"
    if len(ids) > 1:
        raise DeviceError(
            f"this trial holds GPUs {','.join(ids)} but trains on one: search with --gpus-per-trial 1 or less"
        )
    if not cuda_available or cuda_count < 1:
        raise DeviceError(
            f"Ray gave this trial GPU {ids[0]} but torch sees no CUDA device "
            f"(CUDA_VISIBLE_DEVICES={visible!r}): install a CUDA build of torch on the GPU "
            "nodes, or search on the CPUs with --gpus-per-trial 0"
        )
    shown = [v.strip() for v in visible.split(",") if v.strip()] if visible is not None else None
    if shown is None:
        index = int(ids[0]) if ids[0].isdigit() else 0
    elif ids[0] in shown:
        index = shown.index(ids[0])
    else:
        raise DeviceError(
            f"Ray gave this trial GPU {ids[0]} but CUDA_VISIBLE_DEVICES={visible!r} hides it: "
            "do not set CUDA_VISIBLE_DEVICES for Ray workers"
        )
    if index >= cuda_count:
        raise DeviceError(f"Ray gave this trial GPU {ids[0]} but torch sees only {cuda_count} CUDA device(s)")
    return f"cuda:{index}"


def memory_fraction(share: float) -> float | None:
    """The allocator cap for a trial holding `share` of a GPU (None for a whole GPU: no cap)."""
    if share <= 0 or share >= 1:
        return None
    return round(share * GPU_HEADROOM, 4)


def oom_error(batch_size: int, share: float, cap_bytes: int | None, reserved_bytes: int) -> RuntimeError:
    """The one-line error for a CUDA out-of-memory error in a trial.

    Args:
        batch_size: the trial's training batch size.
        share: GPUs the trial holds.
        cap_bytes: its allocator cap in bytes (None: the whole GPU).
        reserved_bytes: what its allocator held when the error came.

    Returns:
        GpuMemoryError (its own cap or the whole GPU reached: recurs) or GpuBusyError (below the
        cap: the GPU was full with other work; retried).
    """
    gib = 2**30
    if cap_bytes is not None and reserved_bytes < OWN_CAP_REACHED * cap_bytes:
        return GpuBusyError(
            f"CUDA out of memory with {reserved_bytes / gib:.1f} of this trial's "
            f"{cap_bytes / gib:.1f} GiB in use: the GPU is full with other work; keep other "
            "processes off the trials' GPUs"
        )
    if cap_bytes is None:
        return GpuMemoryError(
            f"CUDA out of memory at batch size {batch_size} on a whole GPU: lower the search space's batch_size"
        )
    return GpuMemoryError(
        f"CUDA out of memory at batch size {batch_size} in {share:g} of a GPU "
        f"({cap_bytes / gib:.1f} GiB): give each trial more (--gpus-per-trial {min(1.0, 2 * share):g}) "
        "or lower the search space's batch_size"
    )


def trial_device(share: float) -> TrialDevice:
    """The device of the running Ray trial, set up: the allocator cap and the cuDNN autotuner on a GPU.

    Args:
        share: GPUs the trial was given (`--gpus-per-trial`).
    """
    import ray

    ids = tuple(str(i) for i in ray.get_runtime_context().get_accelerator_ids().get("GPU", []))
    if not ids:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # this process and its children never see a GPU
        return TrialDevice("cpu", "cpu")
    import torch

    dev = choose_device(
        ids, torch.cuda.is_available(), torch.cuda.device_count(), os.environ.get("CUDA_VISIBLE_DEVICES")
    )
    frac = memory_fraction(share)
    device = torch.device(dev)
    torch.cuda.set_device(device)
    if frac is not None:
        torch.cuda.set_per_process_memory_fraction(frac, device)
    return TrialDevice(dev, torch.cuda.get_device_name(device), ids, float(share), frac)


def cap_bytes(td: TrialDevice) -> int | None:
    """The trial's allocator cap in bytes (None: no cap or no GPU)."""
    if td.memory_fraction is None:
        return None
    import torch

    return int(td.memory_fraction * torch.cuda.get_device_properties(td.device).total_memory)


def to_device(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A small host array on `device` without waiting for the device (pinned, non-blocking copy)."""
    import torch  # loaded already: the caller holds a device

    t = torch.from_numpy(np.ascontiguousarray(a))
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
