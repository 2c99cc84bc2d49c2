"""What the decoding tests share: a model built eagerly, and the logits comparison."""

from __future__ import annotations

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
