"""One process of the two-process test: join jax.distributed from CLI flags, train each mesh, report.

Run as `python -m tests.parallel.multihost_worker --coordinator HOST:PORT --num-processes 2
--process-id I --out DIR` with 2 simulated devices per process.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scalelab.parallel.distributed import add_arguments, initialize, initialize_kwargs

# Over 2 processes x 2 devices: the first splits the batch rows between the processes; in
# the second each process is one pipeline stage and both feed the whole batch.
MESHES = {
    "data=2 tensor=2": {"data": 2, "tensor": 2},
    "pipeline=2 data=2": {"data": 2, "pipeline": 2, "microbatches": 2},
}


def main() -> None:
    """Train every mesh for a few steps and write this process's losses and batch rows as JSON."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    initialize(initialize_kwargs(args))  # before anything touches a device

    import jax

    from tests.parallel.helpers import tiny_config, train_steps

    report = {"process_index": jax.process_index(), "device_count": jax.device_count(), "runs": {}}
    for name, mesh in MESHES.items():
        run = train_steps(tiny_config(mesh))
        report["runs"][name] = {"losses": run.losses.tolist(), "rows": list(run.trainer.data_shard())}
    (args.out / f"process_{jax.process_index()}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
