"""A config's allowed values are the names in the registries that build them, read live."""

import dataclasses

import jax.numpy as jnp
import pytest

from scalelab.model.blocks import NORM_PLACEMENTS
from scalelab.model.config import ConfigError, ModelConfig, choices
from scalelab.model.functional import describe
from scalelab.model.layers import ACTIVATIONS, NORMS, Activation
from scalelab.model.masks import ATTENTION_PATTERNS
from scalelab.model.positions import POSITION_ENCODINGS
from scalelab.model.stack import REMAT_POLICIES
from scalelab.model.transformer import MODEL_FAMILIES

REGISTRIES = {
    "family": MODEL_FAMILIES,
    "activation": ACTIVATIONS,
    "norm": NORMS,
    "norm_position": NORM_PLACEMENTS,
    "position": POSITION_ENCODINGS,
    "attention": ATTENTION_PATTERNS,
    "remat": REMAT_POLICIES,
}


@pytest.mark.parametrize("key", REGISTRIES)
def test_an_entry_added_to_a_registry_at_run_time_is_a_valid_config_value(key, monkeypatch):
    registry = REGISTRIES[key]
    with pytest.raises(ConfigError, match=f"model.{key}: unknown value 'extra'"):
        ModelConfig(**{key: "extra"})
    monkeypatch.setitem(registry, "extra", next(iter(registry.values())))
    assert getattr(ModelConfig(**{key: "extra"}), key) == "extra"
    with pytest.raises(ConfigError, match=f"model.{key}: unknown value 'other'; choose one of .*, extra$"):
        ModelConfig(**{key: "other"})


def test_a_new_activation_trains_through_the_model_it_names(monkeypatch):
    monkeypatch.setitem(ACTIVATIONS, "tanh", Activation(jnp.tanh, gated=False))
    cfg = ModelConfig(vocab_size=31, d_model=16, n_layers=1, n_heads=2, max_seq_len=8, dtype="float32", init_std=0.5)
    tokens = jnp.arange(8)[None] % 31
    model = describe(dataclasses.replace(cfg, activation="tanh"))
    tanh = model.apply(model.init(0), {"inputs": tokens})
    relu = describe(dataclasses.replace(cfg, activation="relu"))
    assert tanh.shape == (1, 8, 31)
    assert not jnp.allclose(tanh, relu.apply(relu.init(0), {"inputs": tokens}))  # the new function is the one used


def test_messages_list_the_choices_in_registry_order():
    with pytest.raises(ConfigError, match=r"^model.norm: unknown value 'x'; choose one of layernorm, rmsnorm$"):
        ModelConfig(norm="x")
    with pytest.raises(ConfigError, match=r"^model.dtype: unknown value 'fp8'; choose one of bfloat16, float32$"):
        ModelConfig(dtype="fp8")
    assert {key: list(names) for key, names in choices().items() if key in REGISTRIES} == {
        key: list(registry) for key, registry in REGISTRIES.items()
    }
