"""The peer watch: who counts as lost, what it stores, and the line a survivor prints."""

from __future__ import annotations

import threading
import time

import jax
import pytest

from scalelab.errors import ConfigError
from scalelab.parallel.liveness import (
    DEFAULT_TIMEOUT_S,
    TIMEOUT_ENV,
    LostPeer,
    PeerWatch,
    StallDetector,
    beat_value,
    peer_timeout,
    stopped_value,
    watching,
)
from scalelab.train.faults import lost_peer_message


class FakeStore:
    """The coordination service's key-value store, in memory."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def key_value_set(self, key: str, value: str, allow_overwrite: bool = False) -> None:
        assert allow_overwrite or key not in self.values
        self.values[key] = value

    def key_value_dir_get(self, key: str) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self.values.items() if k.startswith(key)]


def test_a_peer_whose_beat_changes_is_never_lost():
    detector = StallDetector([1], timeout=10, now=0)
    for t in range(0, 100, 5):
        assert detector.observe({1: beat_value(t, "h1")}, now=t) is None


def test_a_peer_whose_beat_stands_still_past_the_timeout_is_lost_with_its_host():
    detector = StallDetector([1, 2], timeout=10, now=0)
    assert detector.observe({1: beat_value(7, "h1"), 2: beat_value(0, "h2")}, now=1) is None
    assert detector.observe({1: beat_value(7, "h1"), 2: beat_value(1, "h2")}, now=11) is None  # 10 s: not yet
    assert detector.observe({1: beat_value(7, "h1"), 2: beat_value(2, "h2")}, now=11.5) == LostPeer(1, "h1", 10.5)


def test_a_peer_that_never_beat_is_lost_a_timeout_after_the_watch_started():
    detector = StallDetector([3], timeout=10, now=100)
    assert detector.observe({}, now=109) is None
    assert detector.observe({}, now=111) == LostPeer(3, "unknown", 11)


def test_a_peer_that_stopped_in_order_is_never_lost():
    detector = StallDetector([1], timeout=10, now=0)
    detector.observe({1: stopped_value("h1")}, now=0)
    assert detector.observe({1: stopped_value("h1")}, now=1000) is None


def test_the_watch_stores_its_beat_and_marks_itself_stopped():
    store, clock = FakeStore(), iter(range(100))
    watch = PeerWatch(store, 0, 2, 7, on_lost=lambda lost: None, timeout=10, clock=lambda: next(clock))
    assert watch.check_once(0) is None
    assert store.values == {"scalelab/liveness/7/0": beat_value(0, watch.host)}
    watch.stop()
    assert store.values == {"scalelab/liveness/7/0": stopped_value(watch.host)}


def test_the_watch_thread_reports_a_silent_peer_once():
    store, reported = FakeStore(), []
    done = threading.Event()
    store.key_value_set("scalelab/liveness/3/1", beat_value(4, "gone-host"))  # written once, then silence

    def on_lost(lost: LostPeer) -> None:
        reported.append(lost)
        done.set()

    watch = PeerWatch(store, 0, 2, 3, on_lost=on_lost, timeout=0.3).start()
    assert done.wait(10)
    watch.stop()
    assert [(lost.process, lost.host) for lost in reported] == [(1, "gone-host")]
    assert reported[0].silent_s > 0.3


class FrozenStore(FakeStore):
    """Process 0's store once process 0 froze: every call blocks (here, until the test ends)."""

    def __init__(self, answers: int, release: threading.Event) -> None:
        super().__init__()
        self.answers, self.release = answers, release

    def key_value_dir_get(self, key: str) -> list[tuple[str, str]]:
        self.answers -= 1
        if self.answers < 0:
            self.release.wait()
        return super().key_value_dir_get(key)


class GoneStore(FakeStore):
    """Process 0's store once process 0's socket closed: every call fails."""

    def key_value_set(self, key: str, value: str, allow_overwrite: bool = False) -> None:
        raise RuntimeError("UNAVAILABLE: Failed to send RPC to coordination service")


def _first_loss(store: FakeStore, process: int, wait: float = 3) -> tuple[LostPeer | None, float]:
    """(what the watch of `process` among 2, with a 0.3 s timeout, reported within `wait` s, or None; seconds)."""
    reported: list[LostPeer] = []
    done = threading.Event()
    store.values["scalelab/liveness/5/0"] = beat_value(0, "coordinator-host")

    def on_lost(lost: LostPeer) -> None:
        reported.append(lost)
        done.set()

    start = time.monotonic()
    watch = PeerWatch(store, process, 2, 5, on_lost=on_lost, timeout=0.3).start()
    done.wait(wait)
    took = time.monotonic() - start
    watch.stop()
    assert len(reported) <= 1
    return (reported[0] if reported else None), took


