"""Shape settings that cannot fit together: each error names the setting and how to fix it."""

from __future__ import annotations

import pytest

from scalelab.errors import ConfigError
from scalelab.model.config import ModelConfig


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"n_heads": 4, "n_kv_heads": 3},
            "model.n_heads (4) is not divisible by model.n_kv_heads (3); set model.n_kv_heads to one of 1, 2, 4",
        ),
        (
            {"d_model": 60, "n_heads": 4, "position": "rope"},
            "model.position=rope needs an even head dimension, got 15; set model.head_dim to an even number",
        ),
        (
            {"d_model": 63, "n_heads": 3, "position": "sinusoidal"},
            "model.position=sinusoidal needs an even model.d_model, got 63; make model.d_model even",
        ),
        (
            {"family": "bert", "attention": "sliding", "window": 7},
            "model.window (7) must be even for the bidirectional attention of bert; set model.window=8",
        ),
    ],
)
def test_shape_errors_say_what_to_set(settings, message):
    with pytest.raises(ConfigError) as error:
        ModelConfig(**settings)
    assert message in str(error.value)
