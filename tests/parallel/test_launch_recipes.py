"""The launch recipes in docs/recipes/ run as written, up to the point where a cluster would be needed.

Each recipe runs for real under bash with fake `srun`, `gcloud` and `scontrol` first on PATH: small
shell stubs that log how they were called and run the scalelab command they were given with
`--dry-run` added, in the environment SLURM or a TPU VM would give one of the job's processes.
The dry run's report must then show that process's place in the cluster, the mesh on the job's
devices and its batch rows; and a mesh that does not fit the cluster must fail with one line.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import jax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from scalelab.cli import main
from scalelab.parallel.config import MeshConfig
from scalelab.parallel.distributed import ENV_VARS
from scalelab.parallel.launch_plan import ProcessPlace, data_shard, expected_mesh
from scalelab.parallel.mesh import build_mesh
from scalelab.parallel.rules import logical_to_mesh, make_rules
from scalelab.scaling.sweep.plan import make_plan, shard_runs
from scalelab.scaling.sweep.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "docs" / "recipes"

SRUN = """#!/bin/bash
# Fake srun: log the call, drop srun's own options, run the command with --dry-run added (or exit $FAKE_SRUN_EXIT).
echo "srun $*" >> "$FAKE_LOG"
while [[ $# -gt 0 && $1 == -* ]]; do shift; done
if [[ -n "${FAKE_SRUN_EXIT:-}" ]]; then exit "$FAKE_SRUN_EXIT"; fi
exec "$@" --dry-run
"""

GCLOUD = """#!/bin/bash
# Fake gcloud: log the call, then run the ssh --command on this one "worker" with --dry-run added.
echo "gcloud $*" >> "$FAKE_LOG"
command=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --command=*) command=${1#--command=} ;;
    --command) command=$2; shift ;;
  esac
  shift
done
exec bash -c "$command --dry-run"
"""

SCONTROL = """#!/bin/bash
echo "scontrol $*" >> "$FAKE_LOG"
"""


@pytest.fixture
def launcher(tmp_path):
    """run(recipe, args, env) -> (completed process, the stubs' log lines), with the fake launchers on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", SRUN), ("gcloud", GCLOUD), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "launch.log"

    def run(recipe: str, args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, list[str]]:
        base = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("SLURM_", "TPU_", "MEGASCALE_", "OMPI_", "JAX_LOCAL_DEVICE_IDS"))
            and key not in ENV_VARS.values()
        }
        base.update(
            PATH=f"{bin_dir}{os.pathsep}{base['PATH']}",
            FAKE_LOG=str(log),
            SCALELAB_DIR=str(ROOT),
            JAX_PLATFORMS="cpu",
            XLA_FLAGS="--xla_force_host_platform_device_count=8",
        )
        base.update(env)
        done = subprocess.run(
            ["bash", str(RECIPES / recipe), *args], env=base, capture_output=True, text=True, timeout=120
        )
        return done, log.read_text().splitlines() if log.exists() else []

    return run


def sbatch_options(recipe: str) -> dict[str, str]:
    """The recipe's `#SBATCH --key=value` lines, so the fake job has the shape the script asks for."""
    text = (RECIPES / recipe).read_text()
    return dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", text, flags=re.MULTILINE))


def slurm_task(recipe: str, procid: int, nodes: int | None = None) -> dict[str, str]:
    """The variables srun sets for task `procid` of the job `recipe` asks for (optionally on fewer nodes)."""
    options = sbatch_options(recipe)
    per_node = int(options["ntasks-per-node"])
    nodes = nodes or int(options["nodes"])
    return {
        "SLURM_JOB_ID": "4242",
        "SLURM_NTASKS": str(nodes * per_node),
        "SLURM_PROCID": str(procid),
        "SLURM_LOCALID": str(procid % per_node),
        "SLURM_STEP_NODELIST": f"gpu[01-{nodes:02d}]",
    }


def report(stdout: str) -> dict[str, str]:
    """The dry run's `key: value` lines."""
    return dict(line.split(": ", 1) for line in stdout.splitlines() if ": " in line)


