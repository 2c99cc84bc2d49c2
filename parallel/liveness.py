"""Peer liveness in a multi-process run: when a process vanishes, the others stop within seconds.

Without this, a survivor blocked in a collective with a killed peer waits until JAX's coordination
service misses the peer's heartbeats (heartbeat_timeout_seconds, 100 s by default) and then aborts
with a C++ stack trace. Here every process runs a thread that bumps its own counter in the
coordination service's key-value store and reads everyone else's; a peer whose counter stands
still for `timeout` seconds is lost. The thread then prints one line and ends its process with
os._exit: the main thread may be stuck in a collective that will never finish, so nothing can be
unwound. A process that leaves the watch in an orderly way (finished, preempted, or stopped by an
error) marks itself stopped, so the others never mistake a finished peer for a lost one.

The counters travel through the client of jax.distributed (`global_state.client`, the one orbax's
multi-host barriers use too): it spans hosts and needs no port of its own. Its key-value calls
have the same names from jax 0.4 through 0.11; if they are missing, the watch stays off and JAX's
own heartbeat timeout applies. The store lives in process 0. When process 0 dies, its socket
closes and every other process's JAX client aborts at once (parallel/supervisor.py turns that
into the same one line); when process 0 freezes or its host drops off the network, the store
stops answering instead, and a store that has not answered for `timeout` seconds counts as
process 0 lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from scalelab.errors import ConfigError

TIMEOUT_ENV = "SCALELAB_PEER_TIMEOUT"
DEFAULT_TIMEOUT_S = 10.0  # far below JAX's 100 s, far above a busy host's longest pause between beats
KEY_ROOT = "scalelab/liveness"
STOPPED = "stopped"


class KeyValueClient(Protocol):
    """The two calls of jax.distributed's client that the watch uses."""

    def key_value_set(self, key: str, value: str, allow_overwrite: bool = False) -> None: ...

    def key_value_dir_get(self, key: str) -> list[tuple[str, str]]: ...


@dataclasses.dataclass(frozen=True)
class LostPeer:
    """A process whose heartbeat stood still for `silent_s` seconds, on host `host` (as it reported it)."""

    process: int
    host: str
    silent_s: float


def peer_timeout(environ: Mapping[str, str] = os.environ) -> float:
    """Seconds without a heartbeat after which a peer counts as lost: SCALELAB_PEER_TIMEOUT, else 10."""
    text = environ.get(TIMEOUT_ENV)
    if text is None:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise ConfigError(f"{TIMEOUT_ENV}={text!r} must be a number of seconds above 0, e.g. {DEFAULT_TIMEOUT_S:g}")
    return seconds


def beat_value(count: int, host: str) -> str:
    """What a process stores as its heartbeat: a counter that changes every beat, and its host name."""
    return f"{count} {host}"


def stopped_value(host: str) -> str:
    """What a process stores when it leaves the watch in an orderly way."""
    return f"{STOPPED} {host}"


class StallDetector:
    """Which peer's stored heartbeat has stood still for longer than `timeout` (by this process's clock).

    A peer's silence is measured from the moment this process last saw its value change, so a
    watcher that was itself paused sees fresh values when it wakes and accuses nobody. A peer
    that has not written yet gets `timeout` from the start of the watch.
    """

    def __init__(self, peers: list[int], timeout: float, now: float) -> None:
        self.timeout = timeout
        self.hosts: dict[int, str] = {peer: "unknown" for peer in peers}
        self._seen: dict[int, tuple[str | None, float]] = {peer: (None, now) for peer in peers}

    def observe(self, values: Mapping[int, str], now: float) -> LostPeer | None:
        """Record the stored values (process -> value) read at `now`; the first lost peer, if any."""
        for peer, (last, since) in self._seen.items():
            value = values.get(peer)
            if value is not None:
                self.hosts[peer] = value.partition(" ")[2] or self.hosts[peer]
            if value is not None and value.startswith(STOPPED + " "):
                continue  # a peer that left in order is never lost
            if value != last:
                self._seen[peer] = (value, now)
            elif now - since > self.timeout:
                return LostPeer(peer, self.hosts[peer], now - since)
        return None


