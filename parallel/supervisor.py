"""Process 0's loss in a multi-process job: one line and a requeue-able exit, not JAX's C++ abort.

JAX's coordination service lives inside process 0. When process 0 dies, each other process's JAX
client sees its error poll fail and aborts the whole process from a C++ thread (SIGABRT, an absl
stack trace, exit 134) within about a second, before any Python code of that process can run.
(`missed_heartbeat_callback`, the client's hook for this, cannot be used from Python in jaxlib
0.10: calling it fails to convert its absl::Status argument and terminates the process anyway.)
So the line that reports the loss has to come from another process: a multi-process `scalelab
train` or `scalelab sweep run` runs its work in a child process and stays as its supervisor.

The supervisor passes the child's stdout through untouched and its stderr through as it comes (a
pseudo-terminal when its own stderr is one, so progress bars still draw). It forwards the
signals a scheduler or a terminal sends, and the child dies with it (PR_SET_PDEATHSIG on Linux).
When the child's stderr shows JAX's coordination-service error, the supervisor holds back what
follows; if the child then dies of JAX's abort with the service unreachable, the supervisor
prints one line naming process 0 and exits with the "try again" status. The same abort ends a
process that waited at start-up for the others longer than its timeout (a wrong address, a
process that never started), and process 0 crashes when the coordinator's port is taken: each
becomes one line too, a user error. Any other ending passes through unchanged, held-back output
included.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable

SUPERVISED_ENV = "SCALELAB_SUPERVISED"  # set in the child: it does the work itself
COORDINATOR_FD_ENV = "SCALELAB_COORDINATOR_FD"  # the child writes the coordinator's address here
# The first line JAX's client logs when the coordination service reports an error, and the text it
# adds when the service itself cannot be reached (process 0 is gone). Both are XLA's log messages;
# if a later JAX words them differently, the child's own output and exit pass through as they are.
ERROR_POLLED = b"Polled an error from coordination service"
SERVICE_GONE = (b"Failed to send RPC to coordination service", b"Socket closed")
# The abort's own line (the only one when the process never joined), and what it names when the
# start-up registration, which waits for every process, ran out of time.
ABORTING = b"Terminating process because the JAX distributed service detected fatal errors"
STARTUP_DEADLINE = (b"DEADLINE_EXCEEDED", b"CoordinationService/RegisterTask")
MARKERS = (ERROR_POLLED, ABORTING)
# gRPC's line in process 0 when the coordinator cannot listen on its port, before the process crashes
# (or raises). It passes through: only the crash that may follow needs the supervisor's line.
PORT_TAKEN = b"Failed to add port to server"
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
PR_SET_PDEATHSIG = 1


def supervised() -> bool:
    """Whether this process is a supervisor's child (and so does the work itself)."""
    return os.environ.get(SUPERVISED_ENV) == "1"


def report_coordinator(address: str) -> None:
    """In a supervised child: tell the supervisor the coordinator's address (process 0's host)."""
    fd = os.environ.pop(COORDINATOR_FD_ENV, None)
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.write(int(fd), address.encode() + b"\n")
        os.close(int(fd))


def coordinator_host(address: str) -> str:
    """The host part of HOST:PORT (IPv6 brackets removed), or "unknown"."""
    host = address.rpartition(":")[0].strip("[]")
    return host or "unknown"


class StderrFilter:
    """Passes the child's stderr through, holding back everything from JAX's coordination error or abort on.

    absl writes each log line with one write() (under PIPE_BUF, so atomic on a pipe), so the
    marker arrives whole within one chunk.
    """

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self.write = write
        self.held = b""
        self.port_taken = False

    @property
    def holding(self) -> bool:
        return bool(self.held)

    def feed(self, chunk: bytes) -> None:
        self.port_taken = self.port_taken or PORT_TAKEN in chunk
        if self.held:
            self.held += chunk
            return
        at = min((found for found in map(chunk.find, MARKERS) if found >= 0), default=-1)
        if at < 0:
            self.write(chunk)
            return
        start = chunk.rfind(b"\n", 0, at) + 1  # hold back the whole log line the marker is on
        self.write(chunk[:start])
        self.held = chunk[start:]

    def service_gone(self) -> bool:
        """Whether the held-back text says the coordination service could not be reached."""
        return any(marker in self.held for marker in SERVICE_GONE)

    def startup_failure(self) -> str | None:
        """Why the child's stderr says it could not join the job: "port" (the coordinator could not listen on
        it), "timeout" (the wait for the other processes ran out), or None."""
        if self.port_taken:
            return "port"
        if all(marker in self.held for marker in STARTUP_DEADLINE):
            return "timeout"
        return None

    def release(self) -> None:
        """Write out what was held back (the child did not end by the service's loss)."""
        self.write(self.held)
        self.held = b""


def die_with_parent() -> None:
    """In the child, before exec: be killed when the supervisor dies (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _stderr_pipe() -> tuple[int, int]:
    """(read end, child's end): a pseudo-terminal of the same size when our stderr is a terminal."""
    if sys.platform != "win32" and os.isatty(2):
        import fcntl
        import pty
        import termios

        reader, writer = pty.openpty()
        with contextlib.suppress(OSError):
            fcntl.ioctl(writer, termios.TIOCSWINSZ, fcntl.ioctl(2, termios.TIOCGWINSZ, b"\0" * 8))
        return reader, writer
    return os.pipe()


def supervise(
    describe_loss: Callable[[str], str],
    lost_status: int,
    command: list[str] | None = None,
    *,
    describe_startup: Callable[[str], str],
) -> int:
    """Run `command` (this command again) as a supervised child; its exit status, `lost_status` or 2.

    `describe_loss(host)` is the line printed when the child died because process 0 (on `host`)
    is gone; `describe_startup(reason)` when it died before it joined the job (status 2, a user
    error: StderrFilter.startup_failure names the reasons). The child runs in its own session, so
    a terminal's Ctrl-C reaches it once, through the supervisor.
    """
    command = [sys.executable, "-m", "scalelab", *sys.argv[1:]] if command is None else command
    reader, writer = _stderr_pipe()
    address_reader, address_writer = os.pipe()
    env = {**os.environ, SUPERVISED_ENV: "1", COORDINATOR_FD_ENV: str(address_writer)}
    sys.stdout.flush()
    sys.stderr.flush()
    child = subprocess.Popen(
        command,
        env=env,
        stderr=writer,
        pass_fds=(address_writer,),
        start_new_session=True,
        preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
    )
    os.close(writer)
    os.close(address_writer)
    previous = {sig: signal.signal(sig, lambda signum, _: child.send_signal(signum)) for sig in FORWARDED}
    out = sys.stderr.buffer

    def write(data: bytes) -> None:
        out.write(data)
        out.flush()

    stream = StderrFilter(write)
    try:
        while True:
            try:
                chunk = os.read(reader, 1 << 16)
            except InterruptedError:
                continue
            except OSError:  # a pseudo-terminal whose child side closed reads as EIO
                chunk = b""
            if not chunk:
                break
            stream.feed(chunk)
        status = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(reader)
    with os.fdopen(address_reader, "rb") as channel:
        address = channel.read().decode(errors="replace").strip()
    reason = stream.startup_failure() if status < 0 and not address else None
    if reason is not None:
        write(f"{describe_startup(reason)}\n".encode())  # what was held back is JAX's stack trace
        return 2
    if status < 0 and stream.holding and stream.service_gone():
        write(f"\n{describe_loss(coordinator_host(address))}\n".encode())
        return lost_status
    stream.release()
    return status if status >= 0 else 128 - status