def test_slurm_gpu_job_task_13_of_32(launcher):
    done, calls = launcher("slurm-gpu.sbatch", [], slurm_task("slurm-gpu.sbatch", procid=13))
    assert done.returncode == 0, done.stderr
    lines = report(done.stdout)
    assert lines["cluster"] == "slurm"
    assert lines["jax.distributed.initialize"].startswith("no arguments: JAX reads the slurm cluster")
    wait = "up to 300 s for every process to reach the coordinator (SCALELAB_STARTUP_TIMEOUT)"
    assert lines["start-up wait"] == wait
    assert lines["process"] == "13 of 32"
    assert lines["devices"].startswith("32 = 32 process(es) x 1 ")
    # 4 nodes x 8 GPUs: fsdp=8 inside a node, data=4 across nodes; task 13 is node 1's GPU 5.
    assert lines["mesh"] == "pipeline=1 data=4 fsdp=8 tensor=1 on 32 devices; batch rows split over data x fsdp"
    assert lines["batch"] == "512 rows global, 16 per process; this process feeds rows 208:224 (data shard 13 of 32)"
    assert lines["run dir"] == "/shared/runs/small"
    assert calls == [
        "srun --kill-on-bad-exit=1 .venv/bin/scalelab train gpt-small --set mesh.data=4 --set mesh.fsdp=8 "
        "--run-dir /shared/runs/small"
    ]


def test_tpu_slice_worker_3_of_8(launcher):
    hosts = ",".join(f"t1v-n-{i}" for i in range(8))
    env = {"TPU_WORKER_HOSTNAMES": hosts, "TPU_WORKER_ID": "3", "TPU_CHIPS_PER_HOST_BOUNDS": "2,2,1"}
    # Extra flags reach scalelab on each host as given, spaces included (the last --run-dir wins).
    done, calls = launcher("tpu-slice.sh", ["my-pod", "us-east5-a", "--run-dir", "/mnt/shared/runs/small v2"], env)
    assert done.returncode == 0, done.stderr
    lines = report(done.stdout)
    assert lines["cluster"] == "tpu-pod"
    assert lines["jax.distributed.initialize"] == (
        "no arguments: JAX reads the tpu-pod cluster (coordinator: t1v-n-0, port chosen by JAX)"
    )
    assert lines["process"] == "3 of 8"
    assert lines["devices"] == "32 = 8 process(es) x 4 (TPU_CHIPS_PER_HOST_BOUNDS=2,2,1)"
    # tensor=4 over each host's chips, fsdp over the 8 hosts: host 3 feeds the 4th eighth of the batch.
    assert lines["mesh"] == "pipeline=1 data=1 fsdp=8 tensor=4 on 32 devices; batch rows split over fsdp"
    assert lines["batch"] == "512 rows global, 64 per process; this process feeds rows 192:256 (data shard 3 of 8)"
    assert lines["run dir"] == "/mnt/shared/runs/small v2"
    assert len(calls) == 1 and calls[0].startswith(
        "gcloud compute tpus tpu-vm ssh my-pod --zone us-east5-a --worker=all"
    )


def test_sweep_array_task_3_runs_shard_3_of_8(launcher):
    count = int(sbatch_options("slurm-sweep-array.sbatch")["array"].split("-")[1]) + 1
    env = {"SLURM_JOB_ID": "4245", "SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": str(count)}
    env.update(SLURM_NTASKS="1", SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_STEP_NODELIST="gpu07")
    done, calls = launcher("slurm-sweep-array.sbatch", [], env)
    assert done.returncode == 0, done.stderr
    lines = report(done.stdout)
    assert lines["cluster"] == "none" and lines["process"] == "0 of 1"  # one task: one process, all its GPUs
    assert "start-up wait" not in lines  # nothing to wait for
    assert lines["devices"].startswith("8 = 1 process(es) x 8 ")
    plan = make_plan(load_spec("pod"))
    runs = shard_runs(plan.runs, 3, 8)
    assert runs and lines["sweep"] == f"pod, shard 3/8: {len(runs)} of {len(plan.runs)} runs"
    assert lines["sweep dir"] == "/shared/sweeps/pod"
    for run in runs:  # the spec's mesh (fsdp=-1) takes all 8 devices; one process feeds the whole batch
        rows = run.batch_size
        assert lines[f"run {run.name}"] == f"run dir: /shared/sweeps/pod/runs/{run.name}"
        assert f"run {run.name}: mesh: pipeline=1 data=1 fsdp=8 tensor=1 on 8 devices;" in done.stdout
        assert f"run {run.name}: batch: {rows} rows global, {rows} per process; this process feeds rows 0:{rows}" in (
            done.stdout
        )
    assert calls == ["srun .venv/bin/scalelab sweep run pod --sweep-dir /shared/sweeps/pod --shard 3/8"]


