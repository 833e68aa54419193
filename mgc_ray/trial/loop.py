"""The plain-torch epoch loop: no Ray here, so it tests fast on a CPU.

The trial (`trainable.py`) feeds it batches from Ray Data; tests and
benchmarks feed it tensors directly.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from mgc_ray.config import TrainConfig
from mgc_ray.metrics import compute_metrics
from mgc_ray.trial.recipe import Recipe


def pick_device() -> torch.device:
    """The first CUDA device when there is one (Ray sets CUDA_VISIBLE_DEVICES per trial)."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def prepare_model(model: torch.nn.Module, device: torch.device, channels_last: bool | None = None) -> torch.nn.Module:
    """Move to `device` in the layout its convolutions want.

    Args:
        channels_last: None (the trial's): channels_last on CUDA (cuDNN's fast layout under bf16),
            contiguous on the CPU; True: channels_last on any device (tests run the GPU path on the
            CPU with it); False: contiguous.
    """
    model = model.to(device)
    if device.type == "cuda" if channels_last is None else channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def compiled(model: torch.nn.Module, enabled: bool, threads: int | None = None) -> torch.nn.Module:
    """`torch.compile(model)` when enabled (the trial's --compile), else the model itself.

    The compiled wrapper shares the model's parameters: train and predict with it, save
    the model (its state dict has no `_orig_mod.` prefix). Inductor starts a pool of compile
    workers sized by the node's cores (up to 32), in every trial process: it gets `threads`
    instead (default torch's threads, which Ray sets to the trial's CPUs through
    OMP_NUM_THREADS), unless TORCHINDUCTOR_COMPILE_THREADS says otherwise."""
    if not enabled:
        return model
    if "TORCHINDUCTOR_COMPILE_THREADS" not in os.environ:
        import torch._inductor.config as inductor

        inductor.compile_threads = max(1, threads or torch.get_num_threads())
    return torch.compile(model)


def autocast(device: torch.device, enabled: bool | None = None):
    """bf16 autocast (no loss scaling needed, unlike fp16).

    Args:
        enabled: None (the trial's): on CUDA only, float32 on the CPU (where bf16 is slower);
            True: on any device (tests run the GPU path on the CPU with it); False: float32.
    """
    if device.type == "cuda" if enabled is None else enabled:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, fused: bool = True) -> torch.optim.Optimizer:
    """Adam with L2 weight decay, the paper's optimiser (lr 1e-4, wd 1e-4 at paper settings).

    `fused` (default): one kernel for every parameter's update, on CUDA and the CPU, with the
    step counts on the device (the for-each Adam reads each step count on the host); the
    same update up to float rounding. `fused=False` is torch's default for comparison.
    """
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True if fused else None)


