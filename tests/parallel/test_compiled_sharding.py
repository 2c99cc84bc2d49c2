"""The compiled train step on a data x fsdp x tensor mesh is sharded as the logical-axis rules say.

The shardings a trainer asks for are only requests: XLA's partitioner may still replicate an
activation, gather a whole weight or move data in ways no rule asked for. These tests read the
partitioned program itself (`compiled.as_text()`, where every shape is a per-device shape) and
check it against what parallel/rules.py computes for the same config:

- parameters and optimizer state enter and leave the step with the rule-given shardings;
- every matmul runs on per-device pieces: no dimension of an axis the rules split appears whole
  or split another way, and the attention and MLP matmuls have the per-device shapes;
- the only collectives are FSDP all-gathers of parameter shards and all-reduces of gradients,
  tensor-parallel partial sums and scalars: never an all-gather of an activation.

Which axis a dimension belongs to is read from its size. The config below is chosen so that
each size an activation axis can take (whole, or split 2, 4 or 8 ways) differs from every size
that a parameter or a correctly split activation has. Each check is also run on a program
compiled with a deliberately wrong rule, to show that it reports the difference.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from scalelab.data import make_source
from scalelab.parallel.rules import MeshAxes, logical_to_mesh, make_rules
from scalelab.train.trainer import Trainer
from tests.parallel.helpers import FAST_COMPILE, tiny_config

MESH = {"data": 2, "fsdp": 2, "tensor": 2}
# Per device: 3 rows of 14 tokens (42), 5 of 10 heads of 8 (40), 88 of 176 hidden units, 144 of
# 288 vocabulary entries, 32 of 64 model dimensions in a stored weight. None of these numbers
# is the size of another axis, whole or split another way.
SIZES = (
    "train.batch_size=12",
    "train.seq_len=14",
    "model.max_seq_len=14",
    "model.n_layers=2",
    "model.d_model=64",
    "model.n_heads=10",
    "model.head_dim=8",
    "model.d_ff=176",
    "model.vocab_size=288",
)
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute", "all-to-all", "collective-broadcast")

Shape = tuple[int, ...]


# --- Reading the compiled program -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Instruction:
    """One HLO instruction: its result shapes (several for a tuple), operand names and text."""

    name: str
    opcode: str
    shapes: tuple[Shape, ...]
    operands: tuple[str, ...]
    line: str


# `%name = <type> opcode(operands), attributes`; the type may be a tuple `(f32[2,3]{1,0}, f32[])`.
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+) = (?P<type>.+?) (?P<opcode>[a-z][\w\-]*)\((?P<args>.*)$"
)
_ARRAY = re.compile(r"\b[a-z][a-z0-9]*\[([0-9,]*)\]")
_OPERAND = re.compile(r"%([\w.\-]+)")


def _shapes(hlo_type: str) -> tuple[Shape, ...]:
    return tuple(tuple(int(d) for d in dims.split(",") if d) for dims in _ARRAY.findall(hlo_type))


def parse_hlo(text: str) -> dict[str, Instruction]:
    """Every instruction of every computation, by name (names are unique within an HLO module)."""
    instructions = {}
    for line in text.splitlines():
        match = _INSTRUCTION.match(line)
        if match is None:
            continue
        # Operands come before the first `)` that closes the call; attributes such as
        # to_apply=%region name computations, not operands.
        args = match["args"].split(")", 1)[0]
        short = line.split(", metadata=")[0].strip()
        instructions[match["name"]] = Instruction(
            match["name"], match["opcode"], _shapes(match["type"]), tuple(_OPERAND.findall(args)), short
        )
    return instructions


def operand_shapes(op: Instruction, program: Mapping[str, Instruction]) -> list[Shape]:
    return [shape for name in op.operands for shape in program[name].shapes]


# --- What the rules promise ---------------------------------------------------------------------


def _ways(axes: str | tuple[str, ...] | None, mesh) -> int:
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    return math.prod(mesh.shape[axis] for axis in axes)


def _groupings(shape: Shape) -> Iterator[Shape]:
    """`shape` and every shape made by merging runs of neighbouring dimensions (XLA flattens freely)."""
    for cuts in itertools.product((False, True), repeat=max(len(shape) - 1, 0)):
        out, run = [], shape[0] if shape else None
        for dim, merge in zip(shape[1:], cuts, strict=True):
            if merge:
                run *= dim
            else:
                out.append(run)
                run = dim
        yield tuple(out + ([run] if run is not None else []))


@dataclasses.dataclass
class Plan:
    """Per-device sizes and shapes that the rules give one config on one mesh."""

    local: dict[str, int]  # activation axis (or merge of two) -> its per-device size
    wrong: dict[int, str]  # size -> the axis that has it when split other than as the rules say
    batch_sizes: set[int]  # every size a batch (or batch x length) dimension can take: marks an activation
    shards: dict[str, set[Shape]]  # parameter path -> its stored per-device shapes (one layer or the stack)
    gathered: dict[str, set[Shape]]  # parameter path -> its shapes once FSDP has gathered it for a matmul


def _leaves(tree: Any, leaf_type: type) -> dict[str, Any]:
    leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: isinstance(x, leaf_type))
    return {jax.tree_util.keystr(path): leaf for path, leaf in leaves}


def plan(trainer: Trainer, rules: Mapping[str, MeshAxes]) -> Plan:
    """What `rules` say about `trainer`'s config and mesh (the trainer itself may follow other rules)."""
    mesh, cfg = trainer.mesh, trainer.cfg
    axes = _leaves(trainer.model.axes, PartitionSpec)
    shapes = {path: tuple(leaf.shape) for path, leaf in _leaves(trainer.model.shapes, jax.ShapeDtypeStruct).items()}
    # Global sizes: the batch axes from the train config, the rest from the parameters that carry them.
    size = {"batch": cfg.train.batch_size, "length": cfg.train.seq_len}
    for path, spec in axes.items():
        size.update((name, dim) for name, dim in zip(spec, shapes[path], strict=True) if name)
    # How many ways the rules split each axis of an activation (fsdp, spent on the batch, leaves embed whole).
    ways = {}
    for layout in (("batch", "length", "heads", "head_dim"), ("batch", "length", "mlp"), ("batch", "length", "vocab")):
        for name, mesh_axes in zip(layout, logical_to_mesh(PartitionSpec(*layout), rules, mesh), strict=True):
            ways[name] = _ways(mesh_axes, mesh)
    split = {  # activation dimensions, and the two merges of them that XLA makes
        "batch": (size["batch"], ways["batch"]),
        "length": (size["length"], ways["length"]),
        "batch x length": (size["batch"] * size["length"], ways["batch"] * ways["length"]),
        "heads": (size["heads"], ways["heads"]),
        "heads x head_dim": (size["heads"] * size["head_dim"], ways["heads"] * ways["head_dim"]),
        "mlp": (size["mlp"], ways["mlp"]),
        "vocab": (size["vocab"], ways["vocab"]),
    }
    local = {name: whole // n for name, (whole, n) in split.items()}

    gather_axes = set(rules["batch"])  # FSDP gathers a weight over the axes the batch is split on
    shards, gathered, param_dims = {}, {}, set()
    for path, spec in axes.items():
        shape = shapes[path]
        mesh_spec = tuple(logical_to_mesh(spec, rules, mesh))
        mesh_spec += (None,) * (len(shape) - len(mesh_spec))
        kept = [tuple(a for a in ((s,) if isinstance(s, str) else s or ()) if a not in gather_axes) for s in mesh_spec]
        stored = tuple(d // _ways(s, mesh) for d, s in zip(shape, mesh_spec, strict=True))
        compute = tuple(d // _ways(s, mesh) for d, s in zip(shape, kept, strict=True))
        forms = [(stored, compute)]
        if tuple(spec)[:1] == ("layers",):  # a stacked weight is also used one layer at a time
            forms.append((stored[1:], compute[1:]))
        shards[path] = {g for s, _ in forms for g in _groupings(s)}
        gathered[path] = {g for _, c in forms for g in _groupings(c)}
        param_dims.update(stored + compute)

    legal = {1, *param_dims, *local.values()}
    splits = {math.prod(c) for r in range(len(mesh.shape) + 1) for c in itertools.combinations(mesh.shape.values(), r)}
    wrong: dict[int, str] = {}
    for name, (whole, expected) in split.items():
        for n in sorted(splits):
            if n != expected and whole % n == 0 and whole // n not in legal:
                how = "whole" if n == 1 else f"split {n} ways"
                wrong.setdefault(whole // n, f"{name} {how}, where the rules split it {expected} ways")
    batch_sizes = {
        whole // n for name in ("batch", "batch x length") for n in splits if (whole := split[name][0]) % n == 0
    }
    if batch_sizes & param_dims:
        raise ValueError(f"batch sizes {sorted(batch_sizes & param_dims)} are also parameter sizes: choose others")
    return Plan(local, wrong, batch_sizes, shards, gathered)


# --- The checks: each returns the differences it finds, as lines to print --------------------------


def state_differences(trainer: Trainer, compiled: Any, rules: Mapping[str, MeshAxes]) -> list[str]:
    """Parameter and optimizer-state leaves whose sharding into or out of the step is not the rules'."""
    mesh = trainer.mesh
    expected = {
        path: NamedSharding(mesh, logical_to_mesh(spec, rules, mesh))
        for path, spec in _leaves(trainer.model.axes, PartitionSpec).items()
    }
    param_shapes = {path: leaf.shape for path, leaf in _leaves(trainer.model.shapes, jax.ShapeDtypeStruct).items()}
    state_shapes = {path: leaf.shape for path, leaf in _leaves(trainer.abstract_state(), jax.ShapeDtypeStruct).items()}
    differences = []
    for where, state in (("into", compiled.input_shardings[0][0]), ("out of", compiled.output_shardings[0])):
        shardings = _leaves(state, jax.sharding.Sharding)
        assert shardings.keys() == state_shapes.keys()
        for path, sharding in shardings.items():
            shape = state_shapes[path]
            # An optimizer leaf shaped like the parameter its path ends with (Adam's mu and nu) is
            # sharded like it; the rest (step counters) are replicated.
            owners = [p for p in expected if path.endswith(p) and param_shapes[p] == shape]
            owner = max(owners, key=len, default=None)
            want = expected[owner] if owner else NamedSharding(mesh, PartitionSpec())
            if not sharding.is_equivalent_to(want, len(shape)):
                differences.append(f"{path} {where} the step: {sharding.spec}, the rules say {want.spec}")
    return differences


def matmul_differences(program: Mapping[str, Instruction], expect: Plan) -> list[str]:
    """Matmuls with a dimension of an activation axis split other than the rules say."""
    differences = []
    for op in program.values():
        if op.opcode in ("dot", "convolution"):
            dims = {d for shape in (*operand_shapes(op, program), *op.shapes) for d in shape}
            if bad := sorted(dims & expect.wrong.keys()):
                differences.append(f"{op.line}  <- " + "; ".join(f"{d}: {expect.wrong[d]}" for d in bad))
    return differences


def matmuls(program: Mapping[str, Instruction], result: Shape, operand: Shape | None = None) -> list[str]:
    """Matmuls whose result (and one of whose operands) has this shape, or a flattening of it."""
    results, operands = set(_groupings(result)), set(_groupings(operand)) if operand else None
    return [
        op.line
        for op in program.values()
        if op.opcode == "dot"
        and op.shapes[0] in results
        and (operands is None or operands & set(operand_shapes(op, program)))
    ]


def _is_param(shape: Shape, forms: Mapping[str, set[Shape]]) -> bool:
    return any(shape in shapes for shapes in forms.values())


def collective_differences(program: Mapping[str, Instruction], expect: Plan) -> list[str]:
    """Collectives the rules do not intend.

    Intended: all-gathers of parameter shards into the shapes matmuls use (FSDP); all-reduces
    (or reduce-scatters) of scalars, of gradients and of per-device activations (the partial sums
    of tensor-parallel matmuls). Anything else, and above all an all-gather of an activation,
    is a difference.
    """
    differences = []
    for op in program.values():
        kind = op.opcode.removesuffix("-start")
        if kind not in COLLECTIVES:
            continue
        operands = operand_shapes(op, program)
        activation = [s for s in operands if set(s) & expect.batch_sizes]
        if kind == "all-gather":
            result = op.shapes[-1]  # an async start returns (operand, result)
            if activation:
                differences.append(f"all-gather of an activation: {op.line}")
            elif not any(operands[0] in expect.shards[p] and result in expect.gathered[p] for p in expect.shards):
                differences.append(f"all-gather of something other than a parameter shard: {op.line}")
        elif kind in ("all-reduce", "reduce-scatter"):
            for shape in operands:
                if shape == () or _is_param(shape, expect.shards) or _is_param(shape, expect.gathered):
                    continue
                if shape in activation and not set(shape) & expect.wrong.keys():
                    continue
                differences.append(
                    f"{kind} of {list(shape)}, neither a gradient nor a per-device activation: {op.line}"
                )
        else:
            differences.append(f"{kind}, which no rule asks for: {op.line}")
    return differences


def report(differences: list[str]) -> str:
    return f"{len(differences)} difference(s) from the rules:\n" + "\n".join(differences)


# --- The tests ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Compiled:
    trainer: Trainer
    executable: Any
    program: dict[str, Instruction]
    expect: Plan  # what the default rules say, whatever rules the trainer followed


def compile_step(*overrides: str) -> Compiled:
    """The train step of the test config on data=2 x fsdp=2 x tensor=2, compiled (not run)."""
    cfg = tiny_config(MESH, *SIZES, *overrides)
    trainer = Trainer.build(cfg)
    batch = trainer.put_batch(make_source(cfg, *trainer.data_shard()).batch(0))
    executable = trainer.lower(trainer.abstract_state(), batch).compile(FAST_COMPILE)
    return Compiled(trainer, executable, parse_hlo(executable.as_text()), plan(trainer, make_rules()))


@pytest.fixture(scope="module")
def step() -> Compiled:
    return compile_step()


@pytest.fixture(scope="module")
def default_rules() -> dict[str, MeshAxes]:
    return make_rules()


def test_parameters_and_optimizer_state_are_split_as_the_rules_say(step, default_rules):
    differences = state_differences(step.trainer, step.executable, default_rules)
    assert not differences, report(differences)
    batch = step.executable.input_shardings[0][1]
    want = logical_to_mesh(PartitionSpec("batch", "length"), default_rules, step.trainer.mesh)
    assert all(sharding.spec == want for sharding in jax.tree.leaves(batch)), batch


def test_attention_and_mlp_matmuls_run_on_per_device_shards(step):
    differences = matmul_differences(step.program, step.expect)
    assert not differences, report(differences)
    local, model = step.expect.local, step.trainer.cfg.model
    rows, length, heads, hidden = local["batch"], local["length"], local["heads"], local["mlp"]
    # The rules split 12 rows over data x fsdp, 10 heads and 176 hidden units over tensor.
    assert (rows, length, heads, hidden) == (3, 14, 5, 88)
    tokens, per_head = (rows, length, model.d_model), (rows, length, heads, model.dim_per_head)
    queries = (rows, heads, length, model.dim_per_head)  # heads first, as attention multiplies them
    found = {
        "query/key/value projection": matmuls(step.program, per_head, operand=tokens),
        "attention scores": matmuls(step.program, (rows, heads, length, length), operand=queries),
        "attention output projection": matmuls(step.program, tokens, operand=per_head),
        "MLP input projection": matmuls(step.program, (rows, length, hidden), operand=tokens),
        "MLP output projection": matmuls(step.program, tokens, operand=(rows, length, hidden)),
    }
    assert all(found.values()), f"no per-device matmul for {[name for name, ops in found.items() if not ops]}"


def test_collectives_are_parameter_gathers_and_reductions_only(step):
    differences = collective_differences(step.program, step.expect)
    assert not differences, report(differences)
    # Not vacuous: FSDP does gather weights, and tensor parallelism does sum partial activations.
    gathers = [op for op in step.program.values() if op.opcode == "all-gather"]
    partial_sums = [
        op
        for op in step.program.values()
        if op.opcode == "all-reduce" and any(set(s) & step.expect.batch_sizes for s in operand_shapes(op, step.program))
    ]
    assert gathers and partial_sums


# --- The checks fail on a program compiled with a wrong rule --------------------------------------------


@pytest.fixture(scope="module")
def mlp_unsplit() -> Compiled:
    """The MLP hidden dimension left whole (tensor no longer splits it)."""
    return compile_step("mesh.rules={mlp: null}")


@pytest.fixture(scope="module")
def embed_on_tensor() -> Compiled:
    """The model dimension split over tensor instead of fsdp, for weights and activations alike."""
    return compile_step("mesh.rules={embed: tensor}")


def test_state_check_names_each_leaf_a_wrong_rule_moves(mlp_unsplit, default_rules):
    differences = state_differences(mlp_unsplit.trainer, mlp_unsplit.executable, default_rules)
    mlp_params = [
        path for path, spec in _leaves(mlp_unsplit.trainer.model.axes, PartitionSpec).items() if "mlp" in spec
    ]
    state = _leaves(mlp_unsplit.trainer.abstract_state(), jax.ShapeDtypeStruct)
    moved = [path for path in state if any(path.endswith(param) for param in mlp_params)]
    assert mlp_params and len(moved) == 3 * len(mlp_params)  # each weight, and Adam's two moments of it
    # Each of them, into the step and out of it, and nothing else.
    assert sorted(line.split(" ")[0] for line in differences) == sorted(moved * 2), report(differences)


def test_matmul_check_reports_a_hidden_dimension_left_whole(mlp_unsplit):
    differences = matmul_differences(mlp_unsplit.program, mlp_unsplit.expect)
    assert differences
    assert all(
        " dot(" in line and line.endswith("176: mlp whole, where the rules split it 2 ways") for line in differences
    ), report(differences)
    local = mlp_unsplit.expect.local
    assert not matmuls(mlp_unsplit.program, (local["batch"], local["length"], local["mlp"]))


def test_collective_check_reports_gathered_activations(embed_on_tensor):
    differences = collective_differences(embed_on_tensor.program, embed_on_tensor.expect)
    gathers = [line for line in differences if line.startswith("all-gather of an activation: ")]
    assert gathers, report(differences)
    # Each line is the op's own HLO text, so a failure shows what was gathered and over which devices.
    assert all(" all-gather(" in line and "replica_groups=" in line for line in gathers)