def test_a_mesh_that_does_not_fit_the_cluster_fails_with_one_line(launcher):
    # The recipe's data=4 x fsdp=8 wants 32 GPUs; the job got 2 nodes (16).
    done, calls = launcher("slurm-gpu.sbatch", [], slurm_task("slurm-gpu.sbatch", procid=5, nodes=2))
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "scalelab train: error: mesh: pipeline=1 x data=4 x fsdp=8 x tensor=1 has 32 devices but 16 are available; "
        "make the product match or set one axis to -1"
    ]
    assert not any(call.startswith("scontrol") for call in calls)  # a user error is not requeued


def test_a_stop_at_the_time_limit_requeues_the_job(launcher):
    env = {**slurm_task("slurm-gpu.sbatch", procid=0), "FAKE_SRUN_EXIT": "75"}
    done, calls = launcher("slurm-gpu.sbatch", [], env)
    assert done.returncode == 75
    assert calls[-1] == "scontrol requeue 4242"


def slurm_env(monkeypatch, tasks: int, procid: int) -> None:
    for key, value in {"SLURM_JOB_ID": "7", "SLURM_NTASKS": str(tasks), "SLURM_PROCID": str(procid)}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SLURM_LOCALID", str(procid % 8))
    monkeypatch.setenv("SLURM_STEP_NODELIST", "gpu[01-04]")


