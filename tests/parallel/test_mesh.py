"""Meshes from config, across slices, and the early errors for meshes that cannot work."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from scalelab.model.config import ConfigError
from scalelab.parallel.config import MeshConfig
from scalelab.parallel.mesh import MESH_AXES, build_mesh, device_grid, split_dcn
from scalelab.train.config_io import config_from_dict
from scalelab.train.trainer import Trainer
from tests.parallel.helpers import tiny_config


def test_minus_one_takes_the_remaining_devices():
    mesh = build_mesh(MeshConfig(data=-1, tensor=2, pipeline=2))
    assert dict(mesh.shape) == {"pipeline": 2, "data": 2, "fsdp": 1, "tensor": 2}
    assert mesh.axis_names == MESH_AXES
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_mesh_over_a_subset_of_devices():
    mesh = build_mesh(MeshConfig(data=1, fsdp=2), jax.devices()[:2])
    assert mesh.devices.size == 2


@dataclasses.dataclass(frozen=True)
class FakeDevice:
    """Just what the mesh construction reads from a device."""

    id: int
    slice_index: int
    process_index: int = 0
    platform: str = "cpu"
    device_kind: str = "cpu"


def two_slices() -> list[FakeDevice]:
    return [FakeDevice(i, slice_index=i // 4, process_index=i // 4) for i in range(8)]


def test_dcn_part_of_an_axis_varies_slowest():
    sizes = {"pipeline": 1, "data": 4, "fsdp": 1, "tensor": 2}
    grid = device_grid(sizes, two_slices(), {"data": 2})
    slices = np.vectorize(lambda d: d.slice_index)(grid)[0, :, 0, :]  # (data, tensor)
    # Only the data axis crosses slices; each tensor pair and half the data axis stay in one slice.
    np.testing.assert_array_equal(slices, [[0, 0], [0, 0], [1, 1], [1, 1]])


def test_slices_go_to_the_data_axis_by_default():
    sizes = {"pipeline": 2, "data": 2, "fsdp": 1, "tensor": 2}
    grid = device_grid(sizes, two_slices())
    slices = np.vectorize(lambda d: d.slice_index)(grid)
    assert (slices[:, 0] == 0).all() and (slices[:, 1] == 1).all()


@pytest.mark.parametrize(
    ("sizes", "dcn", "message"),
    [
        ({"data": 1, "fsdp": 8}, None, r"the devices form 2 slices but mesh\.data \(1\) is not divisible by 2"),
        ({"data": 2, "fsdp": 4}, {"data": 4}, r"mesh\.dcn\.data \(4\) does not divide mesh\.data \(2\)"),
        ({"data": 4, "fsdp": 2}, {"data": 2, "fsdp": 2}, r"mesh\.dcn spans 4 slices but the devices form 2"),
    ],
)
def test_bad_dcn_layouts(sizes, dcn, message):
    with pytest.raises(ConfigError, match=message):
        split_dcn({"pipeline": 1, "tensor": 1, **sizes}, dcn, granules=2)


@pytest.mark.parametrize(
    ("mesh", "overrides", "message"),
    [
        ({"data": 3}, (), r"data=3 .* has 3 devices but 8 are available"),
        (
            {"data": -1, "tensor": 3},
            (),
            r"the fixed axes multiply to 3, which does not divide the 8 devices; change mesh\.tensor$",
        ),
        ({"data": -1, "fsdp": 3, "tensor": 2}, (), r"devices; change mesh\.fsdp, mesh\.tensor$"),
        (
            {"data": 1, "tensor": 8},
            ("model.n_heads=4",),
            r"model\.n_kv_heads \(model\.n_heads if unset\) \(4\) is not divisible by mesh\.tensor \(8\)",
        ),
        (
            {"data": 2, "tensor": 4},
            ("model.n_kv_heads=2",),
            r"model\.n_kv_heads \(model\.n_heads if unset\) \(2\) is not divisible by mesh\.tensor \(4\)",
        ),
        (
            {"data": 1, "tensor": 8},
            ("model.d_ff=100",),
            r"model\.d_ff \(ffn_multiplier x d_model if unset\) \(100\) is not divisible by mesh\.tensor \(8\)",
        ),
        (
            {"data": 1, "tensor": 8},
            ("model.vocab_size=100",),
            r"model\.vocab_size \(100\) is not divisible by mesh\.tensor \(8\)",
        ),
        (
            {"data": 1, "fsdp": 8},
            ("model.d_model=36", "model.n_heads=2"),
            r"model\.d_model \(36\) is not divisible by mesh\.fsdp \(8\)",
        ),
        (
            {"data": 4, "pipeline": 2},
            ("model.n_layers=3",),
            r"model\.n_layers \(3\) is not divisible by mesh\.pipeline \(2\)",
        ),
        (
            {"data": 2, "fsdp": 4},
            ("train.batch_size=12",),
            r"train\.batch_size \(12\) is not divisible by mesh\.data x mesh\.fsdp \(2 x 4 = 8\), over which the "
            r"batch is sharded; change train\.batch_size \(or the mesh's data and fsdp sizes\)$",
        ),
        (
            {"data": 4, "pipeline": 2, "microbatches": 8},
            (),
            r"train\.batch_size / mesh\.microbatches \(2\) is not divisible by mesh\.data \(4\)",
        ),
        (
            {"data": 4, "pipeline": 2, "microbatches": 3},
            (),
            r"train\.batch_size \(16\) is not divisible by mesh\.microbatches \(3\)",
        ),
        ({"data": 8, "microbatches": 4}, (), r"mesh\.microbatches \(4\) only applies with mesh\.pipeline > 1"),
    ],
)
def test_bad_meshes_fail_early_naming_both_numbers(mesh, overrides, message):
    with pytest.raises(ConfigError, match=message):
        Trainer.build(tiny_config(mesh, *overrides))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("mesh.dcn={model: 2}", r"mesh\.dcn\.model: not a mesh axis"),
        ("mesh.dcn={data: 0}", r"mesh\.dcn\.data must be a positive integer"),
        ("mesh.repeats=0", r"mesh\.repeats must be positive"),
    ],
)
def test_mesh_config_keys_are_validated(override, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({}, [override])
