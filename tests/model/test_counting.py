"""Parameter and FLOP counts against hand calculations."""

import functools

import jax
import numpy as np

from scalelab.model import ModelConfig
from scalelab.model.counting import count_params, flops_per_token
from scalelab.model.functional import describe


def test_counts_of_a_tied_rmsnorm_gelu_model():
    cfg = ModelConfig(vocab_size=100, d_model=64, n_layers=3, n_heads=4)
    d, f, v, layers = 64, 256, 100, 3
    per_layer = 4 * d * d + 2 * d * f + 2 * d  # q, k, v, o; ffn in/out; two RMSNorm scales
    counts = count_params(cfg)
    assert counts.non_embedding == layers * per_layer + d
    assert counts.total == counts.non_embedding + v * d
    assert counts.matmul == layers * (4 * d * d + 2 * d * f) + v * d
    seq = 32
    assert flops_per_token(cfg, seq) == 6 * counts.matmul + 3 * 2 * 2 * layers * seq * d


def test_counts_of_an_untied_gqa_swiglu_model_with_biases_and_learned_positions():
    cfg = ModelConfig(
        vocab_size=50,
        d_model=48,
        n_layers=2,
        n_heads=6,
        n_kv_heads=2,
        activation="swiglu",
        norm="layernorm",
        position="learned",
        max_seq_len=20,
        tie_embeddings=False,
        use_bias=True,
        d_ff=96,
    )
    d, f, v, h, kv, hd, layers, ctx = 48, 96, 50, 6, 2, 8, 2, 20
    attention = d * h * hd * 2 + d * kv * hd * 2 + (h * hd + 2 * kv * hd + d)  # q, o, k, v weights; biases
    ffn = 3 * d * f + f + d  # in, gate, out; two biases
    norms = 2 * 2 * d  # two LayerNorms with scale and bias
    counts = count_params(cfg)
    assert counts.non_embedding == layers * (attention + ffn + norms) + 2 * d
    assert counts.total == counts.non_embedding + v * d + ctx * d + d * v
    assert counts.matmul == layers * (2 * d * h * hd + 2 * d * kv * hd + 3 * d * f) + v * d
    assert flops_per_token(cfg, 16) == 6 * counts.matmul + 12 * layers * 16 * h * hd


def test_describing_a_model_skips_its_random_draws_but_not_its_shapes_and_real_inits_still_draw():
    for family in ("gpt", "bert", "t5"):
        cfg = ModelConfig(family=family, vocab_size=40, d_model=32, n_layers=2, n_heads=4, use_bias=True)
        spec = describe(cfg)  # traced with shapes_only: no random values drawn
        real = jax.eval_shape(functools.partial(spec.init, 0))
        assert jax.tree.map(lambda s: (s.shape, s.dtype), spec.shapes) == jax.tree.map(
            lambda s: (s.shape, s.dtype), real
        )
        drawn = spec.init(0)  # after describe, initializers draw again
        assert any(np.std(np.asarray(leaf)) > 0 for leaf in jax.tree.leaves(drawn))
