"""Score a trained model on a split: crop level (one centred crop, the paper's way)
and track level (crops covering the whole clip, logits averaged)."""
from __future__ import annotations

import numpy as np
import torch

from mgc_ray.data import eval_batches
from mgc_ray.metrics import confusion_matrix
from mgc_ray.train import pick_device, predict_logits, prepare_model, score, track_level

EVAL_BATCH = 32  # inference only: memory is not the limit at this size on CPU or GPU


def score_split(model: torch.nn.Module, ds, label_names: list[str], *, crop_len: int,
                batch_size: int = EVAL_BATCH, device: torch.device | None = None) -> dict:
    """Every metric of `mgc_ray.metrics` at crop and track level.

    Args:
        model: a model from the registry (takes waveforms at the cache rate).
        ds: a Ray Dataset of the split (track_id, label, samples).
        crop_len: the model's crop length in samples at the cache rate.
    Returns:
        {"crop": metrics, "track": metrics, "confusion": (k, k) counts at crop level,
         "track_confusion": (k, k) at track level}.
    """
    device = device or pick_device()
    model = prepare_model(model, device)
    k = len(label_names)
    out = {}
    for level, mode in (("crop", "centre"), ("track", "cover")):
        logits, labels, ids = predict_logits(model, eval_batches(ds, crop_len=crop_len, batch_size=batch_size,
                                                                  mode=mode, device=str(device)), device=device)
        if level == "track":
            logits, labels = track_level(logits, labels, ids)
        out[level] = score(logits, labels, label_names)
        out["confusion" if level == "crop" else "track_confusion"] = confusion_matrix(
            labels, np.asarray(logits).argmax(1), k)
    return out
