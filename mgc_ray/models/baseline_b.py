"""Baseline B: three batch-normalised convs with a shortcut from conv1 to conv3.

After W. Zhang, W. Lei, X. Xu and X. Xing, "Improved Music Genre
Classification with Convolutional Neural Networks", Interspeech 2016 (its
shortcut variant), with the residual connection of K. He et al., "Deep
Residual Learning for Image Recognition", CVPR 2016, as adapted by E. Fella and
M. Pedrazzi, "Music Genre Classification: enhancing the baseline architectures
with DenseNet".
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from mgc_ray.config import ModelConfig
from mgc_ray.models.frontend import SpectrogramFrontEnd
from mgc_ray.models.layers import (
    ConvSame1d,
    MaxMeanPool,
    PaperClassifierNet,
    check_wave,
    pad_to_match,
)
from mgc_ray.models.registry import register_model


def _conv_bn(c_in: int, c_out: int, kernel: int) -> nn.Sequential:
    # bias=False: batch norm's shift makes a conv bias redundant
    return nn.Sequential(ConvSame1d(c_in, c_out, kernel, bias=False), nn.BatchNorm1d(c_out))


class BaselineB(PaperClassifierNet):
    """Baseline B (Zhang et al. 2016; Fella and Pedrazzi) on the log-mel spectrogram.

    conv1 (n_mels x 4) -> BN -> ReLU -> conv2 (1 x 4) -> BN -> ReLU -> conv3
    (1 x 4) -> BN; + conv1's output (zero-padded to match); ReLU -> [global max,
    global mean] -> FC 1024 -> 512 -> 128 -> n_classes.

    Choices the paper leaves open, and why:
    - conv1's kernel spans all mel bands (513 x 4 at paper settings, n_mels x 4
      in general); written as Conv1d with n_mels input channels, which is the
      same operation as that 2D kernel.
    - "zero padding so the feature maps are of the same dimension": conv2 and
      conv3 use "same" zero padding in time, so conv3's map has conv1's length;
      if channel counts differ, the narrower map is zero-padded in channels
      (ResNet's parameter-free shortcut). At the default 64/64/64 nothing is padded.
    - ReLU after the sum (ResNet's order); no pooling inside the residual
      block, so the shortcut adds aligned frames.
    - 64 maps per conv, classifier and pooling as Baseline A; no dropout.

    Args:
        config: the ModelConfig (n_classes, sample_rate, window, n_mels).
        channels: feature maps of conv1, conv2, conv3.
        kernel: time kernel of every conv, in frames.
        drop_rate: dropout in the classifier.
    """

    def __init__(
        self, config: ModelConfig, channels: Sequence[int] = (64, 64, 64), kernel: int = 4, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        self.config = config
        c1, c2, c3 = channels
        self.frontend = SpectrogramFrontEnd(config)
        self.conv1 = _conv_bn(config.n_mels, c1, kernel)  # == Conv2d(1, c1, (n_mels, kernel)) + BN
        self.conv2 = _conv_bn(c1, c2, kernel)
        self.conv3 = _conv_bn(c2, c3, kernel)
        self.act = nn.ReLU(inplace=True)
        self.pool = MaxMeanPool()
        self.num_features = 2 * max(c1, c3)  # max and mean of the summed maps
        self.drop_rate = drop_rate
        self.reset_classifier(config.n_classes)

    def forward_features(self, wave: torch.Tensor, masks=None) -> torch.Tensor:
        """Args: wave (B, N) at config.sample_rate; masks: training only (`models.frontend.Masks`).
        Returns: (B, num_features) pooled features."""
        check_wave(wave)
        x = self.frontend(wave, masks).squeeze(1)  # (B, n_mels, T): mel bands as channels
        short = self.act(self.conv1(x))  # (B, c1, T)
        x = self.act(self.conv2(short))  # (B, c2, T)
        x = self.conv3(x)  # (B, c3, T)
        x, short = pad_to_match(x, short)  # (B, max(c1, c3), T) each
        x = self.act(x + short)  # (B, max(c1, c3), T)
        return self.pool(x)  # (B, 2 max(c1, c3))


@register_model
def baseline_b(config: ModelConfig) -> BaselineB:
    """Baseline B on the log-mel spectrogram (paper: 513 x 128, window 3472, batch 32)."""
    return BaselineB(config)
