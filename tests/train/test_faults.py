"""The preemption guard's signal handling in single- and multi-process runs (no training)."""

from __future__ import annotations

import signal

import jax
import pytest

from scalelab.train import faults
from scalelab.train.faults import PreemptionGuard


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
