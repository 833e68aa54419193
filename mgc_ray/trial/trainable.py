"""The Tune trial: Tune's config dict -> TrainConfig -> train.py -> report/checkpoint.

Each epoch reports the validation metrics (every name of `mgc_ray.metrics`,
prefixed `val/`) and a checkpoint; `best/*` carry the epoch with the lowest
validation loss so far (the paper's rule), so a trial's last result names its
best epoch. Every result also names the Ray node the trial runs on (`node_id`),
its device (`device`: "cpu" or the GPU's name) and how many epochs it took from a
checkpoint (`restored_epochs`, 0 for a fresh start), and where the epoch's time went
(`time/train_s`, `time/val_s`, `time/checkpoint_s`, `time/report_s`). The validation
crops are the same every epoch, so they are read once and held on the trial's device
(up to HELD_VAL_BYTES; a larger split is read again each epoch).

Device: exactly the GPU Ray assigned, or the CPU for a trial without one
(`device.trial_device`: never CUDA for a zero-GPU trial); on a GPU the cuDNN
autotuner is on, the allocator is capped at the trial's share, and a CUDA
out-of-memory error becomes one line naming the batch size and the share.

Failures: Tune retries a failed trial (runner.MAX_FAILURES) from
`ray.tune.get_checkpoint()`, whatever the cause; a damaged one (its files no longer
match their seal) is passed over for the trial's newest intact one, or a start from
epoch 0, in one printed line (`resume.restore`). A dead worker or node deserves
that; an error the trial raised itself (a diverged loss, a CUDA out-of-memory at
this batch size, a bug) recurs. So such an error leaves a note in the trial's
folder, and a retry that finds the note fails again at once with the same
message instead of re-running its epochs. Errors from Ray itself (a lost object,
a dead node under Ray Data) and from the filesystem or network (OSError: a full
disk, a storage hiccup) are retried for real, and so is a CUDA out-of-memory
error well below the trial's memory cap (`device.GpuBusyError`: the GPU was full
with work outside the trials). The note sits in the trial's
working folder (`tune.get_context().get_trial_dir()`, under the node's Ray
session folder): a retry placed on another node runs once more before it stops.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mgc_ray.config import METRIC, VAL_LOSS, ModelConfig, TrainConfig, epoch_seed
from mgc_ray.data.cache import Manifest
from mgc_ray.data.epochs import TrainEpochs
from mgc_ray.data.pipeline import CacheDatasets, eval_batches, train_batches
from mgc_ray.metrics import prefixed
from mgc_ray.models import build_model
from mgc_ray.models import checkpoint as ckpt
from mgc_ray.models.frontend import SpectrogramFrontEnd, WaveformFrontEnd
from mgc_ray.trial.augment import Augment
from mgc_ray.trial.device import (
    GpuBusyError,
    TrialDevice,
    cap_bytes,
    oom_error,
    trial_device,
)
from mgc_ray.trial.loop import (
    compiled,
    make_optimizer,
    predict_logits,
    prepare_model,
    score,
    train_epoch,
)
from mgc_ray.trial.recipe import Recipe
from mgc_ray.trial.resume import restore

# Validation batches carry no gradients, so twice the training batch fits as well.
EVAL_BATCH_FACTOR = 2
# The validation crops (centre crops: the same every epoch) are read once and held on the
# trial's device when they take at most this much as float32: FMA small's 800 x 10 s take
# 0.71 GB; FMA large's ~10,600 would take 9.4 GB and are read again every epoch instead.
HELD_VAL_BYTES = 2**30
FAILURE_NOTE = "mgc_trial_error.txt"  # in the trial's working folder: the error that will recur


class RecurringTrialError(RuntimeError):
    """A retried trial met the note of an error it raised itself before."""


def _best(history: list[dict]) -> dict:
    best = min(history, key=lambda row: row[VAL_LOSS])
    return {
        METRIC: best[VAL_LOSS],
        "best/epoch": best["epoch"],
        "best/val_paper_f1": best["val/paper_f1"],
        "best/val_macro_f1": best["val/macro_f1"],
        "best/val_top1_accuracy": best["val/top1_accuracy"],
    }


def augment_for(model: torch.nn.Module) -> Augment:
    """The paper's augmentation for this model: for a waveform-only (1D) model the noise is raised
    by the 1D front end's resampling loss (1 / 0.82 at 22,050 -> 16,000 Hz), so it reaches the
    network at the paper's level. Fusion keeps the cache-rate level (its 2D branch's)."""
    waves = [m for m in model.modules() if isinstance(m, WaveformFrontEnd)]
    spectra = [m for m in model.modules() if isinstance(m, SpectrogramFrontEnd)]
    gain = waves[0].resample.noise_gain() if waves and not spectra else 1.0
    return Augment(noise_gain=1.0 / gain)


@dataclasses.dataclass
class TrialSetup:
    """What a trial trains with, built from its config by `trial_setup` (the benchmarks build theirs there too)."""

    cfg: TrainConfig
    mcfg: ModelConfig
    device: torch.device
    model: torch.nn.Module  # the parameters, as saved
    net: torch.nn.Module  # trains and predicts: `model`, or compiled over the same parameters (--compile)
    optimizer: torch.optim.Optimizer
    augment: Augment | None  # the paper's augmentation (`augment_for`); None with augmentation off
    recipe: Recipe  # masks, mixup, label smoothing: all off at the paper's settings

    @property
    def window(self) -> int:
        """Samples per training example Ray Data hands the trial: with augmentation a window long enough
        for the largest stretch (the device stretches, then cuts each example to the crop, so a stretched
        crop of a long track is audio to its last sample); else the crop."""
        crop = self.mcfg.crop_samples
        return self.augment.input_len(crop) if self.augment is not None else crop

    def batches(self, datasets: CacheDatasets, epoch: int):
        """The epoch's training batches from Ray Data, on the trial's device: (wave (B, window), label (B,))."""
        return train_batches(
            datasets,
            crop_len=self.window,
            batch_size=self.cfg.batch_size,
            seed=self.cfg.seed,
            epoch=epoch,
            device=str(self.device),
        )

    def train(self, batches, epoch: int) -> dict[str, float]:
        """One training epoch (`loop.train_epoch`): augmentation on the device, cut to the crop, then the
        recipe; both drawn from the epoch's seeded generator (the same draws if this epoch is re-run)."""
        generator = np.random.default_rng(epoch_seed(self.cfg.seed, epoch))
        on_device = (
            functools.partial(self.augment, out_len=self.mcfg.crop_samples) if self.augment is not None else None
        )
        return train_epoch(
            self.net,
            batches,
            self.optimizer,
            augment=on_device,
            generator=generator,
            recipe=self.recipe,
            device=self.device,
        )

    def save(
        self, folder, label_names: list[str], *, epoch: int, metrics: dict, history: list[dict], cost: dict
    ) -> None:
        """The trial's checkpoint of this epoch in `folder`: the model (`models.checkpoint`) and the state a
        restored trial resumes from (Adam's state, the epoch, the history, the cost so far)."""
        ckpt.save(
            folder,
            self.model,
            self.mcfg,
            label_names,
            train_config=dataclasses.asdict(self.cfg),
            epoch=epoch,
            metrics=metrics,
            train_state={"optimizer": self.optimizer.state_dict(), "epoch": epoch, "history": history, "cost": cost},
        )


