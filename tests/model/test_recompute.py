"""Residual packing and recomputed norms/activations: same values and gradients as plain autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scalelab.model.layers import pack_residual, recomputed, unpack_residual


def test_packing_round_trips_bf16_exactly_and_leaves_other_dtypes_alone():
    x = jax.random.normal(jax.random.key(0), (4, 8)).astype(jnp.bfloat16)
    packed = pack_residual(x)
    assert packed.dtype == jnp.uint16
    np.testing.assert_array_equal(unpack_residual(packed, jnp.bfloat16), x)
    y = jnp.ones((3,), jnp.float32)
    assert pack_residual(y) is y and unpack_residual(y, jnp.bfloat16) is y


def _layer_norm(x, scale, bias):
    xf = x.astype(jnp.float32)
    mean = xf.mean(-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(jnp.square(xf - mean).mean(-1, keepdims=True) + 1e-6)
    return (y * scale + bias).astype(x.dtype)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_recomputed_function_has_the_plain_value_and_gradients(dtype):
    kx, ks, kg = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(kx, (2, 5, 16)).astype(dtype)
    scale, bias = 1.0 + jax.random.normal(ks, (16,)), jnp.full((16,), 0.1)
    cotangent = jax.random.normal(kg, (2, 5, 16)).astype(dtype)
    fast = recomputed(_layer_norm)
    out, pull = jax.vjp(fast, x, scale, bias)
    ref, ref_pull = jax.vjp(_layer_norm, x, scale, bias)
    np.testing.assert_array_equal(out, ref)
    for g, r in zip(pull(cotangent), ref_pull(cotangent), strict=True):
        assert g.dtype == r.dtype
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r, np.float32), rtol=1e-6, atol=1e-6)


def test_recomputed_activation_inside_a_scan_matches():
    xs = jax.random.normal(jax.random.key(2), (6, 4, 8))
    gelu = recomputed(lambda x: jax.nn.gelu(x))

    def total(fn):
        return lambda xs: jax.lax.scan(lambda c, x: (c + fn(x * c).sum(), None), 1.0, xs)[0]

    np.testing.assert_allclose(jax.grad(total(gelu))(xs), jax.grad(total(jax.nn.gelu))(xs), rtol=1e-5, atol=1e-6)
