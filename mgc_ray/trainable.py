"""The Tune trial: Tune's config dict -> TrainConfig -> train.py -> report/checkpoint.

Each epoch reports the validation metrics (every name of `mgc_ray.metrics`,
prefixed `val/`) and a checkpoint; `best/*` carry the epoch with the lowest
validation loss so far (the paper's rule), so a trial's last result names its
best epoch. A restarted trial continues from `ray.tune.get_checkpoint()`.
"""
from __future__ import annotations

import dataclasses
import tempfile

import torch

from mgc_ray import checkpoint as ckpt
from mgc_ray.config import TrainConfig
from mgc_ray.data import CacheDatasets, eval_batches, train_batches
from mgc_ray.features import Augment
from mgc_ray.models import build_model
from mgc_ray.train import make_optimizer, pick_device, predict_logits, prepare_model, score, train_epoch

# Validation batches carry no gradients, so twice the training batch fits as well.
EVAL_BATCH_FACTOR = 2


def _prefixed(prefix: str, metrics: dict) -> dict:
    return {f"{prefix}/{k}": v for k, v in metrics.items()}


def _best(history: list[dict]) -> dict:
    best = min(history, key=lambda row: row["val/loss"])
    return {"best/val_loss": best["val/loss"], "best/epoch": best["epoch"],
            "best/val_paper_f1": best["val/paper_f1"], "best/val_macro_f1": best["val/macro_f1"],
            "best/val_top1_accuracy": best["val/top1_accuracy"]}


def train_trial(config: dict, *, datasets: CacheDatasets, manifest: dict) -> None:
    """Run one trial: train up to `max_epochs`, reporting and checkpointing every epoch."""
    from ray import tune

    cfg = TrainConfig.from_dict(config)
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
    augment = Augment().to(device) if cfg.augment else None
    generator = torch.Generator(device=device)
    for epoch in range(start, cfg.max_epochs):
        generator.manual_seed(cfg.seed * 100_003 + epoch)  # the same draws if this epoch is re-run
        batches = train_batches(datasets.train, crop_len=mcfg.crop_samples, batch_size=cfg.batch_size,
                                seed=cfg.seed, epoch=epoch, device=str(device))
        tr = train_epoch(model, batches, optimizer, augment=augment, generator=generator, device=device)
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
            tune.report({**row, **_best(history)}, checkpoint=tune.Checkpoint.from_directory(d))

