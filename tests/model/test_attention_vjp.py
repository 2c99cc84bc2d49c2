"""Attention without a bias uses a backward pass that recomputes the probabilities; it must match autodiff."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scalelab.model.attention import dot_product_attention


def reference(q, k, v, mask, dtype):
    """The textbook attention, differentiated by JAX (fp32 softmax, `dtype` matmul inputs)."""
    *lead, t, h, d = q.shape
    kv = k.shape[-2]
    q = q.reshape(*lead, t, kv, h // kv, d).astype(dtype)
    logits = jnp.einsum("...tkgd,...skd->...kgts", q, k.astype(dtype), preferred_element_type=jnp.float32)
    logits = logits / math.sqrt(d)
    if mask is not None:
        logits = jnp.where(mask[..., None, None, :, :], logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
    out = jnp.einsum("...kgts,...skd->...tkgd", weights, v.astype(dtype), preferred_element_type=jnp.float32)
    return out.reshape(*lead, t, h, d).astype(dtype)


def _qkv(lead=(2,), t=8, h=4, kv=2, d=8):
    kq, kk, kv_, kc = jax.random.split(jax.random.key(1), 4)
    q = jax.random.normal(kq, (*lead, t, h, d))
    k = jax.random.normal(kk, (*lead, t, kv, d))
    v = jax.random.normal(kv_, (*lead, t, kv, d))
    cotangent = jax.random.normal(kc, (*lead, t, h, d))
    return q, k, v, cotangent


def _causal(t, fully_masked_row=False):
    mask = jnp.tril(jnp.ones((t, t), bool))
    if fully_masked_row:
        mask = mask.at[3].set(False)  # a query that sees nothing (e.g. padding) averages the values
    return mask[None]


@pytest.mark.parametrize("kv_heads", [4, 2], ids=["multi-head", "grouped"])
@pytest.mark.parametrize("mask_kind", ["none", "causal", "empty_row"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_values_and_gradients_match_autodiff(mask_kind, dtype, kv_heads):
    q, k, v, cotangent = _qkv(kv=kv_heads)
    mask = {"none": None, "causal": _causal(8), "empty_row": _causal(8, fully_masked_row=True)}[mask_kind]

    def vjp(fn):
        out, pull = jax.vjp(lambda q, k, v: fn(q, k, v, mask, dtype).astype(jnp.float32), q, k, v)
        return out, pull(cotangent)

    (out, grads), (ref_out, ref_grads) = vjp(dot_product_attention_no_bias), vjp(reference)
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    np.testing.assert_allclose(out, ref_out, atol=tol)
    for g, r in zip(grads, ref_grads, strict=True):
        assert g.dtype == r.dtype
        np.testing.assert_allclose(g, r, atol=tol * max(1.0, float(jnp.max(jnp.abs(r)))))


def test_blocked_leading_axes_work():
    q, k, v, cotangent = _qkv(lead=(2, 3))
    out, pull = jax.vjp(lambda q, k, v: dot_product_attention_no_bias(q, k, v, None, jnp.float32), q, k, v)
    ref, ref_pull = jax.vjp(lambda q, k, v: reference(q, k, v, None, jnp.float32), q, k, v)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    for g, r in zip(pull(cotangent), ref_pull(cotangent), strict=True):
        np.testing.assert_allclose(g, r, atol=1e-4)


def dot_product_attention_no_bias(q, k, v, mask, dtype):
    return dot_product_attention(q, k, v, mask, None, dtype)
