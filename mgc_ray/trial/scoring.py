"""Score a trained model on a split: crop level (one centred crop, the paper's way)
and track level (crops covering the whole clip, logits averaged).

`score_checkpoint` loads a trial's checkpoint and scores it: in the driver on a machine without
GPUs, or in a Ray task holding a trial's GPU share (the search driver starts it there, so a
cluster whose head has no GPU still scores on a GPU)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch

from mgc_ray.data.pipeline import CENTRE, eval_batches
from mgc_ray.metrics import confusion_matrix, intervals
from mgc_ray.trial.loop import (
    pick_device,
    predict_logits,
    prepare_model,
    score,
    track_level,
)

EVAL_BATCH = 32  # inference only: memory is not the limit at this size on CPU or GPU


@dataclass(frozen=True)
class Scores:
    """A model's figures on one split.

    Attributes:
        crop: every metric of `mgc_ray.metrics` (and `loss`) at crop level: one centred crop
            per track, the paper's way.
        track: the same at track level: crops covering the whole clip, logits averaged.
        confusion, track_confusion: (k, k) counts, rows true, columns predicted.
        track_ids: the split's track ids, sorted (which tracks the figures are about).
        crop_ci, track_ci: {metric: (low, high)}, the 95 % bootstrap interval over the split's
            tracks of each of `metrics.METRIC_NAMES` (`metrics.intervals`).
        labels, crop_pred, track_pred: (T,) true and predicted classes per track, in `track_ids`'
            order (what a paired comparison of two models on the same tracks resamples).
        crop_prob, track_prob: (T, k) softmax probabilities per track, in `track_ids`' order: of the
            centred crop, and of the crops' averaged logits (what an ensemble averages).
    """

    crop: Mapping[str, float]
    track: Mapping[str, float]
    confusion: np.ndarray
    track_confusion: np.ndarray
    track_ids: tuple[int, ...]
    crop_ci: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    track_ci: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    labels: np.ndarray | None = None
    crop_pred: np.ndarray | None = None
    track_pred: np.ndarray | None = None
    crop_prob: np.ndarray | None = None
    track_prob: np.ndarray | None = None


def score_split(
    model: torch.nn.Module,
    ds,
    label_names: list[str],
    *,
    crop_len: int,
    batch_size: int = EVAL_BATCH,
    device: torch.device | None = None,
) -> Scores:
    """Every metric of `mgc_ray.metrics` at crop and track level.

    Args:
        model: a model from the registry (takes waveforms at the cache rate).
        ds: a Ray Dataset of the split (track_id, label, samples).
        crop_len: the model's crop length in samples at the cache rate.
    """
    device = device or pick_device()
    model = prepare_model(model, device)
    k = len(label_names)
    batches = eval_batches(ds, crop_len=crop_len, batch_size=batch_size, mode="centre+cover", device=str(device))
    logits, labels, tagged = predict_logits(model, _tagged(batches), device=device)
    ids, centre = tagged // 2, tagged % 2 == CENTRE  # both levels from one read of the split
    crop_logits, crop_labels, crop_ids = logits[centre], labels[centre], ids[centre]
    crop = score(crop_logits, crop_labels, label_names)
    confusion = confusion_matrix(crop_labels, crop_logits.argmax(1), k)
    crop_row = {int(t): i for i, t in enumerate(crop_ids.tolist())}  # one centred crop per track
    crop_prob_all = _softmax(crop_logits)  # (T, k)
    logits, labels, tracks = track_level(logits[~centre], labels[~centre], ids[~centre])
    crop_prob = crop_prob_all[[crop_row[int(t)] for t in tracks]]  # (T, k), tracks' order
    crop_pred = crop_prob.argmax(1).astype(np.int64)  # (T,)
    track_pred = logits.argmax(1)  # (T,)
    return Scores(
        crop=crop,
        track=score(logits, labels, label_names),
        confusion=confusion,
        track_confusion=confusion_matrix(labels, track_pred, k),
        track_ids=tuple(int(t) for t in tracks),
        crop_ci=intervals(labels, crop_pred, k),
        track_ci=intervals(labels, track_pred, k),
        labels=np.asarray(labels, dtype=np.int64),
        crop_pred=crop_pred,
        track_pred=np.asarray(track_pred, dtype=np.int64),
        crop_prob=crop_prob,
        track_prob=_softmax(logits),
    )


def _tagged(batches):
    """`eval_batches(mode="centre+cover")`'s batches with each crop's kind folded into its id
    (track_id * 2 + kind), the form `predict_logits` collects."""
    for wave, label, track_id, kind in batches:
        yield wave, label, track_id * 2 + kind


def _softmax(logits: np.ndarray) -> np.ndarray:
    """(N, k) probabilities of (N, k) logits, float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def from_probabilities(
    crop_prob: np.ndarray, track_prob: np.ndarray, labels: np.ndarray, track_ids, label_names: list[str]
) -> Scores:
    """The Scores of a model known only by its per-track probabilities ((T, k) each, in `track_ids`'
    order): an ensemble, whose probabilities are its members' mean. Its loss is the cross-entropy of
    those probabilities (log p as logits: softmax(log p) = p)."""
    k = len(label_names)
    labels = np.asarray(labels, dtype=np.int64)
    levels = {}
    for name, prob in (("crop", crop_prob), ("track", track_prob)):
        logits = np.log(np.clip(prob, 1e-12, None)).astype(np.float32)
        levels[name] = (score(logits, labels, label_names), prob.argmax(1).astype(np.int64))
    (crop, crop_pred), (track, track_pred) = levels["crop"], levels["track"]
    return Scores(
        crop=crop,
        track=track,
        confusion=confusion_matrix(labels, crop_pred, k),
        track_confusion=confusion_matrix(labels, track_pred, k),
        track_ids=tuple(int(t) for t in track_ids),
        crop_ci=intervals(labels, crop_pred, k),
        track_ci=intervals(labels, track_pred, k),
        labels=labels,
        crop_pred=crop_pred,
        track_pred=track_pred,
        crop_prob=np.asarray(crop_prob),
        track_prob=np.asarray(track_prob),
    )


