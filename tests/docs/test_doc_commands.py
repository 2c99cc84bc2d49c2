"""Every shell command in README.md and docs/*.md works as written.

Blocks run for real, in order, each page in its own scratch directory laid out like the repo root
(`.venv` and `configs/` linked in), with SCALELAB_CACHE in a temp dir where the default corpus is
prepared once for the session. Blocks marked `# not run here: <reason>` (a pod, a GPU, hours) are
parsed instead: every scalelab command in them must parse with the real argparse parser, name a
config or sweep spec that resolves, and set only valid keys. Every block's scalelab commands get
that check too, as do `make` targets and `python -m` modules.

Two inputs stand in for results the docs get from commands that are not run here: `sweeps/demo/`
(what `scalelab sweep run demo` leaves, made from a known Chinchilla law) and `published.csv`
(a user's table with their own column names), and `my_texts/` is a user's folder of documents.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scalelab.cli import build_parser
from scalelab.scaling.sweep.plan import make_plan
from scalelab.scaling.sweep.spec import load_spec
from scalelab.train.config_io import load_config
from tests.docs.shell_blocks import Block, invocations, shell_blocks

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [block for page in PAGES for block in shell_blocks(page, ROOT)]
BLOCK_TIMEOUT_S = 300


def test_the_readme_is_short_and_links_every_page():
    readme = (ROOT / "README.md").read_text()
    for page in PAGES[1:]:
        assert f"](docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"
    assert "make demo" in readme and "make test" in readme
    assert len(readme.splitlines()) <= 250


# ---- parsing: every command, run or not ----


def check_scalelab(args: list[str]) -> None:
    """Parse `scalelab ARGS` with the real parser, and load the config or spec it names with its --set keys."""
    try:
        parsed = build_parser().parse_args(args)
    except SystemExit as error:
        raise AssertionError(f"scalelab {' '.join(args)}: argparse rejected it (exit {error.code})") from None
    overrides = getattr(parsed, "overrides", None) or []
    if parsed.command == "train" or (parsed.command in ("data", "tokenizer") and hasattr(parsed, "config")):
        load_config(parsed.config, overrides)
    elif parsed.command == "sweep":
        make_plan(load_spec(parsed.spec))


def make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.MULTILINE))


def check_invocation(program: str, args: list[str]) -> None:
    if program == "scalelab":
        check_scalelab(args)
    elif program == "make":
        missing = [target for target in args if not target.startswith("-") and target not in make_targets()]
        assert not missing, f"make {' '.join(args)}: the Makefile has no target {missing}"
    elif program in ("python", "python3") and args[:1] == ["-m"]:
        assert importlib.util.find_spec(args[1]) is not None, f"python -m {args[1]}: no such module"


@pytest.mark.parametrize("block", BLOCKS, ids=[block.where for block in BLOCKS])
def test_commands_parse(block: Block):
    found = invocations(block.text)
    assert found, f"{block.where}: a shell block with no command"
    for program, args in found:
        check_invocation(program, args)


# ---- running: every block not marked `# not run here:` ----


def chinchilla_rows() -> list[dict[str, float]]:
    """An isoFLOP sweep's rows: 4 budgets x 5 sizes around each budget's optimum, losses from a known law."""
    E, A, B, alpha, beta = 1.9, 40.0, 60.0, 0.32, 0.3
    rng = np.random.default_rng(0)
    rows = []
    for budget in (4e10, 8e10, 1.6e11, 3.2e11):
        sizes = np.geomspace(1e3, 1e6, 2000)
        losses = E + A / sizes**alpha + B / (budget / (6 * sizes)) ** beta
        best = sizes[np.argmin(losses)]
        for factor in (0.25, 0.5, 1.0, 2.0, 4.0):
            n = best * factor
            d = budget / (6 * n)
            loss = (E + A / n**alpha + B / d**beta) * float(np.exp(rng.normal(0, 0.003)))
            rows.append({"N": round(n), "D": round(d), "C": budget, "loss": loss})
    return rows


def seed_inputs(workspace: Path) -> None:
    """The stand-ins for inputs the docs refer to but do not make (see the module docstring)."""
    rows = chinchilla_rows()
    demo = workspace / "sweeps" / "demo"
    demo.mkdir(parents=True)
    columns = ["run", "N", "N_nonembed", "D", "C", "final_loss", "eval_loss", "best_eval_loss", "steps", "status"]
    with open(demo / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for i, row in enumerate(rows):
            loss = row["loss"]
            writer.writerow([f"run{i}", row["N"], row["N"], row["D"], row["C"], loss, loss, loss, 100, "done"])
    with open(workspace / "published.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "params", "tokens", "val_loss"])
        for i, row in enumerate(rows):
            writer.writerow([f"m{i}", row["N"], row["D"], row["loss"]])
    texts = workspace / "my_texts"
    texts.mkdir()
    words = [
        "the",
        "of",
        "and",
        "to",
        "in",
        "a",
        "is",
        "that",
        "for",
        "it",
        "as",
        "was",
        "with",
        "be",
        "by",
        "on",
        "not",
        "he",
        "this",
        "are",
        "or",
        "his",
        "from",
        "at",
        "which",
    ]
    rng = np.random.default_rng(1)
    with open(texts / "notes.jsonl", "w") as f:
        for i in range(400):
            sentences = [" ".join(rng.choice(words, size=12)).capitalize() + "." for _ in range(8)]
            f.write(json.dumps({"text": f"Note {i}.\n" + " ".join(sentences)}) + "\n")
    (texts / "letter.txt").write_text("Dear reader,\nthis is a plain text document of its own.\n")


@pytest.fixture(scope="module")
def environment(tmp_path_factory) -> dict[str, str]:
    """The shell environment of every block: the venv first on PATH, a temp cache with the default corpus prepared."""
    cache = tmp_path_factory.mktemp("cache")
    env = {key: value for key, value in os.environ.items() if key not in ("XLA_FLAGS", "SCALELAB_DATA_DIR")}
    env.update(
        PATH=f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        SCALELAB_CACHE=str(cache),
        MPLBACKEND="Agg",
        PYTHONUNBUFFERED="1",
    )
    scalelab = [sys.executable, "-m", "scalelab"]
    for command in (["data", "prepare", "--quiet"], ["tokenizer", "train", "--quiet"]):
        done = subprocess.run([*scalelab, *command], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"scalelab {' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    return env


@pytest.fixture(scope="module")
def workspaces(tmp_path_factory):
    """{page: a scratch directory laid out like the repo root}, made on first use."""
    made: dict[str, Path] = {}

    def workspace(page: str) -> Path:
        if page not in made:
            directory = tmp_path_factory.mktemp(Path(page).stem)
            for name in (".venv", "configs"):
                (directory / name).symlink_to(ROOT / name)
            seed_inputs(directory)
            made[page] = directory
        return made[page]

    return workspace


RUN_BLOCKS = [block for block in BLOCKS if block.runs]


@pytest.mark.parametrize("block", RUN_BLOCKS, ids=[block.where for block in RUN_BLOCKS])
def test_block_runs(block: Block, environment, workspaces):
    script = "set -euo pipefail\nset -x\n" + block.text
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=workspaces(block.page),
        env=environment,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
    )
    tail = "\n".join((done.stdout + done.stderr).splitlines()[-40:])
    assert done.returncode == 0, f"{block.where} failed (exit {done.returncode}):\n{block.text}\n--- output ---\n{tail}"
