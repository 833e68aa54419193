"""The models' front ends: raw (B, N) waveform at the cache rate -> network input.

Every model owns its front end, so training, evaluation and prediction hand
all five architectures the same raw waveform batch and the features are
computed on the model's device (sota-music-tagging-models' habit).
"""
from __future__ import annotations

import torch
from torch import nn

from mgc_ray.config import WAVE_1D_SAMPLE_RATE, ModelConfig
from mgc_ray.features import LogMel, PerInputZScore, Resample, WaveZScore, n_frames, resampled_length


class FrontEnd(nn.Module):
    """Base class: `output_shape(n_samples)` gives the network input shape without the batch axis."""

    def output_shape(self, n_samples: int) -> tuple[int, ...]:
        raise NotImplementedError


class SpectrogramFrontEnd(FrontEnd):
    """The paper's 2D input: log-mel in dB relative to the maximum, z-scored per input.

    Args:
        config: uses sample_rate, window (hop = window // 2) and n_mels.

    Shapes: (B, N) -> (B, 1, n_mels, 1 + N // hop); 220,500 samples give
    (B, 1, 513, 128) at window 3472 and (B, 1, 224, 224) at window 1976.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.logmel = LogMel(config.sample_rate, config.window, config.n_mels)
        self.norm = PerInputZScore()

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = self.logmel(wave)  # (B, n_mels, T) dB
        x = self.norm(x)  # (B, n_mels, T), each example mean 0 std 1
        return x.unsqueeze(1)  # (B, 1, n_mels, T)

    def output_shape(self, n_samples: int) -> tuple[int, ...]:
        return (1, self.logmel.n_mels, n_frames(n_samples, self.logmel.window))


class WaveformFrontEnd(FrontEnd):
    """The paper's 1D input: 16 kHz waveform, z-scored with the training set's statistics.

    Args:
        config: uses sample_rate (resampled from) and wave_mean / wave_std
            (statistics of the cache-rate training waveforms; band-limiting to
            8 kHz changes them by well under 1 % for music, so they are applied
            after resampling, as the paper normalises the 16 kHz waveform).
        target_rate: the 1D branch's rate (the paper's 16,000 Hz).

    Shapes: (B, N) -> (B, 1, N * 16000 / sample_rate); 220,500 samples at
    22,050 Hz give (B, 1, 160000).
    """

    def __init__(self, config: ModelConfig, target_rate: int = WAVE_1D_SAMPLE_RATE) -> None:
        super().__init__()
        self.resample = Resample(config.sample_rate, target_rate)
        self.norm = WaveZScore(config.wave_mean, config.wave_std)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = self.resample(wave)  # (B, N16)
        x = self.norm(x)  # (B, N16)
        return x.unsqueeze(1)  # (B, 1, N16)

    def output_shape(self, n_samples: int) -> tuple[int, ...]:
        return (1, resampled_length(n_samples, self.resample.orig_freq, self.resample.new_freq))


def input_shapes(model: nn.Module, n_samples: int) -> list[tuple[int, ...]]:
    """The network input shape(s) (no batch axis) of every front end in `model`, in module order.

    Args:
        model: any registered model (fusion has two front ends: 1D then 2D).
        n_samples: waveform length at the model's sample rate.

    Returns:
        one shape per front end, e.g. [(1, 513, 128)] or [(1, 160000), (1, 224, 224)].
    """
    return [m.output_shape(n_samples) for m in model.modules() if isinstance(m, FrontEnd)]