def train_epoch(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    augment=None,
    generator=None,
    recipe: Recipe | None = None,
    device: torch.device | None = None,
    amp: bool | None = None,
) -> dict[str, float]:
    """One pass over `batches` with unweighted cross-entropy (the paper's loss).

    Args:
        batches: (wave (B, N) float in [-1, 1], label (B,)) pairs, already on the device.
        augment: optional callable (wave, generator) -> wave, run on the device.
        generator: what `augment` draws from (a numpy Generator for `augment.Augment`), and then
            the recipe's masks and mixup (None with a recipe on: a fresh unseeded one).
        recipe: masks, mixup, label smoothing (`mgc_ray.trial.recipe`), after `augment`; None or all
            off: the paper's plain cross-entropy, and nothing more drawn from `generator`.
        amp: bf16 autocast (`autocast`: None, on CUDA only).
    Nothing is read back from the device inside the loop (the loss is summed on the device
    and read once, at the end), so the host queues the next steps while the GPU runs.

    On CUDA a pair of events brackets each step on the GPU's timeline, so the epoch also tells
    how long the GPU sat idle outside the steps (waiting for data, or for the host).

    Returns:
        {"loss": mean training loss, "samples": n, "seconds": wall time, "samples_per_s",
        "data_wait_s": host time blocked waiting for the next batch, "first_batch_wait_s": the part of
        it spent on the first batch (the epoch's start: its Ray Data execution's, unless prefetched), and on CUDA
        "gpu_wait_share": the part of the epoch the GPU spent outside the steps}.
    """
    device = device or next(model.parameters()).device
    model.train()
    if recipe is not None and recipe == Recipe():
        recipe = None  # all off: the paper's step exactly
    if recipe is not None and generator is None:
        generator = np.random.default_rng()
    timing = device.type == "cuda"
    marks: list = []  # CUDA events: epoch start, then (step start, step end) per step
    if timing:
        marks.append(torch.cuda.Event(enable_timing=True))
        marks[0].record()
    total, n, wait, t0 = torch.zeros((), device=device), 0, 0.0, time.perf_counter()
    first_wait = None
    batches = iter(batches)
    while True:
        t_wait = time.perf_counter()
        item = next(batches, None)
        wait += time.perf_counter() - t_wait
        if first_wait is None:
            first_wait = wait
        if item is None:
            break
        wave, label = item
        if timing:
            marks.append(torch.cuda.Event(enable_timing=True))
            marks[-1].record()
        if augment is not None:
            wave = augment(wave, generator)  # (B, crop), noise + stretch on the device, cut to the crop
        drawn = recipe.draw(len(label), wave.device, generator) if recipe is not None else None  # on the host
        if drawn is not None:
            wave = drawn.mix(wave)  # (B, crop), mixup's pairs (wave itself without mixup)
        with autocast(device, amp):
            if drawn is None or drawn.masks is None:
                logits = model(wave)  # (B, n_classes)
            else:
                logits = model(wave, masks=drawn.masks)  # (B, n_classes), masked in the front end(s)
            if drawn is None:
                loss = F.cross_entropy(logits.float(), label)
            else:
                loss = recipe.loss(logits.float(), label, drawn)  # smoothing; mixup's two targets
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach() * len(label)  # on the device: no host sync per step
        n += len(label)
        if timing:
            marks.append(torch.cuda.Event(enable_timing=True))
            marks[-1].record()
    if n == 0:
        raise RuntimeError("the training split gave no batch: is it smaller than one batch?")
    mean = float(total) / n  # the epoch's one host read; it waits for the last step
    seconds = time.perf_counter() - t0
    out = {
        "loss": mean,
        "samples": n,
        "seconds": seconds,
        "samples_per_s": n / max(seconds, 1e-9),
        "data_wait_s": wait,
        "first_batch_wait_s": first_wait,
    }
    if timing:  # every event has completed: float(total) waited for the last step
        busy = sum(a.elapsed_time(b) for a, b in zip(marks[1::2], marks[2::2]))  # ms inside steps
        span = marks[0].elapsed_time(marks[-1])  # ms from the epoch's start to its last step's end
        out["gpu_wait_share"] = max(0.0, 1.0 - busy / span) if span > 0 else 0.0
    return out


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module, batches: Iterable, *, device: torch.device | None = None, amp: bool | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits of every crop.

    Args:
        batches: (wave, label) or (wave, label, track_id) tuples.
    Returns:
        (logits (N, C) float32, labels (N,), track_ids (N,) or -1 where not given).
    """
    device = device or next(model.parameters()).device
    model.eval()
    out, labels, ids = [], [], []
    for b in batches:
        wave, label = b[0], b[1]
        with autocast(device, amp):
            out.append(model(wave).float().cpu())  # (B, n_classes)
        labels.append(torch.as_tensor(label).cpu())
        ids.append(torch.as_tensor(b[2]).cpu() if len(b) > 2 else torch.full((len(label),), -1))
    if not out:
        raise RuntimeError("the evaluation split gave no batch: is it empty?")
    return torch.cat(out).numpy(), torch.cat(labels).numpy(), torch.cat(ids).numpy()


def track_level(
    logits: np.ndarray, labels: np.ndarray, track_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average the crops' logits per track (crops covering the whole clip).

    Args:
        logits: (N, C) one row per crop; labels, track_ids: (N,).

    Returns:
        (logits (T, C), labels (T,), track ids (T,)), one row per track, sorted by track id.
    """
    uniq, inv = np.unique(track_ids, return_inverse=True)
    summed = np.zeros((len(uniq), logits.shape[1]), dtype=np.float64)
    np.add.at(summed, inv, logits)
    counts = np.bincount(inv, minlength=len(uniq))[:, None]
    first = np.zeros(len(uniq), dtype=np.int64)
    first[inv[::-1]] = np.arange(len(inv))[::-1]
    return (summed / counts).astype(np.float32), labels[first], uniq


def score(logits: np.ndarray, labels: np.ndarray, label_names: list[str]) -> dict[str, float]:
    """Cross-entropy plus every metric of `mgc_ray.metrics` for these logits."""
    loss = float(F.cross_entropy(torch.from_numpy(logits).float(), torch.from_numpy(labels).long()))
    return {"loss": loss, **compute_metrics(labels, logits.argmax(1), label_names)}
