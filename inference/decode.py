"""KV-cache decoding for the gpt and t5 families: prefill a prompt, then one token at a time.

The cache holds every layer's keys and values, (layers, batch, max_len, kv_heads, head_dim) in
the compute dtype, keys already rotated when the model uses RoPE. Slot i of a row holds
position i. Prompts of different lengths are right-padded and each row keeps its own length:
its next token is written at that slot and sees slots `pattern.allowed(position, slot)`, which
hides the future (and so the padding and stale slots) and, with a sliding window, the slots
that fell out of it. Relative and ALiBi biases are functions of slot - position, as in training.

The blocks run in one lax.scan over the stacked block parameters and the cache's layer axis;
each layer returns only its new keys and values, which are written into the cache once after
the scan. With int8 weights (inference/quantize.py) each layer's weights are dequantized inside
the scan, right before its matmuls. The training forward pass is untouched: decoding reuses
the modules' own projections, norms, feed-forward and attention kernel.

A t5 model decodes with its decoder tower the same way. Its encoder runs once over the
right-padded sources (`encode`), whose padding gets segment 0 as in training, and each
decoder layer's cross-attention keys and values of the encoder output are projected once,
stacked over layers, and carried in the cache beside the self-attention keys and values.
Decoding starts from the decoder start id the training objective shifts its targets with.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scalelab.inference.quantize import dequantize
from scalelab.model.attention import cross_attention_inputs, dot_product_attention
from scalelab.model.blocks import NORM_PLACEMENTS, Block
from scalelab.model.config import ConfigError, ModelConfig
from scalelab.model.encdec import EncoderDecoderLM
from scalelab.model.layers import AttentionInputs
from scalelab.model.tower import Tower, default_positions, embed_tokens, vocab_logits

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class EncoderMemory:
    """A t5 decoder's cross-attention keys and values of the encoder output, per layer, and which may be seen."""

    k: jax.Array  # (layers, batch, source_len, kv_heads, head_dim), compute dtype
    v: jax.Array  # same shape as k
    mask: jax.Array  # (batch, 1, source_len) bool: the source's real tokens, not its padding


jax.tree_util.register_dataclass(EncoderMemory, data_fields=["k", "v", "mask"], meta_fields=[])


@dataclasses.dataclass(frozen=True)
class KVCache:
    """Per-layer keys and values of every row, how many slots of each row hold tokens, and a t5's encoder memory."""

    k: jax.Array  # (layers, batch, max_len, kv_heads, head_dim), compute dtype
    v: jax.Array  # same shape as k
    lengths: jax.Array  # (batch,) int32: tokens held per row; the next one goes to this slot
    memory: EncoderMemory | None = None  # t5 only: what the decoder cross-attends to

    @property
    def max_len(self) -> int:
        """Positions a row can hold."""
        return self.k.shape[2]


jax.tree_util.register_dataclass(KVCache, data_fields=["k", "v", "lengths", "memory"], meta_fields=[])


@dataclasses.dataclass(frozen=True)
class Sampler:
    """How the next token is chosen: greedy at temperature 0, else sampled from softmax(logits / T), top-k if set."""

    temperature: float = 0.0
    top_k: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"top_k must be >= 1 (or unset for the whole vocabulary), got {self.top_k}")


def check_decoder(cfg: ModelConfig) -> None:
    """Raise ConfigError unless `cfg` is a model that decodes left to right with a cache (gpt or t5)."""
    if cfg.family not in ("gpt", "t5"):
        raise ConfigError(
            f"KV-cache decoding needs model.family=gpt or t5 (a model with a causal decoder); this model is "
            f"{cfg.family!r}"
        )


def decoder_prefix(cfg: ModelConfig, prompt_len: int) -> int:
    """Positions the decoder holds before its first new token: the prompt's (gpt), or its start id's (t5)."""
    return 1 if cfg.family == "t5" else prompt_len


