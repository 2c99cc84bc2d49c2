"""Flax NNX transformer models, their configuration and their exact counts.

The package itself imports only the configuration, so that a command that reads configs (the CLI's
parser, a sweep plan's status) does not import JAX; the models are in `transformer`, the counts in
`counting`.
"""

from scalelab.model.config import ConfigError, ModelConfig

__all__ = ["ConfigError", "ModelConfig"]
