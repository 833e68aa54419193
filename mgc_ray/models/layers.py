"""Small building blocks shared by the models."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class MaxMeanPool(nn.Module):
    """Global max and mean pooling over time, concatenated (Zhang et al. 2016).

    Args: none. Input (B, C, T); output (B, 2 C): [max over T, mean over T].
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.amax(dim=-1), x.mean(dim=-1)], dim=1)  # (B, 2 C)


class MLPHead(nn.Module):
    """Fully connected classifier: Linear + ReLU (+ dropout) per hidden layer, then a linear output.

    Args:
        in_features: size of the features.
        hidden: hidden layer sizes; the paper's (1024, 512, 128).
        n_classes: output logits.
        drop_rate: dropout before each linear layer after the first (0: none, the paper mentions none).
    """

    def __init__(self, in_features: int, hidden: Sequence[int], n_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            if drop_rate > 0 and layers:
                layers.append(nn.Dropout(drop_rate))
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        if drop_rate > 0 and layers:
            layers.append(nn.Dropout(drop_rate))
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)
        self.in_features, self.out_features = in_features, n_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, n_classes)


HIDDEN = (1024, 512, 128)  # the paper's classifier: FC 1024 -> 512 -> 128 -> n_classes


class HeadNet(nn.Module):
    """Base of every registered net: `forward(wave) = forward_head(forward_features(wave))`.

    A subclass sets `num_features`, defines `forward_features` (wave (B, N) -> (B, num_features),
    handing `masks` to its front end(s)) and `reset_classifier(n_classes)` (setting `head`),
    which its `__init__` calls at the end.
    """

    num_features: int
    head: nn.Module

    def forward_features(self, wave: torch.Tensor, masks=None) -> torch.Tensor:
        raise NotImplementedError

    def reset_classifier(self, n_classes: int) -> None:
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Args: features (B, num_features). Returns: logits (B, n_classes)."""
        return self.head(features)

    def forward(self, wave: torch.Tensor, masks=None) -> torch.Tensor:
        """Args: wave (B, N) float in [-1, 1]; masks: training only (`models.frontend.Masks`).
        Returns: logits (B, n_classes)."""
        return self.forward_head(self.forward_features(wave, masks))


class PaperClassifierNet(HeadNet):
    """Base of the nets ending in the paper's classifier block (Baseline A, Baseline B, fusion).

    A subclass sets `num_features` and `drop_rate`, defines `forward_features` and calls
    `reset_classifier(n_classes)` at the end of its `__init__`.
    """

    drop_rate: float

    def reset_classifier(self, n_classes: int) -> None:
        """Replace the classifier block (0: none, `forward` returns the pooled features)."""
        self.head = (
            MLPHead(self.num_features, HIDDEN, n_classes, self.drop_rate)  # 1024 -> 512 -> 128 -> n
            if n_classes > 0
            else nn.Identity()
        )


class ConvSame1d(nn.Conv1d):
    """Conv1d (stride 1) with "same" zero padding in time, also for even kernels.

    Pads (k - 1) // 2 frames before and k // 2 after (PyTorch's own split for
    padding="same"), without the warning and input copy that padding="same"
    makes for even kernels. Args as nn.Conv1d's (in_channels, out_channels, kernel_size, bias).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, bias=bias)
        self.time_pad = ((kernel_size - 1) // 2, kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.time_pad))  # (B, C_in, T) -> (B, C_out, T)


def pad_to_match(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad (B, C, T) maps at the end of the channel and time axes to a common shape."""
    c, t = max(a.shape[1], b.shape[1]), max(a.shape[2], b.shape[2])

    def pad(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == c and x.shape[2] == t:
            return x
        return F.pad(x, (0, t - x.shape[2], 0, c - x.shape[1]))  # (B, c, t)

    return pad(a), pad(b)


def check_wave(wave: torch.Tensor) -> None:
    """Models take (B, N) float waveforms; say so clearly otherwise."""
    if wave.dim() != 2 or not wave.is_floating_point():
        raise ValueError(f"models take (B, N) float waveforms in [-1, 1], got {tuple(wave.shape)} {wave.dtype}")
