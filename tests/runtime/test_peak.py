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
    monkeypatch.setattr(peak, "fastest_matmul", lambda dtype, rounds=3: (queue.pop(0), 1024))
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


def test_an_impossible_kept_peak_is_replaced_by_the_next_measurement(tmp_path, rates):
    # What a two-process run once left behind on a 2-core CPU: 4.37e15 FLOP/s, after which every run
    # reported an MFU of about 1e-5.
    key = peak._host_key("bfloat16")
    (tmp_path / "peak.json").write_text(json.dumps({key: {"flops": 4.37e15}}))
    rates.extend([4e11, 3e11])
    assert peak.remembered_matmul_flops("bfloat16")[0] == 4e11
    assert json.loads((tmp_path / "peak.json").read_text())[key]["flops"] == 4e11
    assert peak.remembered_matmul_flops("bfloat16")[0] == 4e11  # and then it is the best again


def test_a_kept_peak_far_above_this_runs_measurement_is_not_believed(tmp_path, rates, monkeypatch):
    monkeypatch.setattr(peak, "host_load", lambda: 0.5)  # a quiet host
    key = peak._host_key("bfloat16")
    plausible = peak.plausible_flops() / 2  # possible hardware, but 10x what this host measures
    (tmp_path / "peak.json").write_text(json.dumps({key: {"flops": plausible}}))
    rates.append(plausible / (2 * peak.TRUSTED_RATIO))
    assert peak.remembered_matmul_flops("bfloat16")[0] == plausible / (2 * peak.TRUSTED_RATIO)


def test_on_a_busy_host_a_slow_measurement_does_not_discard_a_possible_kept_peak(tmp_path, rates, monkeypatch):
    # A niced sweep next to other jobs measured 1/5 to 1/10 of the kept peak and replaced it, and
    # reported its utilization against the busy measurement.
    monkeypatch.setattr(peak, "host_load", lambda: 3.0 * peak.usable_cores())
    key = peak._host_key("bfloat16")
    plausible = peak.plausible_flops() / 2
    (tmp_path / "peak.json").write_text(json.dumps({key: {"flops": plausible}}))
    rates.append(plausible / (2 * peak.TRUSTED_RATIO))
    assert peak.remembered_matmul_flops("bfloat16")[0] == plausible
    assert json.loads((tmp_path / "peak.json").read_text())[key]["flops"] == plausible


def test_an_impossible_measurement_is_not_kept(tmp_path, rates):
    limit = peak.plausible_flops()
    rates.extend([1e12, 1000 * limit])
    assert peak.remembered_matmul_flops("bfloat16")[0] == 1e12
    with pytest.warns(UserWarning, match="above what this hardware can do"):
        assert peak.remembered_matmul_flops("bfloat16")[0] == 1e12  # the kept best, not the bad rate
    (entry,) = json.loads((tmp_path / "peak.json").read_text()).values()
    assert entry["flops"] == 1e12


def test_the_measurement_runs_on_a_device_of_this_process(monkeypatch):
    # In a multi-process job the first global device can be another process's.
    local = jax.local_devices()
    elsewhere = object()
    monkeypatch.setattr(peak.jax, "devices", lambda *a: [elsewhere, *local])
    used = []
    real_put = jax.device_put
    monkeypatch.setattr(peak.jax, "device_put", lambda x, device: used.append(device) or real_put(x, device))
    assert peak.matmul_flops_rate("float32", 1, 64, 64, 64, rounds=1) > 0
    assert used == [local[0], local[0]]


def _record_measurements(monkeypatch, search: tuple[float, int], burst: float) -> list:
    """Stand in for the size search (which returns `search`) and the one-size burst (`burst`); the calls made."""
    calls = []
    monkeypatch.setattr(peak, "fastest_matmul", lambda dtype, rounds=3: calls.append("all sizes") or search)
    monkeypatch.setattr(
        peak, "measured_matmul_flops", lambda dtype, size=None, rounds=3: calls.append((size, rounds)) or burst
    )
    return calls


def test_once_a_best_is_kept_each_run_checks_it_with_one_burst_of_the_size_that_set_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SCALELAB_CACHE", str(tmp_path))
    calls = _record_measurements(monkeypatch, search=(2e11, 2048), burst=1.5e11)
    assert [peak.remembered_matmul_flops("bfloat16")[0] for _ in range(2)] == [2e11, 2e11]
    assert calls == ["all sizes", (2048, 1)]
    (entry,) = json.loads((tmp_path / "peak.json").read_text()).values()
    assert (entry["flops"], entry["size"]) == (2e11, 2048)


def test_a_kept_best_without_its_size_is_searched_once_and_then_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("SCALELAB_CACHE", str(tmp_path))
    key = peak._host_key("bfloat16")
    (tmp_path / "peak.json").write_text(json.dumps({key: {"flops": 3e11, "measured": "2026-01-01T00:00:00+00:00"}}))
    calls = _record_measurements(monkeypatch, search=(2e11, 1024), burst=2e11)
    assert [peak.remembered_matmul_flops("bfloat16")[0] for _ in range(2)] == [3e11, 3e11]
    assert calls == ["all sizes", (1024, 1)]
    kept = json.loads((tmp_path / "peak.json").read_text())[key]
    assert kept == {"flops": 3e11, "measured": "2026-01-01T00:00:00+00:00", "size": 1024}  # the best stays
