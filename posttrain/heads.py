"""A scalar head on our decoder: the reward model's score (and, per token, PPO's value head).

`ScalarHeadModel` wraps a gpt ModelDef and has its interface (cfg, shapes, axes, init, apply),
so the ordinary Trainer shards, initialises, checkpoints and restores it; its parameters are the
decoder's plus `score_head` = {kernel (d_model, 1), bias (1,)}, in fp32. The head reads the
final hidden states (DecoderLM.hidden, after the final norm):
- `scores`: one scalar per row, at the row's last real token (segment id > 0; rows are right-padded),
- `token_values`: one scalar per position.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec

from scalelab.errors import ConfigError

HEAD = "score_head"
HEAD_INIT_STD = 0.02 / 4  # small: the first scores sit near 0, so the first Bradley-Terry losses are near log 2


def base_params(params: dict[str, Any]) -> dict[str, Any]:
    """The decoder's parameters without the scalar head."""
    return {key: value for key, value in params.items() if key != HEAD}


def head_values(hidden: jax.Array, head: dict[str, jax.Array]) -> jax.Array:
    """fp32 (batch, length) scalars of hidden states (batch, length, d_model)."""
    return jnp.einsum("btd,d->bt", hidden.astype(jnp.float32), head["kernel"][:, 0]) + head["bias"][0]


def last_token(segment_ids: jax.Array) -> jax.Array:
    """(batch,) index of each right-padded row's last real token (segment id > 0)."""
    return jnp.maximum((segment_ids > 0).sum(axis=1) - 1, 0)


@dataclasses.dataclass(frozen=True)
class ScalarHeadModel:
    """A gpt ModelDef plus a linear scalar head over its final hidden states."""

    base: Any  # model.functional.ModelDef of a gpt
    cfg: Any
    graphdef: Any
    shapes: dict[str, Any]
    axes: dict[str, Any]

    @classmethod
    def wrap(cls, base: Any) -> ScalarHeadModel:
        if base.cfg.family != "gpt":
            raise ConfigError(f"a scalar head needs model.family=gpt (a decoder), not {base.cfg.family}")
        d = base.cfg.d_model
        shapes = {
            **base.shapes,
            HEAD: {
                "kernel": jax.ShapeDtypeStruct((d, 1), jnp.float32),
                "bias": jax.ShapeDtypeStruct((1,), jnp.float32),
            },
        }
        axes = {**base.axes, HEAD: {"kernel": PartitionSpec("embed", None), "bias": PartitionSpec(None)}}
        return cls(base, base.cfg, base.graphdef, shapes, axes)

    def init_head(self, seed: int) -> dict[str, jax.Array]:
        key = jax.random.fold_in(jax.random.key(seed), 0x5C0)
        kernel = HEAD_INIT_STD * jax.random.normal(key, (self.cfg.d_model, 1), jnp.float32)
        return {"kernel": kernel, "bias": jnp.zeros((1,), jnp.float32)}

    def init(self, seed: int) -> dict[str, Any]:
        return {**self.base.init(seed), HEAD: self.init_head(seed)}

    def apply(self, params: dict[str, Any], batch: Any, *, dropout_key: Any = None, runner: Any = None) -> jax.Array:
        """The decoder's fp32 logits (the head is not used)."""
        return self.base.apply(base_params(params), batch, dropout_key=dropout_key, runner=runner)

    def hidden(self, params: dict[str, Any], batch: Any, *, dropout_key: Any = None, runner: Any = None) -> jax.Array:
        """Final hidden states (batch, length, d_model)."""
        module = nnx.merge(self.graphdef, base_params(params))
        return module.hidden(
            batch["inputs"],
            positions=batch.get("positions"),
            segment_ids=batch.get("segment_ids"),
            dropout_key=dropout_key,
            runner=runner,
        )

    def token_values(self, params: dict[str, Any], batch: Any, **kwargs: Any) -> jax.Array:
        """fp32 (batch, length): the head at every position (a value head)."""
        return head_values(self.hidden(params, batch, **kwargs), params[HEAD])

    def scores(self, params: dict[str, Any], batch: Any, **kwargs: Any) -> jax.Array:
        """fp32 (batch,): the head at each row's last real token (a reward model's score)."""
        values = self.token_values(params, batch, **kwargs)
        return jnp.take_along_axis(values, last_token(batch["segment_ids"])[:, None], axis=1)[:, 0]