class PeerWatch:
    """The heartbeat thread of process `process` among `count`; calls `on_lost` once if a peer is lost.

    `on_lost` is expected not to return (it ends the process); if it does, the watch stops.
    Keys live under `<KEY_ROOT>/<session>/`, so successive runs in one job (a sweep) never read
    each other's beats.
    """

    def __init__(
        self,
        client: KeyValueClient,
        process: int,
        count: int,
        session: int,
        on_lost: Callable[[LostPeer], None],
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client, self.process, self.on_lost, self.clock = client, process, on_lost, clock
        self.prefix = f"{KEY_ROOT}/{session}/"
        self.host = socket.gethostname()
        self.interval = min(1.0, timeout / 10)
        self.detector = StallDetector([p for p in range(count) if p != process], timeout, clock())
        self.timeout = timeout
        self._answered = clock()  # when the store last answered a whole beat
        self._stop = threading.Event()
        self._lost = threading.Lock()  # on_lost runs once, from whichever thread sees a loss first
        self._thread = threading.Thread(target=self._run, name="scalelab-peer-watch", daemon=True)
        # A beat blocked on a frozen store never returns: a second thread watches the beats themselves.
        self._store_watch = threading.Thread(target=self._watch_store, name="scalelab-store-watch", daemon=True)

    def start(self) -> PeerWatch:
        self._thread.start()
        if self.process != 0:  # process 0 holds the store itself
            self._store_watch.start()
        return self

    def stop(self) -> None:
        """Stop beating and tell the others this process left in order."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)  # a beat stuck on an unreachable store must not hold up the exit
        with contextlib.suppress(Exception):  # the store may be gone with process 0; nobody is left to tell
            self.client.key_value_set(self.prefix + str(self.process), stopped_value(self.host), allow_overwrite=True)

    def check_once(self, count: int) -> LostPeer | None:
        """Store this process's beat `count`, read the peers' and say whether one is lost."""
        self.client.key_value_set(self.prefix + str(self.process), beat_value(count, self.host), allow_overwrite=True)
        values = {}
        for key, value in self.client.key_value_dir_get(self.prefix):
            name = key.rsplit("/", 1)[-1]
            if name.isdigit():
                values[int(name)] = value
        return self.detector.observe(values, self.clock())

    def await_loss(self) -> None:
        """Give the watch one timeout (and two beats) to find a lost peer; `on_lost` ends the process if it does."""
        self._stop.wait(self.timeout + 2 * self.interval)

    def _report(self, lost: LostPeer) -> None:
        if not self._stop.is_set() and self._lost.acquire(blocking=False):
            self.on_lost(lost)
            self._stop.set()

    def _run(self) -> None:
        count = 0
        while not self._stop.is_set():
            try:
                lost = self.check_once(count)
            except Exception:  # the store did not answer: _watch_store decides when that means process 0 is lost
                lost = None
            else:
                self._answered = self.clock()
            if lost is not None:
                self._report(lost)
                return
            count += 1
            self._stop.wait(self.interval)

    def _watch_store(self) -> None:
        while not self._stop.wait(self.interval):
            silent = self.clock() - self._answered
            if silent > self.timeout:
                self._report(LostPeer(0, self.detector.hosts.get(0, "unknown"), silent))
                return


_sessions = iter(range(1 << 62))  # every process starts its watches in the same order, so the numbers agree


def distributed_client() -> Any | None:
    """jax.distributed's client, if this process joined a multi-process job and it has the calls we need."""
    import jax
    from jax._src import distributed  # the one place this module reaches inside JAX; see the module docstring

    client = distributed.global_state.client
    if jax.process_count() == 1 or client is None:
        return None
    if not all(hasattr(client, name) for name in ("key_value_set", "key_value_dir_get")):
        return None
    return client


@contextlib.contextmanager
def watch_peers(on_lost: Callable[[LostPeer], None], timeout: float | None = None) -> Iterator[PeerWatch | None]:
    """Watch the other processes of this job while the block runs (nothing to do for a single process)."""
    client = distributed_client()
    if client is None:
        yield None
        return
    import jax

    seconds = peer_timeout() if timeout is None else timeout
    watch = PeerWatch(client, jax.process_index(), jax.process_count(), next(_sessions), on_lost, seconds)
    with watching(watch):
        yield watch


@contextlib.contextmanager
def watching(watch: PeerWatch) -> Iterator[PeerWatch]:
    """Run `watch` while the block runs; a JAX runtime error in the block first waits for its verdict.

    A collective fails in the main thread as soon as a peer's socket closes, before the watch (or,
    for process 0, JAX's own abort) has seen the loss; the job should end with the line naming the
    lost process, not with this process's traceback. Other errors propagate at once.
    """
    import jax

    watch.start()
    try:
        yield watch
    except jax.errors.JaxRuntimeError:
        watch.await_loss()  # returns only if no peer was lost: then the error is this process's own
        raise
    finally:
        watch.stop()
