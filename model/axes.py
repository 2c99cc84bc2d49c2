"""Logical axis names for activations, and the hook through which parallel/ shards them.

model/ names axes; it never names mesh axes. parallel/ installs a resolver that maps
logical names to a sharding, and until it does, `constrain` is the identity.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence

import jax

LogicalAxes = tuple[str | None, ...]
Resolver = Callable[[jax.Array, LogicalAxes], jax.Array]

_resolver: contextvars.ContextVar[Resolver | None] = contextvars.ContextVar("scalelab_axis_resolver", default=None)


@contextlib.contextmanager
def activation_sharding(resolver: Resolver | None) -> Iterator[None]:
    """Within this context, `constrain` applies `resolver` (None turns constraints off)."""
    token = _resolver.set(resolver)
    try:
        yield
    finally:
        _resolver.reset(token)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Annotate activation `x` with logical axis names; a no-op without a resolver."""
    resolver = _resolver.get()
    if resolver is None:
        return x
    return resolver(x, tuple(axes))


def per_shard(
    fn: Callable[..., jax.Array], in_axes: Sequence[LogicalAxes], out_axes: LogicalAxes
) -> Callable[..., jax.Array]:
    """`fn` run on each device's shard of its arguments (logical axes `in_axes`), its results
    joined along `out_axes`: a shard_map under the installed resolver's mesh, for kernels that the
    compiler cannot split itself (Pallas calls). Without a resolver that maps, `fn` itself."""
    mapper = getattr(_resolver.get(), "per_shard", None)
    return fn if mapper is None else mapper(fn, tuple(in_axes), out_axes)