def ensemble_scores(members: list[Scores], label_names: list[str]) -> Scores:
    """The Scores of the mean of `members`' probabilities, crop and track level (each member scored
    on the same split by `score_split`).

    Raises:
        ValueError: the members were scored on different tracks, or without their probabilities.
    """
    if not members:
        raise ValueError("an ensemble needs at least one member")
    first = members[0]
    for m in members:
        if m.crop_prob is None or m.track_prob is None:
            raise ValueError("a member's Scores carry no probabilities (scored before they were kept)")
        if m.track_ids != first.track_ids:
            raise ValueError("the ensemble's members were scored on different tracks")
    crop = np.mean([m.crop_prob for m in members], axis=0)  # (T, k)
    track = np.mean([m.track_prob for m in members], axis=0)  # (T, k)
    return from_probabilities(crop, track, first.labels, first.track_ids, label_names)


def score_checkpoint(checkpoint, ds, share: float = 0.0) -> tuple[Scores, object]:
    """(Scores, the checkpoint's payload) of a Tune checkpoint on the split `ds`.

    Args:
        checkpoint: a `ray.tune.Checkpoint` (on storage every node reads).
        ds: a Ray Dataset of the split.
        share: the GPUs the calling Ray task holds (> 0: it scores on exactly that GPU, capped at
            its share, as a trial trains); 0: `pick_device()`, as in the driver.
    """
    from mgc_ray.models import checkpoint as ckpt

    device = None
    if share > 0:
        from mgc_ray.trial.device import trial_device

        device = torch.device(trial_device(share).device)
    with checkpoint.as_directory() as d:
        model, payload = ckpt.load_model(d)
        scores = score_split(
            model, ds, list(payload.label_names), crop_len=payload.model_config.crop_samples, device=device
        )
    return scores, payload
