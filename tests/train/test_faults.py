"""The preemption guard's signal handling in single- and multi-process runs, and a Ctrl-C during start-up."""

from __future__ import annotations

import gc
import signal

import jax
import pytest

from scalelab.cli import main
from scalelab.train import config_io, faults
from scalelab.train.faults import EXIT_PREEMPTED, PreemptionGuard


class _Exited(Exception):
    """Stands in for os._exit so a test can see the exit status instead of dying."""


@pytest.fixture
def exits(monkeypatch) -> None:
    def fake_exit(status: int) -> None:
        raise _Exited(status)

    monkeypatch.setattr(faults.os, "_exit", fake_exit)


@pytest.fixture
def sigterms() -> list[int]:
    """Records SIGTERMs instead of dying of them (in a multi-process run JAX's preemption service takes them)."""
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    yield received
    signal.signal(signal.SIGTERM, previous)


def test_single_process_first_signal_requests_a_stop_and_the_second_exits_at_once(exits):
    with PreemptionGuard() as guard:
        assert not guard.requested()
        signal.raise_signal(signal.SIGINT)
        assert guard.signal_name == "SIGINT" and guard.requested()
        with pytest.raises(_Exited) as exited:  # another signal than the first is never an echo
            signal.raise_signal(signal.SIGTERM)
    assert exited.value.args == (128 + signal.SIGTERM,)


def test_multi_process_sigint_is_forwarded_to_the_preemption_service_as_sigterm(monkeypatch, exits, sigterms):
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with PreemptionGuard() as guard:
        assert signal.getsignal(signal.SIGTERM) is not guard._handle  # SIGTERM stays with JAX's service
        signal.raise_signal(signal.SIGINT)
        assert sigterms == [signal.SIGTERM]
        assert guard.signal_name == "SIGINT"
        later = faults.time.monotonic() + faults.ECHO_S  # past the echo window: a true second signal
        monkeypatch.setattr(faults.time, "monotonic", lambda: later)
        with pytest.raises(_Exited) as exited:
            signal.raise_signal(signal.SIGINT)
    assert exited.value.args == (128 + signal.SIGINT,)
    assert sigterms == [signal.SIGTERM]  # the second one exits without forwarding


def test_the_guard_restores_the_previous_handlers(monkeypatch):
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with PreemptionGuard():
        assert signal.getsignal(signal.SIGINT) is not before[0]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def _ctrl_c_dropped_by_a_gc_callback() -> None:
    """Ctrl-C landing in a garbage-collector callback, as it can during JAX's start-up: Python drops the
    KeyboardInterrupt with an "Exception ignored" note, and the code that was running carries on."""

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            gc.callbacks.remove(callback)
            signal.raise_signal(signal.SIGINT)

    gc.callbacks.append(callback)
    gc.collect()


# The dropped KeyboardInterrupt is the scenario: pytest would report it as an unraisable exception.
DROPPED = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@DROPPED
def test_a_ctrl_c_dropped_during_start_up_stops_at_the_first_guard(capfd):
    restore = faults.note_early_interrupts()
    try:
        _ctrl_c_dropped_by_a_gc_callback()  # no KeyboardInterrupt reaches this frame
        with PreemptionGuard() as guard:
            assert guard.signal_name == "SIGINT" and guard.requested()
        with PreemptionGuard() as guard:  # the note is used once
            assert guard.signal_name is None
    finally:
        restore()
    err = capfd.readouterr().err
    assert "SIGINT: saving a checkpoint and stopping" in err
    assert "KeyboardInterrupt" not in err  # the dropped one is not printed: the guard's notice says what happens


@DROPPED
def test_a_ctrl_c_dropped_while_train_starts_stops_the_run_saved(tmp_path, monkeypatch, capsys):
    load = config_io.load_config

    def load_then_ctrl_c(*args, **kwargs):
        cfg = load(*args, **kwargs)
        _ctrl_c_dropped_by_a_gc_callback()
        return cfg

    monkeypatch.setattr(config_io, "load_config", load_then_ctrl_c)
    run = tmp_path / "run"
    args = ["train", "gpt-tiny", "--run-dir", str(run), "--quiet", "--set", "logging.peak_flops=1e12"]
    assert main([*args, "--set", "checkpoint.every=10"]) == EXIT_PREEMPTED
    assert "scalelab train: stopped by SIGINT after 0 steps; newest checkpoint: step 0 in " in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # main put pytest's handler back
