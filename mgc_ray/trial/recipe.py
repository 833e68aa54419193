"""Training-recipe options a search can turn on: SpecAugment-style masks, mixup, label smoothing.

All three are off at the paper's settings (`config.RECIPE_OFF`), and an option that is off
draws nothing, so the paper trial trains exactly as without them. Like `augment.Augment`,
every random choice is drawn on the host from the trial's numpy Generator and reaches the
device as small tensors: nothing is read back from the device in a training step.

- `spec_mask` (SpecAugment, D. S. Park et al., Interspeech 2019, one mask per axis): per
  training example one time mask and, on a spectrogram, one frequency mask, each of a width
  drawn uniformly in [0, spec_mask x the axis's length] at a uniformly drawn position inside
  the axis. The front ends apply them (`Masks`, passed as `model(wave, masks=...)`): after the
  log-mel and its z-score a masked value is 0, the example's mean; a waveform (1D) front end
  zeroes the time span of its z-scored 16-kHz input. The masks are drawn as fractions of the
  axis, so fusion's two branches hide the same stretch of time (its 2D branch also a band).
- `mixup` (H. Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018, their
  reference code's batch form): one lam ~ Beta(alpha, alpha) per batch, each waveform mixed
  with a partner from a random permutation of the batch, lam x own + (1 - lam) x partner, and
  the loss the same mix of the two cross-entropies (= cross-entropy on the mixed one-hot targets).
  Waveforms are mixed (an audio mixture), so every front end, fusion included, sees one input.
- `label_smoothing`: torch's `cross_entropy(..., label_smoothing=eps)` (C. Szegedy et al.,
  "Rethinking the Inception Architecture", CVPR 2016).

Validation, test and prediction never see any of this: only `train.train_epoch` draws.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from mgc_ray.config import RECIPE_OFF, TrainConfig, check_recipe
from mgc_ray.models.frontend import Masks
from mgc_ray.trial.device import to_device


class Draw(NamedTuple):
    """What one training step drew: masks (None: none), mixup's partners and weight."""

    masks: Masks | None
    partner: torch.Tensor | None  # (B,) index of each example's mixup partner; None: no mixup
    lam: float  # weight of each example itself (1.0 without mixup)

    def mix(self, wave: torch.Tensor) -> torch.Tensor:
        """Args: wave (B, N). Returns: (B, N) lam x wave + (1 - lam) x partner's (wave itself without mixup)."""
        if self.partner is None:
            return wave
        return self.lam * wave + (1.0 - self.lam) * wave.index_select(0, self.partner)  # (B, N)


@dataclass(frozen=True)
class Recipe:
    """A trial's recipe options (`TrainConfig`'s, bounds in `config.check_recipe`); all 0: off.

    Args:
        spec_mask: mask widths drawn up to this fraction of each axis (< 0.5).
        mixup: Beta(alpha, alpha)'s alpha (>= 0).
        label_smoothing: torch's label smoothing in [0, 1).
    """

    spec_mask: float = RECIPE_OFF["spec_mask"]
    mixup: float = RECIPE_OFF["mixup"]
    label_smoothing: float = RECIPE_OFF["label_smoothing"]

    def __post_init__(self) -> None:
        check_recipe(self.spec_mask, self.mixup, self.label_smoothing)

    @classmethod
    def of(cls, cfg: TrainConfig) -> "Recipe":
        """The recipe of a trial's config."""
        return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)})

    def draw(self, batch: int, device: torch.device, generator: np.random.Generator) -> Draw:
        """Draw one training batch's masks and mixup on the host; an option that is off draws nothing.

        Args:
            batch: examples in the batch.
            device: where the model runs.
            generator: the epoch's numpy Generator (the one `augment.Augment` draws from).
        """
        masks = partner = None
        lam = 1.0
        if self.spec_mask > 0:
            u = generator.random((4, batch))  # (4, B): time width, time position, freq width, freq position
            width = self.spec_mask * u[[0, 2]]  # (2, B) fractions of the axis, uniform in [0, spec_mask]
            start = u[[1, 3]] * (1.0 - width)  # (2, B): the mask stays inside the axis
            t = to_device(np.stack([start[0], width[0], start[1], width[1]]).astype(np.float32), device)  # (4, B)
            masks = Masks(*t.unbind(0))
        if self.mixup > 0:
            lam = float(generator.beta(self.mixup, self.mixup))
            partner = to_device(generator.permutation(batch), device)  # (B,) int64
        return Draw(masks, partner, lam)

    def loss(self, logits: torch.Tensor, label: torch.Tensor, drawn: Draw) -> torch.Tensor:
        """Cross-entropy with this recipe's smoothing; with mixup, lam x CE(own) + (1 - lam) x CE(partner's).

        Args:
            logits: (B, n_classes) float; label: (B,) class indices.
        """
        loss = F.cross_entropy(logits, label, label_smoothing=self.label_smoothing)
        if drawn.partner is None:
            return loss
        other = F.cross_entropy(logits, label.index_select(0, drawn.partner), label_smoothing=self.label_smoothing)
        return drawn.lam * loss + (1.0 - drawn.lam) * other
