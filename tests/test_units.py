"""The shared number formatter, number parser and config flattener."""

import math

import pytest

from scalelab.units import flatten, parse_float, si


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [
        (0, "", "0"),
        (0.5, "", "0.5"),
        (999, "", "999"),
        (1234, "", "1.23k"),
        (-2e6, "", "-2M"),
        (1.5e9, "B", "1.5GB"),
        (3.2e11, "FLOP/s", "320GFLOP/s"),
        (4.56e13, "", "45.6T"),
        (2.5e15, "FLOP/s", "2.5PFLOP/s"),
        (4.5e18, "", "4.5E"),
    ],
)
def test_si_keeps_three_figures_and_the_largest_prefix_reached(value, unit, text):
    assert si(value, unit) == text


@pytest.mark.parametrize(
    ("value", "number"),
    [(3, 3.0), (2.5, 2.5), ("3e-4", 3e-4), ("1e12", 1e12), (" 7 ", 7.0), ("-inf", -math.inf)],
)
def test_parse_float_reads_numbers_and_strings_of_numbers(value, number):
    assert parse_float(value) == number and isinstance(parse_float(value), float)


@pytest.mark.parametrize("value", [True, False, "abc", "", None, [1], {"a": 1}, 10**400])
def test_parse_float_gives_the_default_for_anything_else(value):
    assert parse_float(value) is None
    assert math.isnan(parse_float(value, math.nan))


def test_parse_float_passes_nan_on_for_the_caller_to_judge():
    assert math.isnan(parse_float("nan"))


def test_flatten_gives_dotted_keys_of_leaves():
    nested = {"model": {"d_model": 64, "rope": {"theta": 1e4}}, "name": "x", "empty": {}, "list": [1, 2]}
    assert flatten(nested) == {"model.d_model": 64, "model.rope.theta": 1e4, "name": "x", "list": [1, 2]}
    assert flatten(3, "a.b") == {"a.b": 3}
    assert flatten({1: {"x": None}}) == {"1.x": None}
