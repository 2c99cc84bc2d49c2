"""`scalelab train` with a mesh that cannot work: one line on stderr naming the setting and its fix, exit 2."""

import pytest

from scalelab.cli import main


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        (["mesh.data=3"], "mesh: pipeline=1 x data=3 x fsdp=1 x tensor=1 has 3 devices but 8 are available; make the"),
        (["mesh.data=16"], "mesh: pipeline=1 x data=16 x fsdp=1 x tensor=1 has 16 devices but 8 are available;"),
        (["mesh.data=-1", "mesh.tensor=3"], "mesh: the fixed axes multiply to 3, which does not divide the 8 devices"),
        (["mesh.data=1", "mesh.pipeline=8"], "model.n_layers (2) is not divisible by mesh.pipeline (8); "),
        (
            ["mesh.data=1", "mesh.tensor=8"],
            "model.n_kv_heads (model.n_heads if unset) (4) is not divisible by mesh.tensor",
        ),
        (
            ["mesh.data=4", "mesh.tensor=2", "model.vocab_size=255"],
            "model.vocab_size (255) is not divisible by mesh.tensor",
        ),
        (
            ["mesh.data=4", "mesh.pipeline=2", "mesh.microbatches=3"],
            "train.batch_size (16) is not divisible by mesh.microbatches (3); change mesh.microbatches to a divisor "
            "of it, or train.batch_size",
        ),
        (["mesh.data=8", "train.batch_size=12"], "train.batch_size (12) is not divisible by mesh.data (8), over which"),
    ],
)
def test_a_mesh_that_cannot_work_is_one_line_naming_the_fix(tmp_path, capsys, overrides, error):
    sets = [arg for value in ["train.steps=2", "schedule.warmup_steps=0", *overrides] for arg in ("--set", value)]
    assert main(["train", "gpt-tiny", "--run-dir", str(tmp_path / "run"), *sets]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"scalelab train: error: {error}"), err
