"""docs/config.md is generated from the config dataclasses, and must equal what the generator prints today."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from scalelab.model.config import ModelConfig, choices
from scalelab.train.config import Config
from scalelab.train.config_io import to_dict
from scalelab.train.config_reference import REGENERATE, choices_of, field_comments, render, walk, yaml_value
from scalelab.units import flatten

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_committed_reference_matches_the_dataclasses():
    committed = (DOCS / "config.md").read_text()
    assert committed == render(), f"docs/config.md is stale; regenerate it with: {REGENERATE}"


def test_every_config_key_is_documented_once():
    documented = [key.path for section in walk(Config) for key in section.keys]
    assert len(documented) == len(set(documented))
    assert sorted(documented) == sorted(flatten(to_dict(Config())))


@dataclasses.dataclass(frozen=True)
class _Example:
    """An example section."""

    plain: int = 1
    trailing: str = "a"  # said after the field
    # said above the field,
    # over two lines
    above: list[int] = dataclasses.field(default_factory=list)
    both: float | None = None  # the trailing comment wins


def test_comments_come_from_the_line_or_the_lines_above():
    assert field_comments(_Example) == {
        "plain": "",
        "trailing": "said after the field",
        "above": "said above the field, over two lines",
        "both": "the trailing comment wins",
    }
    (section,) = walk(_Example)
    assert section.doc == "An example section."
    assert [(key.path, key.type, key.default) for key in section.keys] == [
        ("plain", "int", "1"),
        ("trailing", "str", "a"),
        ("above", "list[int]", "[]"),
        ("both", "float | None", "null"),
    ]


def test_choices_are_the_validators_own():
    assert choices_of(ModelConfig, "family") == tuple(choices()["family"])
    assert choices_of(ModelConfig, "remat") == tuple(choices()["remat"])
    assert choices_of(ModelConfig, "activation") != ()
    assert choices_of(_Example, "trailing") == ()  # accepts anything: no list to show


def test_defaults_are_written_as_yaml():
    assert [yaml_value(v) for v in (None, True, 3e-4, 4.0, [1, 2], {"data": 2})] == [
        "null",
        "true",
        "0.0003",
        "4.0",
        "[1, 2]",
        "{data: 2}",
    ]


def test_descriptions_cannot_break_the_table():
    rendered = render()
    assert "<extra_id_i>" not in rendered  # would read as an HTML tag
    assert "&lt;extra_id_i&gt;" in rendered
    assert "`int \\| None`" in rendered
