"""DenseNet-121 on the log-mel spectrogram, one input channel.

G. Huang, Z. Liu, L. van der Maaten and K. Q. Weinberger, "Densely Connected
Convolutional Networks", CVPR 2017 (torchvision's `densenet121`), as used by
E. Fella and M. Pedrazzi, "Music Genre Classification: enhancing the baseline
architectures with DenseNet".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mgc_ray.config import ModelConfig
from mgc_ray.errors import UserError
from mgc_ray.models.frontend import SpectrogramFrontEnd
from mgc_ray.models.layers import HeadNet, check_wave
from mgc_ray.models.registry import register_model

MIN_SIDE = 32  # DenseNet-121 halves the map 5 times (conv0, pool0, 3 transitions): smaller inputs are padded
# torchvision's published checkpoints name dense-layer modules 'norm.1' where the model has 'norm1'
_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


class DenseNet(HeadNet):
    """torchvision DenseNet (Huang et al. 2017) with a 1-channel stem, on the z-scored log-mel.

    Choices the paper leaves open, and why:
    - the stem is torchvision's (7 x 7 conv, stride 2, 64 maps, then 3 x 3
      max-pool) with 1 input channel instead of 3, Kaiming-initialised like the rest;
    - features are torchvision's: ReLU after the last norm, global average
      pooling -> 1024 values; the classifier is one linear layer, as torchvision's;
    - maps smaller than 32 x 32 (small test sizes) are zero-padded at the
      high-frequency / late-time ends up to 32 (zero is the z-scored mean), so
      the five halvings never reach an empty map; paper sizes are untouched;
    - `pretrained_path`: a LOCAL torchvision ImageNet state dict (e.g.
      densenet121-a639ec97.pth); the first conv's RGB weights are summed (the
      mono input stands for R = G = B), the 1000-way classifier is skipped.
      Nothing is ever downloaded.

    Args:
        config: the ModelConfig (n_classes, sample_rate, window, n_mels, pretrained_path).
        growth_rate, block_config, num_init_features, bn_size: torchvision's;
            the defaults are DenseNet-121 (blocks 6/12/24/16, growth 32).
        drop_rate: dropout after each dense layer (torchvision's; 0, the paper mentions none).
        memory_efficient: torchvision's checkpointing of the dense layers (slower, less memory).
    """

    def __init__(
        self,
        config: ModelConfig,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
        drop_rate: float = 0.0,
        memory_efficient: bool = False,
    ) -> None:
        # imported here, not with the module: `import torchvision` costs ~1 s of CPU (it imports
        # torch._dynamo), paid by every process that imports the registry (the search driver, each
        # trial, evaluate, predict) whether or not it builds a DenseNet
        import torchvision

        super().__init__()
        self.config = config
        self.frontend = SpectrogramFrontEnd(config)
        net = torchvision.models.DenseNet(
            growth_rate,
            tuple(block_config),
            num_init_features,
            bn_size,
            drop_rate,
            num_classes=max(config.n_classes, 1),
            memory_efficient=memory_efficient,
        )
        net.features.conv0 = nn.Conv2d(1, num_init_features, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(net.features.conv0.weight)  # torchvision's init for its convs
        self.features = net.features
        self.num_features = net.classifier.in_features  # 1024 for DenseNet-121
        self.head = net.classifier if config.n_classes > 0 else nn.Identity()
        if config.pretrained_path:
            self.load_imagenet(config.pretrained_path)

    def load_imagenet(self, path: str | Path) -> None:
        """Load a local torchvision DenseNet state dict into the feature extractor.

        Args:
            path: a file saved with `torch.save(model.state_dict())` (or torchvision's
                published checkpoint); 3-channel first conv weights are summed over RGB.

        Raises:
            UserError: the file is missing, unreadable or not a matching DenseNet state dict.
        """
        p = Path(path).expanduser()
        if not p.is_file():
            raise UserError(
                f"pretrained_path {p} does not exist: give a local torchvision densenet121 "
                "state dict (nothing is downloaded)"
            )
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UserError(f"cannot read pretrained weights {p}: {exc.__class__.__name__}") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise UserError(f"pretrained weights {p} are not a state dict")
        feats = {}
        for key, value in state.items():
            m = _OLD_KEY.match(key)
            key = m.group(1) + m.group(2) if m else key
            if key.startswith("features."):
                feats[key[len("features.") :]] = value
        w = feats.get("conv0.weight")
        if w is not None and w.dim() == 4 and w.shape[1] == 3:
            feats["conv0.weight"] = w.sum(dim=1, keepdim=True)  # (64, 1, 7, 7): RGB summed
        try:
            self.features.load_state_dict(feats, strict=True)
        except RuntimeError as exc:
            raise UserError(
                f"pretrained weights {p} do not fit this DenseNet "
                f"({str(exc).splitlines()[0]}): give a torchvision densenet121 state dict"
            ) from None

    def forward_features(self, wave: torch.Tensor, masks=None) -> torch.Tensor:
        """Args: wave (B, N) at config.sample_rate; masks: training only (`models.frontend.Masks`).
        Returns: (B, num_features) pooled features."""
        check_wave(wave)
        x = self.frontend(wave, masks)  # (B, 1, n_mels, T); (B, 1, 224, 224) at paper settings
        fh, ft = max(0, MIN_SIDE - x.shape[2]), max(0, MIN_SIDE - x.shape[3])
        if fh or ft:
            x = F.pad(x, (0, ft, 0, fh))  # (B, 1, >= 32, >= 32)
        x = self.features(x)  # (B, 1024, n_mels / 32, T / 32)
        x = F.relu(x)  # (B, 1024, h, w)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)  # (B, 1024)

    def reset_classifier(self, n_classes: int) -> None:
        """Replace the classifier (0: none, `forward` returns the pooled features)."""
        self.head = nn.Linear(self.num_features, n_classes) if n_classes > 0 else nn.Identity()
        if n_classes > 0:
            nn.init.zeros_(self.head.bias)  # torchvision's init for its classifier bias


@register_model
def densenet(config: ModelConfig) -> DenseNet:
    """DenseNet-121 on the log-mel spectrogram (paper: 224 x 224, window 1976, batch 32)."""
    return DenseNet(config)