def check_length(cfg: ModelConfig, prompt_len: int, new_tokens: int, start: str | None = None) -> None:
    """Raise ConfigError if `prompt_len` + `new_tokens` positions exceed model.max_seq_len.

    `start` names what fills the first positions when it is not a prompt the user can shorten
    (a t5 decoder's start id).
    """
    if prompt_len < 1:
        raise ConfigError("the prompt is empty; give at least one token to continue from")
    total = prompt_len + new_tokens
    if total > cfg.max_seq_len:
        held = f"the prompt has {prompt_len} tokens" if start is None else f"{start} takes {prompt_len}"
        room = cfg.max_seq_len - prompt_len  # new tokens that fit after this prompt
        if room >= 1:
            fix = f"{'shorten the prompt or ask for' if start is None else 'ask for'} at most {room} new tokens"
        elif new_tokens < cfg.max_seq_len:  # no new token fits after this prompt: only a shorter one helps
            fix = f"shorten the prompt to at most {cfg.max_seq_len - new_tokens} tokens"
        else:
            fix = f"ask for fewer than {cfg.max_seq_len} new tokens and shorten the prompt to leave room for them"
        raise ConfigError(
            f"{held} and {new_tokens} new tokens are asked for, {total} positions in all, but the model holds "
            f"at most model.max_seq_len={cfg.max_seq_len}; {fix}"
        )


def init_cache(
    cfg: ModelConfig, batch: int, max_len: int | None = None, memory: EncoderMemory | None = None
) -> KVCache:
    """An empty cache for `batch` rows of up to `max_len` (default model.max_seq_len) positions; a t5 model's
    also holds the `memory` that `encode` made of its sources."""
    check_decoder(cfg)
    if (memory is None) != (cfg.family == "gpt"):
        raise ConfigError("a t5 cache needs memory=encode(...) of its sources, and a gpt cache takes none")
    max_len = max_len or cfg.max_seq_len
    if max_len > cfg.max_seq_len:
        raise ConfigError(f"a cache of {max_len} positions exceeds model.max_seq_len={cfg.max_seq_len}")
    layers = cfg.decoder_layers if cfg.family == "t5" else cfg.n_layers
    shape = (layers, batch, max_len, cfg.kv_heads, cfg.dim_per_head)
    zeros = jnp.zeros(shape, jnp.dtype(cfg.dtype))
    return KVCache(zeros, zeros, jnp.zeros((batch,), jnp.int32), memory)


def _decoder(graphdef: nnx.GraphDef, params: Params, scales: Params | None) -> tuple[Any, Tower, Any, Params, Any]:
    """The model, its causal tower, the tower's token table, and the tower's stacked block weights and scales."""
    model = nnx.merge(graphdef, params)
    tower, table = model, model.embed  # a gpt model is its own tower
    if isinstance(model, EncoderDecoderLM):
        tower, table = model.decoder, model.embed if model.decoder_embed is None else model.decoder_embed
        params, scales = params["decoder"], None if scales is None else scales["decoder"]
    block_scales = None if scales is None else scales["layers"]["blocks"]
    return model, tower, table, params["layers"]["blocks"], block_scales


@functools.partial(jax.jit, static_argnames="graphdef")
def encode(
    graphdef: nnx.GraphDef, params: Params, sources: jax.Array, lengths: jax.Array, scales: Params | None = None
) -> EncoderMemory:
    """A t5 model's encoder memory of right-padded sources (batch, length) with `lengths` real tokens each."""
    if scales is not None:  # the encoder runs once, so its weights are dequantized whole, not layer by layer
        params = {**params, "encoder": dequantize(params["encoder"], scales["encoder"])}
    model, tower, _, blocks, block_scales = _decoder(graphdef, params, scales)
    # Padding is segment 0 and the real tokens segment 1, as the training objective marks them, so neither
    # the encoder's self-attention nor the decoder's cross-attention sees the padding.
    segments = (jnp.arange(sources.shape[1]) < lengths[:, None]).astype(jnp.int32)
    x = embed_tokens(model.embed, sources, model.dtype)
    encoded = model.encoder.body(x, default_positions(sources, None), segments, None, None)
    block_def = nnx.graphdef(tower.layers.blocks)

    def project(_: None, layer: tuple) -> tuple[None, tuple[jax.Array, jax.Array]]:
        weights, layer_scales = layer
        attn = nnx.merge(block_def, dequantize(weights, layer_scales)).cross_attn
        # qkv projects queries and keys separately; an empty query side leaves just the keys and values.
        return None, attn.qkv(encoded[:, :0], encoded, None)[1:]

    _, (k, v) = jax.lax.scan(project, None, (blocks, block_scales))
    return EncoderMemory(k, v, cross_attention_inputs(None, segments).mask)


