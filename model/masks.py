"""Attention patterns: which keys each query may see, and which query-key pairs get computed.

A pattern is index geometry, chosen by `model.attention` through ATTENTION_PATTERNS, plus the
kernel request (`model.attention_impl`, see model/attention_impls.py) that decides which code computes it.
`allowed(q, k)` is its dense rule, the reference every kernel must equal. Sliding and sparse
attention cut the sequence into query blocks and score each block against a span of
neighbouring key blocks (`blocking`), so their work grows as O(n·w) rather than O(n²).
`scores` counts the query-key pairs a kernel computes, masked or not: the FLOP counter
charges exactly those.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from scalelab.model.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Blocking:
    """`count` query blocks of `size` positions; block i scores keys of blocks i - before .. i + after."""

    size: int
    count: int
    before: int
    after: int

    @property
    def span(self) -> int:
        """Key positions scored per query block."""
        return (self.before + 1 + self.after) * self.size

    def query_index(self) -> jax.Array:
        """Position of each query, (count, size, 1)."""
        return (jnp.arange(self.count)[:, None] * self.size + jnp.arange(self.size)[None, :])[:, :, None]

    def key_index(self) -> jax.Array:
        """Position of each scored key, (count, 1, span); out-of-range ones are padding."""
        start = (jnp.arange(self.count) - self.before) * self.size
        return (start[:, None] + jnp.arange(self.span)[None, :])[:, None, :]


@dataclasses.dataclass(frozen=True)
class KernelRequest:
    """Which implementation `model.attention_impl` names, and the model facts its support rules read.

    Static and hashable: it rides in a pattern, which jit treats as part of the program. The
    platform is not known here (asking JAX would start its backend), so `auto` is resolved when
    the attention inputs are prepared, inside the traced forward pass.
    """

    name: str = "einsum"
    dtype: str = "bfloat16"
    head_dim: int = 0


EINSUM = KernelRequest()  # patterns built without a config (cross-attention, tests) use today's kernels


@dataclasses.dataclass(frozen=True)
class FullAttention:
    """Every query sees every key (causal: every key up to its own position)."""

    causal: bool
    kernel: KernelRequest = dataclasses.field(default=EINSUM, kw_only=True)

    @classmethod
    def from_config(cls, cfg: ModelConfig, causal: bool) -> FullAttention:
        """The pattern `cfg` asks for, for a causal or a bidirectional stack."""
        return cls(causal)

    def visible(self, q: jax.Array, k: jax.Array) -> jax.Array:
        """Causality alone: True where key position k is not in the future of query position q."""
        return (k <= q) | (not self.causal)

    def allowed(self, q: jax.Array, k: jax.Array) -> jax.Array:
        """The dense rule: True where query position q may attend to key position k."""
        return self.visible(q, k)

    def scores(self, q_len: int, kv_len: int) -> int:
        """Query-key pairs computed per head: all of them."""
        return q_len * kv_len


@dataclasses.dataclass(frozen=True)
class SlidingWindow(FullAttention):
    """A band of `window` keys: causal sees itself and the w-1 before it, bidirectional +-w/2."""

    window: int

    @classmethod
    def from_config(cls, cfg: ModelConfig, causal: bool) -> SlidingWindow:
        return cls(causal, cfg.window)

    @property
    def reach(self) -> tuple[int, int]:
        """How many positions back and ahead of a query the band extends."""
        return (self.window - 1, 0) if self.causal else (self.window // 2, self.window // 2)

    def local(self, q: jax.Array, k: jax.Array) -> jax.Array:
        """True where k lies in q's band."""
        back, ahead = self.reach
        return (k >= q - back) & (k <= q + ahead)

    def allowed(self, q: jax.Array, k: jax.Array) -> jax.Array:
        return self.visible(q, k) & self.local(q, k)

    def blocking(self, length: int) -> Blocking:
        """Blocks as wide as the band's longer side, so each query block needs one neighbour per side."""
        back, ahead = self.reach
        size = min(self.window if self.causal else self.window // 2, length)
        count = math.ceil(length / size)
        # Short sequences need fewer neighbours than the band reaches: never span more blocks than exist.
        return Blocking(size, count, min(math.ceil(back / size), count - 1), min(math.ceil(ahead / size), count - 1))

    def scores(self, q_len: int, kv_len: int) -> int:
        blocks = self.blocking(q_len)
        return blocks.count * blocks.size * blocks.span


@dataclasses.dataclass(frozen=True)
class LocalGlobal(SlidingWindow):
    """A sliding window plus `global_tokens` leading positions that see, and are seen by, every position."""

    global_tokens: int

    @classmethod
    def from_config(cls, cfg: ModelConfig, causal: bool) -> LocalGlobal:
        return cls(causal, cfg.window, cfg.global_tokens)

    def globals_in(self, length: int) -> int:
        """Global positions in a sequence of `length` (a short sequence has fewer)."""
        return min(self.global_tokens, length)

    def allowed(self, q: jax.Array, k: jax.Array) -> jax.Array:
        is_global = (q < self.global_tokens) | (k < self.global_tokens)
        return self.visible(q, k) & (self.local(q, k) | is_global)

    def scores(self, q_len: int, kv_len: int) -> int:
        # Every query block also scores the global keys; the global queries score every key.
        blocks = self.blocking(q_len)
        n_global = self.globals_in(q_len)
        return blocks.count * blocks.size * (blocks.span + n_global) + n_global * kv_len


Pattern = FullAttention  # the base every pattern extends, for type hints
BIDIRECTIONAL = FullAttention(causal=False)  # cross-attention's pattern: every query sees every key

ATTENTION_PATTERNS: dict[str, type[FullAttention]] = {
    "full": FullAttention,
    "sliding": SlidingWindow,
    "sparse": LocalGlobal,
}


def make_pattern(cfg: ModelConfig, causal: bool) -> Pattern:
    """The self-attention pattern named by `cfg.attention`, causal or bidirectional, computed by the
    implementation `cfg.attention_impl` names."""
    pattern = ATTENTION_PATTERNS[cfg.attention].from_config(cfg, causal)
    return dataclasses.replace(pattern, kernel=KernelRequest(cfg.attention_impl, cfg.dtype, cfg.dim_per_head))