def trial_setup(cfg: TrainConfig, manifest: Manifest, device: torch.device) -> TrialSetup:
    """A trial's model, optimiser, augmentation and recipe for this cache, on `device`.

    The model is seeded (`cfg.seed`), moved to the device (`loop.prepare_model`: channels_last on
    CUDA) and compiled with `cfg.compile`; Adam is `loop.make_optimizer`'s. On CUDA this turns on
    cuDNN's autotuner (process-wide): a trial's input shapes are fixed, so it times its algorithms once.
    """
    mcfg = cfg.model_config(
        manifest.sample_rate, manifest.wave_mean, manifest.wave_std, n_classes=len(manifest.label_names)
    )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(cfg.seed)
    model = prepare_model(build_model(mcfg), device)
    optimizer = make_optimizer(model, cfg)
    augment = augment_for(model).to(device) if cfg.augment else None
    return TrialSetup(cfg, mcfg, device, model, compiled(model, cfg.compile), optimizer, augment, Recipe.of(cfg))


def train_trial(config: dict, *, datasets: CacheDatasets, manifest: Manifest, gpu_share: float = 0.0) -> None:
    """Run one trial: train up to `max_epochs`, reporting and checkpointing every epoch.

    Args:
        gpu_share: the GPUs Tune gave each trial (`--gpus-per-trial`): the memory cap on a shared GPU.

    Raises:
        RecurringTrialError: a retry of a trial that raised an error itself (see the module doc).
    """
    import ray
    from ray import tune

    note = Path(tune.get_context().get_trial_dir()) / FAILURE_NOTE
    if note.is_file():
        raise RecurringTrialError(
            f"{note.read_text().strip()} (raised by this trial before; "
            "an error of its own recurs, so the retry stops here)"
        )
    try:
        _train(config, datasets, manifest, gpu_share)
    except Exception as exc:
        if not isinstance(exc, (ray.exceptions.RayError, OSError, GpuBusyError)):
            text = str(exc).strip().splitlines()
            note.parent.mkdir(parents=True, exist_ok=True)
            note.write_text(f"{type(exc).__name__}: {text[0] if text else ''}\n")
        raise


def _train(config: dict, datasets: CacheDatasets, manifest: Manifest, gpu_share: float) -> None:
    cfg = TrainConfig.from_dict(config)
    td = trial_device(gpu_share)
    if td.device == "cpu":
        return _epochs(cfg, datasets, manifest, td)
    try:  # trial_setup turns on cuDNN's autotuner
        return _epochs(cfg, datasets, manifest, td)
    except torch.cuda.OutOfMemoryError:
        raise oom_error(cfg.batch_size, td.share, cap_bytes(td), torch.cuda.memory_reserved(td.device)) from None


