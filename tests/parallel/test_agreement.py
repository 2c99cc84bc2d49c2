"""Every mesh trains the same model as one device: from the same initial state and data, the same losses."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from tests.parallel.helpers import Run, tiny_config, train_steps

# fp32 end to end: the meshes differ from one device only in the order of floating-point
# reductions, which after 5 Adam steps moves the loss by about 1e-6 (relative).
FP32_RTOL = 1e-5
# bf16 activations round differently once a matmul is split, so allow a visible but small gap.
BF16_RTOL = 2e-2

MESHES = {
    "data=8": {"data": 8},
    "fsdp=8": {"data": 1, "fsdp": 8},
    "tensor=8": {"data": 1, "tensor": 8},
    "pipeline=4 gpipe": {"data": 2, "pipeline": 4, "microbatches": 8, "schedule": "gpipe"},
    "pipeline=4 circular": {"data": 2, "pipeline": 4, "microbatches": 8, "schedule": "circular"},
    "data=2 tensor=2 pipeline=2": {"data": 2, "tensor": 2, "pipeline": 2, "microbatches": 4},
    "fsdp=2 tensor=2 pipeline=2": {"data": 1, "fsdp": 2, "tensor": 2, "pipeline": 2, "microbatches": 4},
}


@functools.cache
def single_device(dtype: str = "float32") -> Run:
    """The reference: the same config on one device of the eight."""
    return train_steps(tiny_config({"data": 1}, f"model.dtype={dtype}"), jax.devices()[:1])


@functools.cache
def mesh_run(name: str) -> Run:
    return train_steps(tiny_config(MESHES[name]))


def test_reference_run_learns():
    ref = single_device()
    assert ref.losses[-1] < ref.losses[0] - 0.1  # the comparison below is between runs that move
    assert np.all(np.isfinite(ref.losses))


@pytest.mark.parametrize("name", list(MESHES))
def test_mesh_matches_single_device(name):
    ref, run = single_device(), mesh_run(name)
    assert dict(run.trainer.mesh.shape) != dict(ref.trainer.mesh.shape)
    np.testing.assert_allclose(run.losses, ref.losses, rtol=FP32_RTOL)


def test_pipeline_with_grad_accum_and_remat_matches_single_device():
    # Gradient accumulation splits the batch into sequential steps; each step is then split
    # again into pipeline microbatches. Remat recomputes each layer in the backward pass.
    mesh = {"data": 2, "pipeline": 4, "microbatches": 4, "schedule": "circular", "repeats": 2}
    run = train_steps(tiny_config(mesh, "train.grad_accum=2", "model.remat=full"))
    assert run.trainer.pipeline.repeats == 2
    np.testing.assert_allclose(run.losses, single_device().losses, rtol=FP32_RTOL)


def test_bf16_mesh_stays_close_to_single_device():
    ref = single_device("bfloat16")
    run = train_steps(tiny_config(MESHES["data=2 tensor=2 pipeline=2"], "model.dtype=bfloat16"))
    np.testing.assert_allclose(run.losses, ref.losses, rtol=BF16_RTOL)


def test_fsdp_cuts_compiled_argument_memory_about_eightfold():
    # Arguments are the train state (params + Adam moments + step) and the batch.
    single, fsdp = single_device().memory["argument"], mesh_run("fsdp=8").memory["argument"]
    assert fsdp < single / 7
    data = mesh_run("data=8").memory["argument"]
    assert data > single * 0.95  # data parallelism replicates the state on every device
