"""The model as pure functions over nested dicts of parameter arrays.

jit, optax and orbax all work best with plain pytrees, so the trainer keeps parameters as a
pure dict and rebuilds the NNX module inside each traced function with `nnx.merge`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import nnx
from jax.sharding import PartitionSpec

from scalelab.model.config import ModelConfig
from scalelab.model.layers import shapes_only
from scalelab.model.stack import Batch, LayerRunner
from scalelab.model.transformer import build_model

Params = dict[str, Any]


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


@dataclasses.dataclass(frozen=True)
class ModelDef:
    """A model's static structure: graphdef, parameter shapes and logical axes (all abstract)."""

    cfg: ModelConfig
    graphdef: nnx.GraphDef
    shapes: Params  # jax.ShapeDtypeStruct leaves
    axes: Params  # PartitionSpec leaves holding logical axis names

    def init(self, seed: int) -> Params:
        """Fresh parameters for `seed` (call under jit with out_shardings to create them sharded)."""
        return nnx.to_pure_dict(nnx.state(build_model(self.cfg, seed), nnx.Param))

    def apply(
        self,
        params: Params,
        batch: Batch,
        *,
        dropout_key: jax.Array | None = None,
        runner: LayerRunner | None = None,
    ) -> jax.Array:
        """fp32 logits of the model with `params` on `batch`."""
        return nnx.merge(self.graphdef, params).forward(batch, dropout_key=dropout_key, runner=runner)


def describe(cfg: ModelConfig) -> ModelDef:
    """The ModelDef of `cfg`, traced abstractly (no parameter memory is used)."""
    with shapes_only():
        graphdef, state = nnx.split(nnx.eval_shape(lambda: build_model(cfg, seed=0)), nnx.Param)
    shapes = nnx.to_pure_dict(jax.tree.map(lambda v: v.get_value(), state, is_leaf=_is_variable))
    axes = nnx.to_pure_dict(jax.tree.map(lambda v: PartitionSpec(*v.axes), state, is_leaf=_is_variable))
    return ModelDef(cfg=cfg, graphdef=graphdef, shapes=shapes, axes=axes)
