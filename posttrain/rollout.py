"""Rollouts: sampled continuations of a batch of prompts from the KV-cache decoder, with the policy's
log-probability of each sampled token and a mask of the tokens that belong to the response.

Sampling runs through inference/decode.py's prefill and extend, compiled as one program: a prefill,
then a scan that samples a token, records its log-probability and extends the cache. A response ends
at its first EOS (which it keeps) or at `new_tokens`; columns after the end are masked out and hold
the pad id 0.

`join` lays each prompt and its response out as one right-padded sequence, which is what PPO's
training forward pass and the reward model read.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from scalelab.inference.decode import Params, check_length, extend, init_cache, prefill, weights_in_compute_dtype
from scalelab.model.config import ConfigError, ModelConfig


@dataclasses.dataclass(frozen=True)
class Rollout:
    """Sampled responses (batch, new_tokens) and what PPO needs to know about them."""

    tokens: jax.Array  # int32 response tokens; 0 after the response ends
    logprobs: jax.Array  # fp32 log pi(token | prefix) under the sampling policy at temperature 1
    mask: jax.Array  # fp32 1 on response tokens (through the first EOS), 0 after

    @property
    def lengths(self) -> jax.Array:
        """Tokens in each response."""
        return self.mask.sum(axis=1).astype(jnp.int32)


jax.tree_util.register_dataclass(Rollout, data_fields=["tokens", "logprobs", "mask"], meta_fields=[])


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg", "new_tokens", "eos_id", "temperature"))
def _sample(
    graphdef: nnx.GraphDef,
    cfg: ModelConfig,
    params: Params,
    prompts: jax.Array,
    lengths: jax.Array,
    key: jax.Array,
    new_tokens: int,
    eos_id: int | None,
    temperature: float,
) -> Rollout:
    params = weights_in_compute_dtype(cfg, params)  # once, not at every token
    cache = init_cache(cfg, prompts.shape[0], prompts.shape[1] + new_tokens)
    logits, cache = prefill(graphdef, params, cache, prompts, lengths)

    def step(carry, i):
        logits, cache, done = carry
        logp = jax.nn.log_softmax(logits / temperature, axis=-1)
        token = jax.random.categorical(jax.random.fold_in(key, i), logp, axis=-1).astype(jnp.int32)
        token_logp = jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]
        live = ~done
        ended = done if eos_id is None else done | (token == eos_id)
        logits, cache = extend(graphdef, params, cache, token[:, None])
        out = (jnp.where(live, token, 0), jnp.where(live, token_logp, 0.0), live.astype(jnp.float32))
        return (logits[:, 0], cache, ended), out

    done = jnp.zeros(prompts.shape[:1], bool)
    _, (tokens, logprobs, mask) = jax.lax.scan(step, (logits, cache, done), jnp.arange(new_tokens))
    return Rollout(tokens.T, logprobs.T, mask.T)


def sample(
    cfg: ModelConfig,
    graphdef: nnx.GraphDef,
    params: Params,
    prompts: jax.Array,
    lengths: jax.Array,
    *,
    new_tokens: int,
    key: jax.Array,
    eos_id: int | None = None,
    temperature: float = 1.0,
) -> Rollout:
    """Continue right-padded prompts (batch, length), `lengths` real tokens each, by up to `new_tokens`
    sampled tokens; a response stops after `eos_id`."""
    if cfg.family != "gpt":
        raise ConfigError(f"rollouts sample from a decoder-only policy (model.family=gpt), not {cfg.family!r}")
    if temperature <= 0:
        raise ConfigError(f"rollout temperature must be > 0 (PPO needs the sampling distribution), got {temperature}")
    check_length(cfg, prompts.shape[1], new_tokens)
    prompts, lengths = jnp.asarray(prompts, jnp.int32), jnp.asarray(lengths, jnp.int32)
    return _sample(graphdef, cfg, params, prompts, lengths, key, new_tokens, eos_id, float(temperature))


@jax.jit
def join(prompts: jax.Array, lengths: jax.Array, responses: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Each row's prompt followed directly by its response, right-padded with 0: (tokens, response mask),
    both (batch, prompt_len + new_tokens); the mask is 1 exactly where response tokens sit."""
    width = prompts.shape[1] + responses.shape[1]
    columns = jnp.arange(width)[None, :]
    offset = columns - lengths[:, None]  # index into the response, negative inside the prompt
    in_prompt = offset < 0
    safe_prompt = jnp.clip(columns, 0, prompts.shape[1] - 1)
    safe_response = jnp.clip(offset, 0, responses.shape[1] - 1)
    from_prompt = jnp.take_along_axis(prompts, jnp.broadcast_to(safe_prompt, offset.shape), axis=1)
    from_response = jnp.take_along_axis(responses, safe_response, axis=1)
    response_mask = jnp.where(
        in_prompt | (offset >= responses.shape[1]), 0.0, jnp.take_along_axis(mask, safe_response, axis=1)
    )
    tokens = jnp.where(in_prompt, from_prompt, jnp.where(response_mask > 0, from_response, 0))
    return tokens.astype(jnp.int32), response_mask
