"""Parameter and FLOP counts of every family and attention pattern against hand calculations."""

from scalelab.model import ModelConfig
from scalelab.model.config import SequenceLengths
from scalelab.model.counting import count_params, flops_per_sequence, flops_per_token

V, D, H, HD = 50, 32, 4, 8


def test_bert_post_norm_with_biases_and_learned_positions():
    cfg = ModelConfig(
        family="bert", vocab_size=V, d_model=D, n_layers=2, n_heads=H, max_seq_len=16, norm="layernorm",
        norm_position="post", position="learned", use_bias=True,
    )  # fmt: skip
    f, layers = 4 * D, 2
    attention = 4 * D * D + 4 * D  # q, k, v, o and their biases
    ffn = 2 * D * f + f + D
    block = attention + ffn + 2 * 2 * D  # two LayerNorms (scale and bias)
    counts = count_params(cfg)
    # Post-norm normalises the embeddings and has no final norm.
    assert counts.total == V * D + 16 * D + 2 * D + layers * block
    assert counts.non_embedding == 2 * D + layers * block
    assert counts.matmul == layers * (4 * D * D + 2 * D * f) + V * D
    # Full bidirectional attention scores all 16 x 16 pairs in every layer.
    assert flops_per_token(cfg, 16) == 6 * counts.matmul + 3 * 2 * 2 * layers * 16 * H * HD


def test_bert_classifier_costs_one_position_and_no_vocabulary_logits():
    cfg = ModelConfig(family="bert", vocab_size=V, d_model=D, n_layers=2, n_heads=H, n_classes=3)
    f, layers, n = 4 * D, 2, 16
    counts = count_params(cfg)
    assert counts.total == V * D + D + layers * (4 * D * D + 2 * D * f + 2 * D) + 3 * D + 3
    assert counts.matmul == layers * (4 * D * D + 2 * D * f) + 3 * D
    per_sequence = 3 * (2 * (layers * (4 * D * D + 2 * D * f) * n + 3 * D) + 2 * 2 * H * HD * layers * n * n)
    assert flops_per_token(cfg, n) == per_sequence / n


def _t5(**overrides) -> ModelConfig:
    settings = dict(
        family="t5", vocab_size=V, d_model=D, n_layers=2, n_decoder_layers=3, n_heads=H, d_ff=64,
        activation="relu", position="relative", relative_buckets=8, relative_max_distance=16,
    )  # fmt: skip
    return ModelConfig(**{**settings, **overrides})


def test_t5_parameters_with_shared_and_separate_embeddings():
    f, enc, dec = 64, 2, 3
    encoder = enc * (4 * D * D + 2 * D * f + 2 * D) + 8 * H + D  # blocks, relative table, final RMSNorm
    decoder = dec * (8 * D * D + 2 * D * f + 3 * D) + 8 * H + D  # self and cross attention, three norms
    shared = count_params(_t5())
    assert shared.total == V * D + encoder + decoder
    assert shared.non_embedding == encoder + decoder - 2 * 8 * H  # relative tables count as position tables
    assert shared.matmul == enc * (4 * D * D + 2 * D * f) + dec * (8 * D * D + 2 * D * f) + V * D
    separate = count_params(_t5(tie_encoder_decoder_embeddings=False))
    assert separate.total == shared.total + V * D
    assert separate.non_embedding == shared.non_embedding


def test_t5_flops_follow_the_encoder_and_decoder_lengths():
    f, enc, dec, n_in, n_out = 64, 2, 3, 20, 6
    encoder_tokens = enc * (4 * D * D + 2 * D * f) * n_in
    # Decoder self-attention, FFN and cross-attention q/o run on decoder tokens; cross k/v on encoder tokens.
    decoder_tokens = dec * (4 * D * D + 2 * D * f + 2 * D * D) * n_out + dec * 2 * D * D * n_in
    logits = V * D * n_out
    scores = enc * n_in * n_in + dec * (n_out * n_out + n_out * n_in)
    expected = 3 * (2 * (encoder_tokens + decoder_tokens + logits) + 2 * 2 * H * HD * scores)
    lengths = SequenceLengths(n_in, n_out)
    assert flops_per_sequence(_t5(), lengths) == expected
    assert flops_per_token(_t5(), 24, lengths) == expected / 24
    # Separate embedding tables change no matmul.
    assert flops_per_sequence(_t5(tie_encoder_decoder_embeddings=False), lengths) == expected


def test_windowed_attention_counts_only_the_blocks_it_computes():
    f, layers, n = 4 * D, 2, 64
    gpt = ModelConfig(vocab_size=V, d_model=D, n_layers=layers, n_heads=H, attention="sliding", window=8)
    matmul = layers * (4 * D * D + 2 * D * f) + V * D
    # Causal w=8: 8 blocks of 8 queries, each scoring 16 keys (its block and the one before).
    assert flops_per_token(gpt, n) == 6 * matmul + 3 * 2 * 2 * H * HD * layers * (8 * 8 * 16) // n
    bert = ModelConfig(
        family="bert", vocab_size=V, d_model=D, n_layers=layers, n_heads=H, attention="sparse", window=8,
        global_tokens=2,
    )  # fmt: skip
    # +-4: 16 blocks of 4 queries scoring 12 band keys plus 2 global keys; 2 global rows score all 64 keys.
    scores = 16 * 4 * (12 + 2) + 2 * n
    assert flops_per_token(bert, n) == 6 * matmul + 3 * 2 * 2 * H * HD * layers * scores // n
    t5 = _t5(attention="sliding", window=4)
    enc, dec, n_in, n_out = 2, 3, 20, 6
    # Encoder +-2: 10 blocks of 2 scoring 6 keys. Decoder w=4 over 6: 2 blocks of 4 scoring 8; cross is full.
    windowed = enc * 10 * 2 * 6 + dec * (2 * 4 * 8 + n_out * n_in)
    full = enc * n_in * n_in + dec * (n_out * n_out + n_out * n_in)
    lengths = SequenceLengths(n_in, n_out)
    difference = flops_per_sequence(_t5(), lengths) - flops_per_sequence(t5, lengths)
    assert difference == 3 * 2 * 2 * H * HD * (full - windowed)
