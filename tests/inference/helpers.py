"""What the decoding tests share: a model built eagerly, and the logits comparison."""

from __future__ import annotations

from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from scalelab.model import ModelConfig
from scalelab.model.functional import describe


def eager_model(cfg: ModelConfig):
    """(model, its parameters, its forward pass). Eager on purpose: the cases share their small ops' compiled
    kernels, which costs less than compiling every case's whole forward pass."""
    model = describe(cfg)
    return model, model.init(0), model.apply


def assert_logits_close(got: jax.Array, want: jax.Array) -> None:
    """Equal within 2e-6 of the largest logit (fp32), and the logits large enough to tell."""
    scale = float(jnp.max(jnp.abs(want)))
    assert scale > 0.1, "logits this small would make the comparison vacuous"
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=2e-6 * scale)


def _eqns(jaxpr) -> Iterator:
    """Every equation of `jaxpr` and of the jaxprs inside it (scans, jits, custom derivatives)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for v in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(v, "jaxpr", v)  # a ClosedJaxpr holds its Jaxpr
                if hasattr(inner, "eqns"):
                    yield from _eqns(inner)


def weight_casts_in_loop(jaxpr, shapes, length: int) -> list:
    """The fp32 casts of weight-shaped arrays (whole or one layer of a stack) inside the one scan of `length` steps."""
    loops = [e for e in _eqns(jaxpr) if e.primitive.name == "scan" and e.params["length"] == length]
    assert len(loops) == 1, f"expected one loop of {length} steps, found {len(loops)}"
    weights = {s.shape[i:] for s in jax.tree.leaves(shapes) if s.ndim >= 2 for i in (0, 1)}
    return [
        e
        for e in _eqns(loops[0].params["jaxpr"].jaxpr)
        if e.primitive.name == "convert_element_type"
        and e.invars[0].aval.dtype == jnp.float32
        and e.invars[0].aval.shape in weights
    ]