def test_a_batch_that_does_not_split_over_the_processes_is_the_real_runs_error(monkeypatch, capsys):
    slurm_env(monkeypatch, tasks=32, procid=3)
    argv = ["train", "gpt-small", "--set", "mesh.data=4", "--set", "mesh.fsdp=8", "--set", "train.batch_size=48"]
    assert main([*argv, "--dry-run"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "scalelab train: error: train.batch_size (48) is not divisible by mesh.data x mesh.fsdp (4 x 8 = 32), "
        "over which the batch is sharded; change train.batch_size (or the mesh's data and fsdp sizes)"
    ]


def test_a_mesh_that_does_not_divide_the_model_is_the_real_runs_error(monkeypatch, capsys):
    slurm_env(monkeypatch, tasks=32, procid=0)
    argv = ["train", "gpt-small", "--set", "mesh.data=-1", "--set", "mesh.tensor=8", "--dry-run"]
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "(12) is not divisible by mesh.tensor (8)" in err[0]


def test_explicit_flags_and_a_device_hint(capsys, monkeypatch):
    monkeypatch.setenv("SCALELAB_STARTUP_TIMEOUT", "1200")
    argv = ["train", "gpt-tiny", "--coordinator", "node0:1234", "--num-processes", "4", "--process-id", "2"]
    assert main([*argv, "--devices-per-process", "2", "--set", "mesh.tensor=2", "--dry-run"]) == 0
    lines = report(capsys.readouterr().out)
    assert lines["cluster"] == "flags"
    assert lines["jax.distributed.initialize"] == "coordinator_address='node0:1234', num_processes=4, process_id=2"
    assert lines["start-up wait"].startswith("up to 1200 s ")
    assert lines["devices"] == "8 = 4 process(es) x 2 (--devices-per-process)"
    assert lines["mesh"] == "pipeline=1 data=4 fsdp=1 tensor=2 on 8 devices; batch rows split over data"
    assert lines["batch"] == "16 rows global, 4 per process; this process feeds rows 8:12 (data shard 2 of 4)"


def test_distributed_without_a_cluster_says_what_to_set(capsys):
    assert main(["train", "gpt-tiny", "--distributed", "--dry-run"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "--distributed, but the environment names no cluster" in err[0]


@pytest.mark.parametrize(
    ("mesh", "per_process"),
    [
        ({"data": 2, "fsdp": 2, "tensor": 2}, 2),  # tensor inside a process: 4 data shards
        ({"pipeline": 2, "data": 2, "tensor": 2}, 4),  # stages across processes: both feed the same rows
        ({"data": 2, "fsdp": 4}, 2),
        ({"data": 1, "fsdp": 8}, 1),
    ],
)
def test_the_dry_runs_data_shards_match_the_real_shardings_rows(mesh, per_process):
    """Processes own consecutive devices; the rows each would feed under the real sharding are the dry run's."""
    cfg = MeshConfig(**mesh)
    devices = jax.devices()
    real = build_mesh(cfg)
    sharding = NamedSharding(real, logical_to_mesh(PartitionSpec("batch", "length"), make_rules(None), real))
    rows = 32
    owner = {device.id: devices.index(device) // per_process for device in devices}
    spans: dict[int, set[tuple[int, int]]] = {}
    for device, index in sharding.devices_indices_map((rows, 16)).items():
        spans.setdefault(owner[device.id], set()).add(index[0].indices(rows)[:2])
    process_count = len(devices) // per_process
    distinct = sorted({(min(a for a, _ in s), max(b for _, b in s)) for s in spans.values()})
    for process in range(process_count):
        place = ProcessPlace("flags", None, "", process_count, process)
        layout = expected_mesh(cfg, len(devices), place)
        index, count = data_shard(layout, place, per_process, rows)
        mine = (min(a for a, _ in spans[process]), max(b for _, b in spans[process]))
        assert (index, count) == (distinct.index(mine), len(distinct))


def test_the_launch_page_links_every_recipe():
    page = (ROOT / "docs" / "launch.md").read_text()
    recipes = sorted(path.name for path in RECIPES.iterdir())
    assert recipes == ["slurm-gpu.sbatch", "slurm-sweep-array.sbatch", "tpu-slice.sh"]
    for name in recipes:
        assert f"](recipes/{name})" in page, f"docs/launch.md does not link docs/recipes/{name}"


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        (["mesh.microbatches=4"], "mesh.microbatches (4) only applies with mesh.pipeline > 1; "),
        (["mesh.pipeline=8"], "model.n_layers (12) is not divisible by mesh.pipeline (8); "),
    ],
)
def test_pipeline_settings_that_do_not_fit_are_the_real_runs_error(monkeypatch, capsys, overrides, error):
    slurm_env(monkeypatch, tasks=32, procid=0)
    argv = ["train", "gpt-small", *(arg for value in overrides for arg in ("--set", value)), "--dry-run"]
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"scalelab train: error: {error}")


def test_one_process_per_node_with_its_gpus_named(monkeypatch, capsys):
    # docs/parallelism.md's variant: --ntasks-per-node=1, each process given its node's 8 GPUs, data over DCN.
    slurm_env(monkeypatch, tasks=4, procid=2)
    monkeypatch.setenv("JAX_LOCAL_DEVICE_IDS", "0,1,2,3,4,5,6,7")
    argv = ["train", "gpt-small", "--set", "mesh.data=4", "--set", "mesh.fsdp=8", "--set", "mesh.dcn={data: 4}"]
    assert main([*argv, "--dry-run"]) == 0
    lines = report(capsys.readouterr().out)
    assert lines["devices"] == "32 = 4 process(es) x 8 (JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7)"
    assert lines["batch"] == "512 rows global, 128 per process; this process feeds rows 256:384 (data shard 2 of 4)"
