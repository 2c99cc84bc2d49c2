"""The mixed-precision matmul: bf16 inputs, fp32 accumulation, and bf16 matmuls in its backward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scalelab.model.layers import matmul

SPECS = [
    ("btd,df->btf", (2, 8, 16), (16, 32)),
    ("btd,vd->btv", (2, 8, 16), (64, 16)),
    ("bthk,hkd->btd", (2, 8, 4, 8), (4, 8, 16)),
    ("...tkgd,...skd->...kgts", (2, 8, 2, 2, 8), (2, 8, 2, 8)),
]


def _inputs(x_shape, w_shape, x_dtype=jnp.bfloat16):
    kx, kw = jax.random.split(jax.random.key(0))
    return jax.random.normal(kx, x_shape).astype(x_dtype), jax.random.normal(kw, w_shape, jnp.float32)


@pytest.mark.parametrize(("spec", "x_shape", "w_shape"), SPECS)
def test_forward_is_the_bf16_einsum_with_fp32_accumulation(spec, x_shape, w_shape):
    x, w = _inputs(x_shape, w_shape)
    expected = jnp.einsum(spec, x, w.astype(jnp.bfloat16), preferred_element_type=jnp.float32)
    out = matmul(spec, x, w, jnp.bfloat16)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize(("spec", "x_shape", "w_shape"), SPECS)
def test_gradients_track_fp32_and_keep_input_dtypes(spec, x_shape, w_shape):
    x, w = _inputs(x_shape, w_shape, x_dtype=jnp.float32)

    def loss(dtype, x, w):
        return jnp.sum(jnp.sin(matmul(spec, x.astype(dtype), w, dtype)))

    gx, gw = jax.grad(loss, argnums=(1, 2))(jnp.bfloat16, x, w)
    rx, rw = jax.grad(loss, argnums=(1, 2))(jnp.float32, x, w)
    assert gx.dtype == jnp.float32 and gw.dtype == jnp.float32  # the casts' transposes restore fp32
    for low, ref in ((gx, rx), (gw, rw)):
        scale = float(jnp.max(jnp.abs(ref)))
        np.testing.assert_allclose(low, ref, atol=3e-2 * scale)


def test_bf16_input_gets_a_bf16_gradient_and_fp32_weight_an_fp32_one():
    x, w = _inputs((2, 8, 16), (16, 32))
    gx, gw = jax.grad(lambda x, w: matmul("btd,df->btf", x, w, jnp.bfloat16).sum(), argnums=(0, 1))(x, w)
    assert gx.dtype == jnp.bfloat16 and gw.dtype == jnp.float32


def test_fp32_path_is_the_plain_einsum():
    x, w = _inputs((2, 8, 16), (16, 32), x_dtype=jnp.float32)
    grad = jax.grad(lambda w: matmul("btd,df->btf", x, w, jnp.float32).sum())(w)
    expected = jax.grad(lambda w: jnp.einsum("btd,df->btf", x, w).sum())(w)
    np.testing.assert_allclose(grad, expected, rtol=1e-6)


def test_an_index_only_one_operand_has_is_refused():
    x, w = _inputs((2, 8, 16), (16, 32))
    with pytest.raises(ValueError, match="appears nowhere else"):
        matmul("btd,df->bf", x, w, jnp.bfloat16)
