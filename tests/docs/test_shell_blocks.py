"""The reader of shell examples finds every command, and the parse check rejects what scalelab would."""

from __future__ import annotations

import pytest

from tests.docs.shell_blocks import invocations, shell_blocks
from tests.docs.test_doc_commands import check_invocation

PAGE = """\
# A page

```bash
scalelab train gpt-tiny --set train.steps=5 \\
    --run-dir runs/a   # a comment; not a command
scalelab fit sweeps/demo && scalelab plot sweeps/demo/fit
```

```bash
# not run here: needs a pod
srun .venv/bin/scalelab train gpt-small --set mesh.fsdp=8 --process-id $RANK
gcloud ssh pod --command '
  cd scalelab && .venv/bin/scalelab train gpt-small \\
    --distributed'
```

```yaml
not: a shell block
```
"""


def test_blocks_commands_and_the_not_run_marker(tmp_path):
    (tmp_path / "page.md").write_text(PAGE)
    first, second = shell_blocks(tmp_path / "page.md", tmp_path)
    assert (first.where, first.runs, second.where, second.runs) == ("page.md:3", True, "page.md:9", False)
    assert invocations(first.text) == [
        ("scalelab", ["train", "gpt-tiny", "--set", "train.steps=5", "--run-dir", "runs/a"]),
        ("scalelab", ["fit", "sweeps/demo"]),
        ("scalelab", ["plot", "sweeps/demo/fit"]),
    ]
    found = invocations(second.text)
    assert ("scalelab", ["train", "gpt-small", "--set", "mesh.fsdp=8", "--process-id", "0"]) in found
    assert ("scalelab", ["train", "gpt-small", "--distributed"]) in found  # the one quoted inside gcloud's


def test_a_misspelt_not_run_marker_is_an_error_not_a_block_that_runs(tmp_path):
    (tmp_path / "page.md").write_text("```bash\n# not run here (needs a GPU): bash check.sh\nbash check.sh\n```\n")
    with pytest.raises(ValueError, match=r"page\.md:1: write the marker as '# not run here: <reason>'"):
        shell_blocks(tmp_path / "page.md", tmp_path)


@pytest.mark.parametrize(
    ("program", "args", "problem"),
    [
        ("scalelab", ["train", "gpt-tiny", "--steps", "5"], "argparse rejected"),
        ("scalelab", ["train", "gpt-tiny", "--set", "train.stpes=5"], "did you mean 'train.steps'"),
        ("scalelab", ["train", "no-such-config"], "not found"),
        ("scalelab", ["sweep", "run", "no-such-spec"], "no-such-spec"),
        ("make", ["no-such-target"], "no target"),
        ("python", ["-m", "scalelab.bench.no_such_bench"], "no such module"),
    ],
)
def test_the_parse_check_rejects_what_would_fail(program, args, problem):
    with pytest.raises(Exception, match=problem):
        check_invocation(program, args)


def test_the_parse_check_accepts_a_valid_command():
    check_invocation("scalelab", ["train", "gpt-tiny", "--set", "model.n_layers=4", "--run-dir", "runs/x"])
    check_invocation("make", ["demo"])
