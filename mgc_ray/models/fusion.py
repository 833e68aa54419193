"""FusionNet: late fusion of 1D Baseline A and DenseNet features.

E. Fella and M. Pedrazzi, "Music Genre Classification: enhancing the baseline
architectures with DenseNet" (late fusion after K. Gadzicki, R. Khamsehashari
and C. Zetsche, "Early vs late fusion in multimodal convolutional neural
networks", FUSION 2020).
"""

from __future__ import annotations

import dataclasses

import torch

from mgc_ray.config import ModelConfig
from mgc_ray.models.baseline_a import BaselineA
from mgc_ray.models.densenet import DenseNet
from mgc_ray.models.layers import PaperClassifierNet, check_wave
from mgc_ray.models.registry import register_model


class FusionNet(PaperClassifierNet):
    """Late fusion (Fella and Pedrazzi): [1D Baseline A features, DenseNet features] -> new classifier.

    Each branch keeps its own front end (16-kHz z-scored waveform; log-mel
    z-scored per input with config.window / n_mels) and loses its classifier
    (the paper: "the classifier block has been removed for the two separate
    architectures").

    Choices the paper leaves open, and why:
    - the paper concatenates time-aligned feature maps; here the branches'
      pooled features are concatenated (128 from Baseline A's max+mean pooling,
      1024 from DenseNet's average pooling), which needs no alignment of the
      two time axes and works for any crop length;
    - the new classifier is Baseline A's (FC 1024 -> 512 -> 128 -> n_classes,
      ReLU), the paper's classifier block; no dropout.
    - `pretrained_path` initialises the DenseNet branch.

    Args:
        config: the ModelConfig shared by both branches.
        drop_rate: dropout in the new classifier.
    """

    def __init__(self, config: ModelConfig, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.config = config
        self.wave_net = BaselineA(dataclasses.replace(config, arch="baseline_a_1d", pretrained_path=None), dim=1)
        self.spec_net = DenseNet(dataclasses.replace(config, arch="densenet"))
        self.wave_net.reset_classifier(0)
        self.spec_net.reset_classifier(0)
        self.num_features = self.wave_net.num_features + self.spec_net.num_features  # 128 + 1024
        self.drop_rate = drop_rate
        self.reset_classifier(config.n_classes)

    def forward_features(self, wave: torch.Tensor, masks=None) -> torch.Tensor:
        """Args: wave (B, N) at config.sample_rate; masks: training only (`models.frontend.Masks`), the same
        time span hidden from both branches, the mel band from the 2D one. Returns: (B, num_features)."""
        check_wave(wave)
        f1 = self.wave_net.forward_features(wave, masks)  # (B, 128)
        f2 = self.spec_net.forward_features(wave, masks)  # (B, 1024)
        return torch.cat([f1, f2], dim=1)  # (B, 1152)


@register_model
def fusion(config: ModelConfig) -> FusionNet:
    """FusionNet: 1D Baseline A + DenseNet, late fusion (paper: window 1976, 224 x 224, batch 8)."""
    return FusionNet(config)
