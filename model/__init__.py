"""Flax NNX transformer models, their configuration and their exact counts."""

from scalelab.model.config import ConfigError, ModelConfig
from scalelab.model.counting import ParamCounts, count_params, flops_per_token
from scalelab.model.transformer import MODEL_FAMILIES, build_model

__all__ = [
    "MODEL_FAMILIES",
    "ConfigError",
    "ModelConfig",
    "ParamCounts",
    "build_model",
    "count_params",
    "flops_per_token",
]
