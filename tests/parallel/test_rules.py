"""Overrides of the logical-to-mesh rules: a typo is an error, never a silently unsplit axis."""

import pytest

from scalelab.model.config import ConfigError
from scalelab.parallel.rules import DEFAULT_RULES, make_rules
from scalelab.train.config_io import load_config


def _rules(value: str) -> dict:
    return make_rules(load_config("gpt-tiny", [f"mesh.rules={value}"]).mesh.rules)


def test_overrides_replace_only_their_entries():
    rules = _rules("{embed: null, mlp: [fsdp, tensor], vocab: fsdp}")
    assert rules["embed"] == () and rules["mlp"] == ("fsdp", "tensor") and rules["vocab"] == ("fsdp",)
    assert {k: v for k, v in rules.items() if k not in ("embed", "mlp", "vocab")} == {
        k: v for k, v in DEFAULT_RULES.items() if k not in ("embed", "mlp", "vocab")
    }


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{embd: null}", r"unknown logical axis 'embd'; did you mean 'embed'\?"),
        ("{embed:null}", r"unknown logical axis 'embed:null'; did you mean 'embed'\?"),  # YAML needs the space
        ("{embed: bogus_axis}", r"mesh\.rules\.embed: unknown mesh axis 'bogus_axis'; use pipeline, data, fsdp"),
        ("{mlp: [tensor, tensr]}", r"mesh\.rules\.mlp: unknown mesh axis 'tensr'"),
        ("{heads: 3}", r"mesh\.rules\.heads: expected a mesh axis name, a list of them or null, got 3"),
    ],
)
def test_bad_overrides_name_the_rule_and_the_fix(value, message):
    with pytest.raises(ConfigError, match=message):
        _rules(value)
