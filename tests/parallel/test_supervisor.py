"""The supervisor of a multi-process command: process 0's loss as one line, everything else passed through."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from scalelab.parallel.supervisor import COORDINATOR_FD_ENV, StderrFilter, coordinator_host

# What JAX's client prints when process 0's coordination service vanishes, just before it aborts.
SERVICE_GONE_LOG = (
    "E1202 15:55:51.992859   22264 coordination_service_agent.cc:289] Polled an error from coordination service "
    "(this can be an error from this or another task).\n"
    "F1202 15:55:51.992936   22264 client.h:80] Terminating process because the JAX distributed service detected "
    "fatal errors. absl::Status: UNAVAILABLE: Failed to send RPC to coordination service.\n"
    "*** Check failure stack trace: ***\n    @     0x7f9550a40634  absl::log_internal::LogMessage::SendToLog()\n"
)
# What JAX's client prints when the start-up wait for the other processes runs out (the only lines: the
# process never joined, so it never reported the coordinator's address).
STARTUP_TIMEOUT_LOG = (
    "F1204 12:41:27.535254   16669 client.h:80] Terminating process because the JAX distributed service detected "
    "fatal errors. This most likely indicates that another task died; see the other task logs for more details. "
    "absl::Status: DEADLINE_EXCEEDED: Deadline Exceeded\n\nRPC: /xla.coordination.CoordinationService/RegisterTask\n"
    "*** Check failure stack trace: ***\n    @     0x7fe6a9840634  absl::log_internal::LogMessage::SendToLog()\n"
)
# What process 0 prints when the coordinator's port is taken, before it crashes (SIGSEGV) or raises.
PORT_TAKEN_LOG = (
    "E1204 12:48:31.240478   19845 add_port.cc:83] Failed to add port to server: No address added out of total 1 "
    "resolved for '[::]:29977'\n"
)
# The same abort for an error the service reported about another task (not the service's own loss).
OTHER_TASK_LOG = (
    "E1202 15:55:51.992859   22264 coordination_service_agent.cc:289] Polled an error from coordination service "
    "(this can be an error from this or another task).\n"
    "F1202 15:55:51.992936   22264 client.h:80] Terminating process: DEADLINE_EXCEEDED: task 2 heartbeat timeout.\n"
    "*** Check failure stack trace: ***\n"
)


def _child(body: str, joined: bool = True) -> str:
    """A child program: once `joined`, it reports the coordinator address like parallel.distributed.initialize;
    then it runs body."""
    report = f"fd = int(os.environ.pop({COORDINATOR_FD_ENV!r})); os.write(fd, b'10.1.2.3:8476\\n'); os.close(fd)"
    return textwrap.dedent(f"""
        import os, signal, sys, time
        {report if joined else ""}
        sys.stderr.write("step 5 saved\\n" if {joined} else "waiting at the coordinator\\n"); sys.stderr.flush()
    """) + textwrap.dedent(body)


def _supervisor(child: str) -> subprocess.Popen:
    program = (
        "import sys\nfrom scalelab.parallel.supervisor import supervise\n"
        f"sys.exit(supervise(lambda host: f'LOST process 0 on {{host}}', 75, [sys.executable, '-c', {child!r}], "
        "describe_startup=lambda reason: f'NO START: {reason}'))"
    )
    return subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


def test_a_child_aborted_by_the_lost_coordination_service_becomes_one_line_and_the_retry_status():
    status, _, err = _finish(
        _supervisor(_child(f"sys.stderr.write({SERVICE_GONE_LOG!r}); sys.stderr.flush(); os.abort()"))
    )
    assert status == 75, err
    assert err == "step 5 saved\n\nLOST process 0 on 10.1.2.3\n"  # the trace held back, the line instead


def test_a_child_aborted_waiting_for_the_others_at_start_up_becomes_one_line_and_a_user_error():
    abort = f"sys.stderr.write({STARTUP_TIMEOUT_LOG!r}); sys.stderr.flush(); os.abort()"
    status, _, err = _finish(_supervisor(_child(abort, joined=False)))
    assert (status, err) == (2, "waiting at the coordinator\nNO START: timeout\n")
    crash = f"sys.stderr.write({PORT_TAKEN_LOG!r}); sys.stderr.flush(); os.kill(os.getpid(), signal.SIGSEGV)"
    status, _, err = _finish(_supervisor(_child(crash, joined=False)))
    assert (status, err) == (2, "waiting at the coordinator\n" + PORT_TAKEN_LOG + "NO START: port\n")
    # Once a process has joined, a deadline is no start-up problem: its output passes through as it was.
    status, _, err = _finish(_supervisor(_child(abort)))
    assert (status, err) == (128 + signal.SIGABRT, "step 5 saved\n" + STARTUP_TIMEOUT_LOG)


def test_any_other_ending_passes_through_with_its_output_and_status():
    status, out, err = _finish(_supervisor(_child("print('result'); sys.stderr.write('warning\\n'); sys.exit(3)")))
    assert (status, out, err) == (3, "result\n", "step 5 saved\nwarning\n")
    status, _, err = _finish(
        _supervisor(_child(f"sys.stderr.write({OTHER_TASK_LOG!r}); sys.stderr.flush(); os.abort()"))
    )
    assert status == 128 + signal.SIGABRT
    assert err == "step 5 saved\n" + OTHER_TASK_LOG  # held back, then released as it was


def test_signals_to_the_supervisor_reach_the_child_once():
    child = _child("""
        got = []
        def handler(signum, frame):
            got.append(signum)
            if len(got) == 1:
                time.sleep(0.5)  # a second delivery would arrive now
                print("child stopped by", signal.Signals(signum).name, len(got), flush=True)
                sys.exit(75)
        signal.signal(signal.SIGTERM, handler)
        print("ready", flush=True)
        time.sleep(30)
    """)
    supervisor = _supervisor(child)
    assert supervisor.stdout.readline() == "ready\n"
    supervisor.send_signal(signal.SIGTERM)
    status, out, _ = _finish(supervisor)
    assert (status, out) == (75, "child stopped by SIGTERM 1\n")


def test_the_child_dies_with_its_supervisor():
    supervisor = _supervisor(_child("print(os.getpid(), flush=True); time.sleep(60)"))
    child = int(supervisor.stdout.readline())
    supervisor.kill()
    supervisor.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(child, signal.SIGKILL)
    raise AssertionError("the child outlived its supervisor by 10 s")


def test_the_filter_holds_back_from_the_marker_line_and_knows_the_service_was_lost():
    written: list[bytes] = []
    stream = StderrFilter(written.append)
    stream.feed(b"\rstep 3/9")
    cut = SERVICE_GONE_LOG.index("\n") + 30  # absl's lines come whole; what follows may come later
    stream.feed(b"\rstep 4/9\n" + SERVICE_GONE_LOG.encode()[:cut])
    assert b"".join(written) == b"\rstep 3/9\rstep 4/9\n" and stream.holding and not stream.service_gone()
    stream.feed(SERVICE_GONE_LOG.encode()[cut:])
    assert stream.service_gone()
    stream.release()
    assert b"".join(written) == b"\rstep 3/9\rstep 4/9\n" + SERVICE_GONE_LOG.encode() and not stream.holding
    other = StderrFilter(written.append)
    other.feed(OTHER_TASK_LOG.encode())
    assert other.holding and not other.service_gone() and other.startup_failure() is None
    written.clear()
    startup = StderrFilter(written.append)
    startup.feed(b"waiting\n" + STARTUP_TIMEOUT_LOG.encode())  # no polled error first: the abort's line starts it
    assert written == [b"waiting\n"] and startup.startup_failure() == "timeout" and not startup.service_gone()


def test_the_coordinators_host_comes_from_its_address():
    assert coordinator_host("10.0.0.1:1234") == "10.0.0.1"
    assert coordinator_host("[fe80::1]:8476") == "fe80::1"
    assert coordinator_host("node-7.cluster:8476") == "node-7.cluster"
    assert coordinator_host("") == "unknown"