def test_a_store_that_stops_answering_is_process_0_lost_after_the_timeout():
    release = threading.Event()
    try:
        lost, took = _first_loss(FrozenStore(answers=2, release=release), process=1)
    finally:
        release.set()
    assert lost is not None and (lost.process, lost.host) == (0, "coordinator-host")
    assert lost.silent_s > 0.3 and took < 2


def test_a_store_whose_calls_fail_is_process_0_lost_after_the_timeout():
    lost, took = _first_loss(GoneStore(), process=1)
    assert lost is not None and lost.process == 0 and lost.silent_s > 0.3 and took < 2


def test_process_0_never_takes_its_own_store_for_a_lost_process_0():
    lost, took = _first_loss(GoneStore(), process=0, wait=1.5)
    assert lost is None and took >= 1.5  # five timeouts of failing calls, and no report
    assert _first_loss(GoneStore(), process=1, wait=1.5)[0] is not None  # the same store, seen from process 1


def _silent_peer_watch(reported: list[LostPeer], timeout: float) -> PeerWatch:
    """Process 0's watch of a peer that beat once and went silent; losses are appended to `reported`."""
    store = FakeStore()
    store.key_value_set("scalelab/liveness/9/1", beat_value(4, "gone-host"))
    return PeerWatch(store, 0, 2, 9, on_lost=reported.append, timeout=timeout)


def test_a_runtime_error_waits_for_the_watch_to_name_the_lost_peer():
    # A collective with a dead peer fails at once, before the peer's silence has lasted the timeout.
    reported: list[LostPeer] = []
    with pytest.raises(jax.errors.JaxRuntimeError), watching(_silent_peer_watch(reported, timeout=0.3)):
        raise jax.errors.JaxRuntimeError("INTERNAL: Gloo all-reduce failed: connection closed by peer")
    assert [(lost.process, lost.host) for lost in reported] == [(1, "gone-host")]


def test_other_errors_propagate_without_waiting():
    reported: list[LostPeer] = []
    start = time.monotonic()
    with pytest.raises(ConfigError), watching(_silent_peer_watch(reported, timeout=5)):
        raise ConfigError("a mistake of this process's own")
    assert reported == [] and time.monotonic() - start < 2


def test_a_runtime_error_with_every_peer_alive_is_raised_after_the_timeout():
    store, reported = FakeStore(), []
    watch = PeerWatch(store, 0, 1, 11, on_lost=reported.append, timeout=0.3)  # no peers to lose
    start = time.monotonic()
    with pytest.raises(jax.errors.JaxRuntimeError, match="its own"), watching(watch):
        raise jax.errors.JaxRuntimeError("its own")
    assert reported == [] and 0.3 <= time.monotonic() - start < 3


def test_the_timeout_comes_from_the_environment():
    assert peer_timeout({}) == DEFAULT_TIMEOUT_S
    assert peer_timeout({TIMEOUT_ENV: "2.5"}) == 2.5
    for bad in ("0", "-1", "ten"):
        with pytest.raises(ConfigError, match=f"{TIMEOUT_ENV}='{bad}' must be a number of seconds above 0"):
            peer_timeout({TIMEOUT_ENV: bad})


def test_the_survivors_line_names_the_process_its_host_and_the_checkpoint_to_resume(tmp_path):
    for step in (5, 10):
        (tmp_path / "checkpoints" / str(step)).mkdir(parents=True)
    (tmp_path / "checkpoints" / "15.orbax-checkpoint-tmp-1").mkdir()  # an unfinished save does not count
    assert lost_peer_message(LostPeer(1, "node-7", 12.0), tmp_path) == (
        "scalelab train: error: process 1 (host node-7) stopped responding; the job cannot continue without it. "
        "Requeue the whole job with the same command: it resumes from checkpoint 10"
    )


def test_without_a_checkpoint_the_line_says_how_to_start_over(tmp_path):
    assert lost_peer_message(LostPeer(2, "node-3", 12.0), tmp_path).endswith(
        "Requeue the whole job with the same command: no checkpoint was saved yet, so add --overwrite to start it over"
    )