def _epochs(cfg: TrainConfig, datasets: CacheDatasets, manifest: Manifest, td: TrialDevice) -> None:
    import ray
    from ray import tune

    node_id = ray.get_runtime_context().get_node_id()
    device = torch.device(td.device)
    label_names = list(manifest.label_names)
    setup = trial_setup(cfg, manifest, device)
    mcfg, net = setup.mcfg, setup.net  # `net` trains and predicts; `setup.model` (the same parameters) is saved
    history: list[dict] = []
    start = 0
    cost = {"samples": 0, "wall_s": 0.0, "cpu_s": 0.0}  # this trial's so far (carried in its checkpoints)
    handed = tune.get_checkpoint()
    restored, note = restore(handed) if handed is not None else (None, None)
    if note:  # the handed checkpoint was damaged: which one the trial continues from, or a fresh start
        print(note, flush=True)
    if restored is not None:
        state = restored.state
        setup.model.load_state_dict(restored.payload.state_dict)
        setup.optimizer.load_state_dict(state["optimizer"])
        history, start = state["history"], state["epoch"] + 1
        cost = dict(state.get("cost", cost))
    val_crops = functools.partial(
        eval_batches,
        datasets.val,
        crop_len=mcfg.crop_samples,
        batch_size=EVAL_BATCH_FACTOR * cfg.batch_size,
        device=str(device),
    )
    held = 4 * manifest.num_tracks["val"] * mcfg.crop_samples <= HELD_VAL_BYTES
    val_batches = None  # the held crops, once read
    last_report_s = 0.0
    # each epoch's Ray Data execution starts when the epoch before it has trained, so its first
    # batches are read while that epoch validates, checkpoints and reports (data.epochs)
    epochs = TrainEpochs(functools.partial(setup.batches, datasets), range(start, cfg.max_epochs))
    with epochs:  # a trial stopped or failing between epochs shuts the prefetched execution down
        for epoch, batches in epochs:
            t0, c0 = time.perf_counter(), time.process_time()
            tr = setup.train(batches, epoch)
            if not math.isfinite(tr["loss"]):
                raise FloatingPointError(
                    f"training loss is {tr['loss']} in epoch {epoch} at lr {cfg.lr:g}: "
                    "the model diverged; lower the learning rate (search space lr)"
                )
            t_val = time.perf_counter()
            if held and val_batches is None:
                val_batches = list(val_crops())
            logits, labels, _ = predict_logits(net, val_batches if held else val_crops(), device=device)
            t_val_end = time.perf_counter()
            cost = {
                "samples": cost["samples"] + tr["samples"],
                "wall_s": cost["wall_s"] + time.perf_counter() - t0,
                "cpu_s": cost["cpu_s"] + time.process_time() - c0,
            }
            timing = {f"train/{k}": tr[k] for k in ("data_wait_s", "first_batch_wait_s", "gpu_wait_share") if k in tr}
            # where the epoch's time went besides training: the validation pass, the checkpoint
            # written locally (Tune then copies it to the storage path inside `report`), the
            # previous epoch's report (0 for the first epoch of a session)
            timing.update({"time/train_s": t_val - t0, "time/val_s": t_val_end - t_val, "time/report_s": last_report_s})
            row = {
                "epoch": epoch,
                "train/loss": tr["loss"],
                "train/samples_per_s": tr["samples_per_s"],
                **timing,
                **prefixed("val", score(logits, labels, label_names)),
                **_cost(cost, td.share),
            }
            history.append(row)
            with tempfile.TemporaryDirectory() as d:
                t_ckpt = time.perf_counter()
                setup.save(d, label_names, epoch=epoch, metrics=row, history=history, cost=cost)
                t_report = time.perf_counter()
                tune.report(
                    {
                        **row,
                        "time/checkpoint_s": t_report - t_ckpt,
                        **_best(history),
                        "node_id": node_id,
                        "device": td.name,
                        "data_mode": datasets.mode,
                        "restored_epochs": start,
                    },
                    checkpoint=tune.Checkpoint.from_directory(d),
                )
                last_report_s = time.perf_counter() - t_report


def _cost(cost: dict, gpu_share: float) -> dict:
    """What the trial has cost so far: training samples seen, wall, CPU (this process) and GPU
    seconds (its GPU share x wall time), and samples per second of wall time."""
    return {
        "cost/samples_seen": cost["samples"],
        "cost/wall_s": cost["wall_s"],
        "cost/cpu_s": cost["cpu_s"],
        "cost/gpu_s": gpu_share * cost["wall_s"],
        "cost/samples_per_s": cost["samples"] / max(cost["wall_s"], 1e-9),
    }
