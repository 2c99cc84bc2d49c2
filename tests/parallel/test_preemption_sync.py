"""A preemption notice to a multi-process job after a run's last step is seen between runs, by every process."""

from __future__ import annotations

import json

from tests.parallel.processes import run_workers


def test_a_sigterm_after_the_last_step_stops_every_process_at_the_same_point_between_runs():
    logs = run_workers("tests.parallel.preemption_worker", devices=1, timeout=180)
    seen = [json.loads(next(line for line in log.splitlines() if line.startswith("{"))) for log in logs]
    for process in seen:
        assert process["during"] == [False] * 5  # no notice yet: the run's steps go on
        assert process["stopped"] == "preemption notice", process  # neither guard saw the signal itself
    assert seen[0]["calls"] == seen[1]["calls"]  # both stop at the same collective call