def _cached_block(
    block: Block,
    x: jax.Array,
    inputs: AttentionInputs,
    cache: tuple[jax.Array, jax.Array],
    positions: jax.Array,
    memory: tuple[jax.Array, jax.Array, jax.Array] | None,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """One block over new tokens x, attending to one layer's cache plus themselves, and in a t5 decoder to
    that layer's encoder keys and values, `memory` (k, v, mask); returns (x, their k and v)."""
    rows = jnp.arange(x.shape[0])[:, None]
    new: list[tuple[jax.Array, jax.Array]] = []

    def attend(h: jax.Array) -> jax.Array:
        q, k, v = block.attn.qkv(h, h, inputs.rotary)
        keys, values = (
            c.at[rows, positions].set(n.astype(c.dtype), mode="drop") for c, n in zip(cache, (k, v), strict=True)
        )
        new.append((k, v))
        return block.attn.output(dot_product_attention(q, keys, values, inputs.mask, inputs.bias, block.attn.dtype))

    def cross_attend(h: jax.Array) -> jax.Array:
        keys, values, mask = memory
        q = block.cross_attn.qkv(h, h[:, :0], None)[0]  # the keys and values were projected once, by `encode`
        return block.cross_attn.output(dot_product_attention(q, keys, values, mask, None, block.cross_attn.dtype))

    residual = NORM_PLACEMENTS[block.norm_position].residual
    x = residual(x, attend, block.attn_norm, 0.0, None)
    if memory is not None:
        x = residual(x, cross_attend, block.cross_norm, 0.0, None)
    return residual(x, block.ffn, block.ffn_norm, 0.0, None), new[0]


def _extend(
    graphdef: nnx.GraphDef, params: Params, scales: Params | None, cache: KVCache, tokens: jax.Array, counts: jax.Array
) -> tuple[jax.Array, KVCache, Callable[[jax.Array], jax.Array]]:
    """Run tokens (batch, length) at each row's next slots; (hidden states, cache with lengths += counts,
    the function that turns hidden states into fp32 logits through the model's own head or tied table)."""
    model, tower, table, blocks, block_scales = _decoder(graphdef, params, scales)
    positions = cache.lengths[:, None] + jnp.arange(tokens.shape[1], dtype=jnp.int32)
    slots = jnp.arange(cache.max_len, dtype=jnp.int32)
    x = tower.positions.embed(embed_tokens(table, tokens, tower.dtype), positions)
    if tower.embed_norm is not None:
        x = tower.embed_norm(x)
    inputs = AttentionInputs(
        mask=tower.pattern.allowed(positions[:, :, None], slots),
        rotary=tower.positions.rotary(positions),
        bias=tower.positions.attention_bias(slots - positions[:, :, None], bidirectional=False),
        pattern=tower.pattern,
    )
    block_def = nnx.graphdef(tower.layers.blocks)
    memory = cache.memory
    memory_kv = None if memory is None else (memory.k, memory.v)

    def body(x: jax.Array, layer: tuple) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        weights, layer_scales, k, v, cross = layer
        block = nnx.merge(block_def, dequantize(weights, layer_scales))
        return _cached_block(block, x, inputs, (k, v), positions, None if cross is None else (*cross, memory.mask))

    x, (k_new, v_new) = jax.lax.scan(body, x, (blocks, block_scales, cache.k, cache.v, memory_kv))
    rows = jnp.arange(tokens.shape[0])[:, None]
    k = cache.k.at[:, rows, positions].set(k_new.astype(cache.k.dtype), mode="drop")
    v = cache.v.at[:, rows, positions].set(v_new.astype(cache.v.dtype), mode="drop")
    if tower.final_norm is not None:
        x = tower.final_norm(x)
    logits = functools.partial(vocab_logits, table=table, head=model.head, dtype=model.dtype)
    return x, KVCache(k, v, cache.lengths + counts, memory), logits


@functools.partial(jax.jit, static_argnames="graphdef")
def extend(
    graphdef: nnx.GraphDef, params: Params, cache: KVCache, tokens: jax.Array, scales: Params | None = None
) -> tuple[jax.Array, KVCache]:
    """fp32 logits (batch, length, vocab) of tokens appended to every row of the cache, and the grown cache."""
    counts = jnp.full(tokens.shape[:1], tokens.shape[1], jnp.int32)
    x, cache, logits = _extend(graphdef, params, scales, cache, tokens, counts)
    return logits(x), cache


@functools.partial(jax.jit, static_argnames="graphdef")
def prefill(
    graphdef: nnx.GraphDef,
    params: Params,
    cache: KVCache,
    tokens: jax.Array,
    lengths: jax.Array,
    scales: Params | None = None,
) -> tuple[jax.Array, KVCache]:
    """Right-padded prompts (batch, length) with `lengths` real tokens each: the logits after each prompt's
    last token (batch, vocab) and the cache holding the prompts."""
    x, cache, logits = _extend(graphdef, params, scales, cache, tokens, lengths.astype(jnp.int32))
    last = jnp.take_along_axis(x, (lengths - 1)[:, None, None], axis=1)
    return logits(last)[:, 0], cache


def next_token(logits: jax.Array, key: jax.Array, sampler: Sampler) -> jax.Array:
    """The chosen token of each row of fp32 logits (batch, vocab)."""
    if sampler.temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / sampler.temperature
    if sampler.top_k is not None and sampler.top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, sampler.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg", "new_tokens", "sampler", "start_id"))
def _generate(
    graphdef: nnx.GraphDef,
    cfg: ModelConfig,
    params: Params,
    scales: Params | None,
    prompts: jax.Array,
    lengths: jax.Array,
    key: jax.Array,
    new_tokens: int,
    sampler: Sampler,
    start_id: int | None,
) -> jax.Array:
    """The compiled body of `generate`: prefill (a t5 model: encode, then prefill the start id), then a scan
    that samples a token and extends the cache."""
    memory = None
    if cfg.family == "t5":
        memory = encode(graphdef, params, prompts, lengths, scales)
        prompts, lengths = jnp.full((prompts.shape[0], 1), start_id, jnp.int32), jnp.ones_like(lengths)
    cache = init_cache(cfg, prompts.shape[0], prompts.shape[1] + new_tokens, memory)
    logits, cache = prefill(graphdef, params, cache, prompts, lengths, scales)

    def step(carry: tuple[jax.Array, KVCache], i: jax.Array) -> tuple[tuple[jax.Array, KVCache], jax.Array]:
        logits, cache = carry
        token = next_token(logits, jax.random.fold_in(key, i), sampler)
        logits, cache = extend(graphdef, params, cache, token[:, None], scales)
        return (logits[:, 0], cache), token

    _, tokens = jax.lax.scan(step, (logits, cache), jnp.arange(new_tokens))
    return tokens.T


def generate(
    cfg: ModelConfig,
    graphdef: nnx.GraphDef,
    params: Params,
    prompts: jax.Array,
    lengths: jax.Array | None = None,
    *,
    new_tokens: int,
    seed: int = 0,
    sampler: Sampler = Sampler(),
    scales: Params | None = None,
    start_id: int | None = None,
) -> jax.Array:
    """`new_tokens` tokens (batch, new_tokens) continuing right-padded prompts (batch, length).

    `lengths` gives each prompt's real tokens (default: all of them). Draws are keyed by
    (seed, step), so a seed reproduces a sampled continuation exactly. `scales` marks `params`
    as int8-quantized (inference/quantize.py). A t5 model's prompts are its encoder's sources, and
    its decoder starts from `start_id`, the id its training objective starts the decoder inputs
    with (data/objectives.py's START_ID).
    """
    check_decoder(cfg)
    if (start_id is None) != (cfg.family == "gpt"):
        raise ConfigError("a t5 model decodes from start_id (its objective's decoder start id); a gpt model takes none")
    prompts = jnp.asarray(prompts, jnp.int32)
    lengths = np.full(prompts.shape[:1], prompts.shape[1]) if lengths is None else np.asarray(lengths)
    if lengths.shape != prompts.shape[:1] or lengths.min() < 1 or lengths.max() > prompts.shape[1]:
        raise ConfigError(
            f"prompt lengths {lengths.tolist()} must give one length in 1..{prompts.shape[1]} per prompt row"
        )
    t5 = cfg.family == "t5"
    if t5 and prompts.shape[1] > cfg.max_seq_len:
        raise ConfigError(
            f"the t5 encoder's input has {prompts.shape[1]} tokens but holds at most model.max_seq_len="
            f"{cfg.max_seq_len}; shorten the prompt to at most {cfg.max_seq_len} tokens"
        )
    start = "the decoder's start id" if t5 else None
    check_length(cfg, decoder_prefix(cfg, prompts.shape[1]), new_tokens, start=start)
    if new_tokens < 1:
        raise ConfigError(f"ask for at least one new token, got {new_tokens}")
    key = jax.random.key(seed)
    lengths = jnp.asarray(lengths, jnp.int32)
    return _generate(graphdef, cfg, params, scales, prompts, lengths, key, new_tokens, sampler, start_id)
