"""One process of the two-process preemption test: SIGTERM to process 0 after a run's last step.

Run as `python -m tests.parallel.preemption_worker --coordinator HOST:PORT --num-processes 2
--process-id I`; prints one JSON line with what this process's guard saw.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time

from scalelab.parallel.distributed import add_arguments, initialize, initialize_kwargs

WAIT_S = 60.0


def main() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args()
    initialize(initialize_kwargs(args))

    import jax
    from jax.experimental import multihost_utils

    from scalelab.train.faults import PreemptionGuard

    with PreemptionGuard("sweep") as guard:
        during = [guard.requested() for _ in range(5)]  # a run's steps, 1 to 5 on each process
        multihost_utils.sync_global_devices("the run's last step")
        if jax.process_index() == 0:  # a scheduler's notice after that step; JAX's service owns SIGTERM here
            os.kill(os.getpid(), signal.SIGTERM)
        # Between runs a sweep asks once; the service needs a moment to agree on a sync point, so ask
        # until it answers (each answer is collective: both processes must stop at the same call).
        calls, deadline = 0, time.monotonic() + WAIT_S
        while True:
            calls += 1
            if guard.signalled_anywhere() or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        stopped = guard.signal_name
    print(json.dumps({"during": during, "stopped": stopped, "calls": calls}), flush=True)


if __name__ == "__main__":
    main()
