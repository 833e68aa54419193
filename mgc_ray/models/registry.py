"""The model registry: `@register_model` builders, one factory, the list of names.

Builders take ModelConfig's fields other than `arch` as keyword arguments
(`n_classes`, `sample_rate`, `window`, `n_mels`, `crop_seconds`, `wave_mean`,
`wave_std`, `pretrained_path`) and return a model whose `config` is the full
ModelConfig, so `build_model(cfg.arch, **fields_without_arch)` rebuilds it
(mgc_ray.checkpoint).
"""
from __future__ import annotations

from typing import Callable, TypeVar

from torch import nn

from mgc_ray.errors import UserError

_MODELS: dict[str, Callable[..., nn.Module]] = {}
F = TypeVar("F", bound=Callable[..., nn.Module])


def register_model(fn: F) -> F:
    """Register a builder under its function name (timm's pattern).

    Args:
        fn: a function `name(**model_config_fields) -> nn.Module`.

    Returns:
        `fn` unchanged.
    """
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is registered twice")
    _MODELS[name] = fn
    return fn


def list_models() -> list[str]:
    """Registered model names, sorted (the CLI's --arch choices)."""
    return sorted(_MODELS)


def is_model(name: str) -> bool:
    """Whether `name` is a registered model."""
    return name in _MODELS


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from `list_models()`.
        **kwargs: ModelConfig fields other than `arch`.

    Returns:
        the model (train mode, on CPU), with `model.config` its ModelConfig.

    Raises:
        UserError: `name` is not registered (the message lists the choices).
    """
    if name not in _MODELS:
        raise UserError(f"unknown model {name!r}: choose one of {', '.join(list_models())}")
    return _MODELS[name](**kwargs)
