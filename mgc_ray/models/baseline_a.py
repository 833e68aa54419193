"""Baseline A, 1D and 2D: one class, the input dimension is an argument.

After W. Zhang, W. Lei, X. Xu and X. Xing, "Improved Music Genre
Classification with Convolutional Neural Networks", Interspeech 2016, as
adapted by E. Fella and M. Pedrazzi, "Music Genre Classification: enhancing the
baseline architectures with DenseNet" (the paper this project reproduces).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from mgc_ray.config import ModelConfig
from mgc_ray.models.frontend import SpectrogramFrontEnd, WaveformFrontEnd
from mgc_ray.models.layers import (
    ConvSame1d,
    MaxMeanPool,
    PaperClassifierNet,
    check_wave,
)
from mgc_ray.models.registry import register_model


class BaselineA(PaperClassifierNet):
    """Baseline A (Zhang et al. 2016; Fella and Pedrazzi): 3 conv blocks, max+mean pooling, MLP.

    conv1 -> ReLU -> max-pool -> conv2 -> ReLU -> max-pool -> conv3 (64 maps)
    -> ReLU -> [global max, global mean] -> FC 1024 -> 512 -> 128 -> n_classes.

    Choices the paper leaves open, and why:
    - 64 feature maps in every conv (`channels`): the paper says the last conv
      "receiving 64 feature maps" has 64; 64 throughout satisfies both readings.
    - no batch norm: the paper gives batch norm to Baseline B only.
    - time kernels of 4 with "same" zero padding and max-pools with
      ceil_mode: any crop length (down to one frame) works.
    - 2D (`dim=2`): Baseline B's kernels, n_mels x 4 for conv1 (spanning all
      mel bands, 513 x 4 at paper settings) and 1 x 4 after it. A 2D kernel
      spanning the whole mel axis is exactly a 1D conv with n_mels input
      channels, so it is written as Conv1d over time (same weights count,
      faster); pools of 2 frames.
    - 1D (`dim=1`): conv1 is a learned filterbank of 25-ms kernels (400
      samples at 16 kHz) with a 10-ms stride (160), centred like the STFT:
      160,000 samples -> 1001 frames, so a CPU forward of a batch of 16 takes
      ~25 ms (results/model_table.md); pools of 4 so conv3 sees ~0.8 s
      (76 frames), nearer the 2D net's ~2 s (25 frames of 79 ms).
    - no dropout (`drop_rate=0`): the paper mentions none.

    Args:
        config: the ModelConfig (n_classes, sample_rate, window, n_mels, wave statistics).
        dim: 1 (raw 16-kHz waveform) or 2 (log-mel spectrogram).
        channels: feature maps of conv1, conv2, conv3.
        kernel: time kernel of conv2, conv3 (and of conv1 in 2D), in frames.
        pool: max-pool size after conv1 and conv2 (None: 2 in 2D, 4 in 1D).
        first_kernel, first_stride: conv1's kernel and stride in samples (1D only).
        drop_rate: dropout in the classifier.
    """

    def __init__(
        self,
        config: ModelConfig,
        dim: int,
        channels: Sequence[int] = (64, 64, 64),
        kernel: int = 4,
        pool: int | None = None,
        first_kernel: int = 400,
        first_stride: int = 160,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if dim not in (1, 2):
            raise ValueError(f"dim must be 1 or 2, got {dim}")
        self.config, self.dim = config, dim
        c1, c2, c3 = channels
        pool = pool if pool is not None else (2 if dim == 2 else 4)
        if dim == 2:
            self.frontend = SpectrogramFrontEnd(config)
            conv1 = ConvSame1d(config.n_mels, c1, kernel)  # == Conv2d(1, c1, (n_mels, kernel))
        else:
            self.frontend = WaveformFrontEnd(config)
            conv1 = nn.Conv1d(1, c1, first_kernel, stride=first_stride, padding=first_kernel // 2)
        self.convs = nn.Sequential(
            conv1,
            nn.ReLU(inplace=True),
            nn.MaxPool1d(pool, ceil_mode=True),
            ConvSame1d(c1, c2, kernel),
            nn.ReLU(inplace=True),
            nn.MaxPool1d(pool, ceil_mode=True),
            ConvSame1d(c2, c3, kernel),
            nn.ReLU(inplace=True),
        )
        self.pool = MaxMeanPool()
        self.num_features = 2 * c3  # max and mean of the last conv's maps
        self.drop_rate = drop_rate
        self.reset_classifier(config.n_classes)

    def forward_features(self, wave: torch.Tensor, masks=None) -> torch.Tensor:
        """Args: wave (B, N) at config.sample_rate; masks: training only (`models.frontend.Masks`).
        Returns: (B, num_features) pooled features."""
        check_wave(wave)
        x = self.frontend(wave, masks)  # 2D: (B, 1, n_mels, T); 1D: (B, 1, N16)
        if self.dim == 2:
            x = x.squeeze(1)  # (B, n_mels, T): mel bands as channels
        x = self.convs(x)  # (B, c3, T')
        return self.pool(x)  # (B, 2 c3)


@register_model
def baseline_a_1d(config: ModelConfig) -> BaselineA:
    """Baseline A on the raw 16-kHz waveform (paper: batch 16)."""
    return BaselineA(config, dim=1)


@register_model
def baseline_a_2d(config: ModelConfig) -> BaselineA:
    """Baseline A on the log-mel spectrogram (paper: 513 x 128, window 3472, batch 32)."""
    return BaselineA(config, dim=2)
