"""Model registry and the five architectures of the paper.

    >>> from mgc_ray.models import build_model, list_models
    >>> list_models()
    ['baseline_a_1d', 'baseline_a_2d', 'baseline_b', 'densenet', 'fusion']

Every model takes the raw (B, N) float waveform at `config.sample_rate`, owns
its front end, and has `forward_features(wave) -> (B, D)`,
`forward_head(features) -> (B, n_classes)` logits, `forward = head(features)`,
`reset_classifier(n)` and `config` (its ModelConfig).
"""

from mgc_ray.models.frontend import FrontEnd, input_shapes
from mgc_ray.models.registry import build_model, list_models, register_model

# Importing the architecture modules registers them (class and function definitions only).
from mgc_ray.models import baseline_a, baseline_b, densenet, fusion  # noqa: E402,F401  isort: skip

__all__ = ["build_model", "list_models", "register_model", "FrontEnd", "input_shapes"]
