"""The measured peak is the best this host has shown, kept across runs, so runs' MFU can be compared."""

import json

import jax
import pytest

from scalelab.runtime import peak


@pytest.fixture
def rates(tmp_path, monkeypatch):
    """Make each measurement return the next of `rates` (as a busy host would: all over the place)."""
    monkeypatch.setenv("SCALELAB_CACHE", str(tmp_path))
    queue = []
    monkeypatch.setattr(peak, "measured_matmul_flops", lambda dtype, size=None, rounds=3: queue.pop(0))
    return queue


def test_the_best_measurement_is_kept_and_a_slower_one_never_lowers_it(tmp_path, rates):
    rates.extend([1e12, 3e12, 0.5e12])
    assert [peak.remembered_matmul_flops("bfloat16")[0] for _ in range(3)] == [1e12, 3e12, 3e12]
    (entry,) = json.loads((tmp_path / "peak.json").read_text()).values()
    assert entry["flops"] == 3e12


def test_each_dtype_keeps_its_own_best(rates):
    rates.extend([2e12, 1e11, 1e12])
    assert peak.remembered_matmul_flops("bfloat16")[0] == 2e12
    assert peak.remembered_matmul_flops("float32")[0] == 1e11
    assert peak.remembered_matmul_flops("bfloat16")[0] == 2e12


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"x": 1}'])
def test_a_garbled_cache_is_replaced(tmp_path, rates, text):
    (tmp_path / "peak.json").write_text(text)
    rates.extend([1e12, 0.5e12])
    assert peak.remembered_matmul_flops("bfloat16")[0] == 1e12
    assert peak.remembered_matmul_flops("bfloat16")[0] == 1e12


def test_each_simulated_device_gets_its_share_and_the_source_names_the_file(tmp_path, rates):
    rates.append(1e12)
    flops, source = peak.peak_flops_per_device(None, "bfloat16")
    assert flops == 1e12 / jax.local_device_count()
    assert str(tmp_path / "peak.json") in source
    assert peak.peak_flops_per_device(5e11, "bfloat16") == (5e11, "configured") and rates == []
