"""The Tune trial: Tune's config dict -> TrainConfig -> train.py -> report/checkpoint.

Each epoch reports the validation metrics (every name of `mgc_ray.metrics`,
prefixed `val/`) and a checkpoint; `best/*` carry the epoch with the lowest
validation loss so far (the paper's rule), so a trial's last result names its
best epoch. Every result also names the Ray node the trial runs on (`node_id`)
and how many epochs it took from a checkpoint (`restored_epochs`, 0 for a fresh
start).

Failures: Tune retries a failed trial (runner.MAX_FAILURES) from
`ray.tune.get_checkpoint()`, whatever the cause. A dead worker or node deserves
that; an error the trial raised itself (a diverged loss, a CUDA out-of-memory at
this batch size, a bug) recurs. So such an error leaves a note in the trial's
folder, and a retry that finds the note fails again at once with the same
message instead of re-running its epochs. Errors from Ray itself (a lost object,
a dead node under Ray Data) and from the filesystem or network (OSError: a full
disk, a storage hiccup) are retried for real. The note sits in the trial's
working folder (`tune.get_context().get_trial_dir()`, under the node's Ray
session folder): a retry placed on another node runs once more before it stops.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import tempfile
from pathlib import Path

import torch

from mgc_ray import checkpoint as ckpt
from mgc_ray.config import TrainConfig
from mgc_ray.data import CacheDatasets, eval_batches, train_batches
from mgc_ray.features import Augment
from mgc_ray.models import build_model
from mgc_ray.train import make_optimizer, pick_device, predict_logits, prepare_model, score, train_epoch

# Validation batches carry no gradients, so twice the training batch fits as well.
EVAL_BATCH_FACTOR = 2
FAILURE_NOTE = "mgc_trial_error.txt"  # in the trial's working folder: the error that will recur


class RecurringTrialError(RuntimeError):
    """A retried trial met the note of an error it raised itself before."""


def _prefixed(prefix: str, metrics: dict) -> dict:
    return {f"{prefix}/{k}": v for k, v in metrics.items()}


def _best(history: list[dict]) -> dict:
    best = min(history, key=lambda row: row["val/loss"])
    return {"best/val_loss": best["val/loss"], "best/epoch": best["epoch"],
            "best/val_paper_f1": best["val/paper_f1"], "best/val_macro_f1": best["val/macro_f1"],
            "best/val_top1_accuracy": best["val/top1_accuracy"]}


def train_trial(config: dict, *, datasets: CacheDatasets, manifest: dict) -> None:
    """Run one trial: train up to `max_epochs`, reporting and checkpointing every epoch.

    Raises:
        RecurringTrialError: a retry of a trial that raised an error itself (see the module doc).
    """
    import ray
    from ray import tune

    note = Path(tune.get_context().get_trial_dir()) / FAILURE_NOTE
    if note.is_file():
        raise RecurringTrialError(f"{note.read_text().strip()} (raised by this trial before; "
                                  "an error of its own recurs, so the retry stops here)")
    try:
        _train(config, datasets, manifest)
    except Exception as exc:
        if not isinstance(exc, (ray.exceptions.RayError, OSError)):
            text = str(exc).strip().splitlines()
            note.parent.mkdir(parents=True, exist_ok=True)
            note.write_text(f"{type(exc).__name__}: {text[0] if text else ''}\n")
        raise


def _train(config: dict, datasets: CacheDatasets, manifest: dict) -> None:
    import ray
    from ray import tune

    cfg = TrainConfig.from_dict(config)
    node_id = ray.get_runtime_context().get_node_id()
    device = pick_device()
    label_names = list(manifest["label_names"])
    mcfg = cfg.model_config(int(manifest["sample_rate"]), float(manifest["wave_mean"]),
                            float(manifest["wave_std"]), n_classes=len(label_names))
    torch.manual_seed(cfg.seed)
    fields = {k: v for k, v in dataclasses.asdict(mcfg).items() if k != "arch"}
    model = prepare_model(build_model(cfg.arch, **fields), device)
    optimizer = make_optimizer(model, cfg)
    history: list[dict] = []
    start = 0
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            payload = ckpt.load_payload(d)
            state = ckpt.load_train_state(d)
        model.load_state_dict(payload["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        history, start = state["history"], state["epoch"] + 1
    crop = mcfg.crop_samples
    augment = Augment().to(device) if cfg.augment else None
    # With augmentation, Ray Data hands a window long enough for the largest stretch; the device stretches,
    # then cuts each example to the crop (a stretched crop of a long track is audio to its last sample).
    window = augment.input_len(crop) if augment is not None else crop
    on_device = functools.partial(augment, out_len=crop) if augment is not None else None
    generator = torch.Generator(device=device)
    for epoch in range(start, cfg.max_epochs):
        generator.manual_seed(cfg.seed * 100_003 + epoch)  # the same draws if this epoch is re-run
        batches = train_batches(datasets, crop_len=window, batch_size=cfg.batch_size,
                                seed=cfg.seed, epoch=epoch, device=str(device))
        tr = train_epoch(model, batches, optimizer, augment=on_device, generator=generator, device=device)
        if not math.isfinite(tr["loss"]):
            raise FloatingPointError(f"training loss is {tr['loss']} in epoch {epoch} at lr {cfg.lr:g}: "
                                     "the model diverged; lower the learning rate (search space lr)")
        logits, labels, _ = predict_logits(model, eval_batches(
            datasets.val, crop_len=mcfg.crop_samples, batch_size=EVAL_BATCH_FACTOR * cfg.batch_size,
            device=str(device)), device=device)
        row = {"epoch": epoch, "train/loss": tr["loss"], "train/samples_per_s": tr["samples_per_s"],
               **_prefixed("val", score(logits, labels, label_names))}
        history.append(row)
        with tempfile.TemporaryDirectory() as d:
            ckpt.save(d, model, mcfg, label_names, train_config=dataclasses.asdict(cfg), epoch=epoch,
                      metrics=row, train_state={"optimizer": optimizer.state_dict(), "epoch": epoch,
                                                "history": history})
            tune.report({**row, **_best(history), "node_id": node_id, "restored_epochs": start},
                        checkpoint=tune.Checkpoint.from_directory(d))
