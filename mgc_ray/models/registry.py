"""The model registry: `@register_model` builders, one factory, the list of names.

A builder takes the ModelConfig it is given and returns a model whose `config` is
that ModelConfig, so `build_model(model.config)` rebuilds it (mgc_ray.models.checkpoint).
"""

from __future__ import annotations

from typing import Callable, TypeVar

from torch import nn

from mgc_ray.config import ModelConfig
from mgc_ray.errors import UserError

_MODELS: dict[str, Callable[..., nn.Module]] = {}
F = TypeVar("F", bound=Callable[..., nn.Module])


def register_model(fn: F) -> F:
    """Register a builder under its function name (timm's pattern).

    Args:
        fn: a function `name(config: ModelConfig) -> nn.Module`.

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


def build_model(config: ModelConfig | str, **fields) -> nn.Module:
    """Build a registered model.

    Args:
        config: the model's ModelConfig, or an arch name from `list_models()` (then
            `fields` are the other ModelConfig fields, defaults elsewhere).

    Returns:
        the model (train mode, on CPU), with `model.config` its ModelConfig.

    Raises:
        UserError: the arch is not registered (the message lists the choices).
    """
    cfg = config if isinstance(config, ModelConfig) else ModelConfig(arch=config, **fields)
    if cfg.arch not in _MODELS:
        raise UserError(f"unknown model {cfg.arch!r}: choose one of {', '.join(list_models())}")
    return _MODELS[cfg.arch](cfg)
