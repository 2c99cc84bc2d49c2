"""`scalelab eval`: a saved checkpoint's eval loss is the one its run logged, over as many batches as asked."""

from __future__ import annotations

import json
import shutil

import pytest

from scalelab.cli import main
from scalelab.train.config_io import load_config
from scalelab.train.evaluation import evaluate_checkpoint
from scalelab.train.loop import train
from scalelab.train.manifest import MANIFEST
from scalelab.train.metrics import read_metrics
from tests.train.ckpt_support import FAST

RUN = [*FAST, "train.steps=8", "train.eval_every=4", "checkpoint.every=4", "train.eval_batches=2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """An 8-step run that evaluated and saved at steps 4 and 8."""
    run_dir = tmp_path_factory.mktemp("eval") / "run"
    train(load_config("gpt-tiny", RUN), run_dir, quiet=True)
    return run_dir


def _logged(run_dir):
    """{updates: eval_loss} from metrics.jsonl (the line of step s describes the model after s + 1 updates)."""
    return {r["step"] + 1: r["eval_loss"] for r in read_metrics(run_dir) if "eval_loss" in r}


def test_each_checkpoint_evaluates_to_the_loss_its_run_logged(run):
    logged = _logged(run)
    assert sorted(logged) == [4, 8]
    cfg = load_config(str(run / "config.yaml"))
    newest, metrics = evaluate_checkpoint(cfg, run)
    assert newest == run / "checkpoints" / "8"
    assert metrics == {"eval_loss": pytest.approx(logged[8], rel=1e-6)}
    earlier, metrics = evaluate_checkpoint(cfg, run / "checkpoints" / "4")
    assert earlier.name == "4" and metrics["eval_loss"] == pytest.approx(logged[4], rel=1e-6)


def test_the_command_prints_the_loss_and_its_json(run, capsys):
    logged = _logged(run)
    assert main(["eval", str(run)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{run} step 8 on synthetic validation (2 batches of 16 x 16 tokens): eval_loss ")
    assert f"eval_loss {logged[8]:.4f} (perplexity " in line

    assert main(["eval", str(run / "checkpoints" / "4"), "--batches", "5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {k: report[k] for k in ("run", "step", "data", "batches", "tokens")} == {
        "run": str(run),
        "step": 4,
        "data": "synthetic",
        "batches": 5,
        "tokens": 5 * 16 * 16,
    }
    assert report["eval_loss"] != pytest.approx(logged[4], rel=1e-6)  # five batches, not the two it logged


def test_bad_input_names_the_problem_and_the_fix(run, tmp_path, capsys):
    cases = [
        ([str(tmp_path / "nope")], f"{tmp_path / 'nope'} does not exist; give a run directory"),
        ([str(tmp_path)], f"{tmp_path} is not a run directory or one of its checkpoints"),
        ([str(run), "--batches", "0"], "--batches must be at least 1, got 0"),
        ([str(run), "--set", "model.d_model=32"], "does not fit this config (model.d_model: checkpoint 64, config 32"),
        ([str(run), "--quantize", "int8", "--set", "train.qat_bits=4"], "already evaluates on a quantization grid"),
    ]
    for args, message in cases:
        assert main(["eval", *args]) == 2
        assert message in capsys.readouterr().err
    unsaved = tmp_path / "unsaved"
    train(load_config("gpt-tiny", [*FAST, "train.steps=2", "train.eval_every=0"]), unsaved, quiet=True)
    assert main(["eval", str(unsaved)]) == 2
    assert f"RUN {unsaved.absolute()}: that run saved no checkpoint" in capsys.readouterr().err


def test_a_corrupt_newest_checkpoint_is_named_and_the_one_before_it_evaluated(run, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    shutil.copytree(run, damaged)
    (damaged / "checkpoints" / "8" / MANIFEST).unlink()
    assert main(["eval", str(damaged), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["step"] == 4
    assert (
        f"scalelab eval: warning: RUN {damaged.absolute()}: checkpoint {(damaged / 'checkpoints' / '8').absolute()} "
        "is corrupt (" in captured.err
    )
    assert "trying the one before it" in captured.err


@pytest.mark.parametrize("mode", ["int8", "int4-g32"])
def test_quantize_reports_the_loss_of_the_model_generate_would_quantize(run, capsys, mode):
    from scalelab.bench.quant_bench import eval_loss
    from scalelab.data import make_source
    from scalelab.inference.generate import load_run
    from scalelab.inference.quantize import quantize

    assert main(["eval", str(run), "--quantize", mode, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["quantize"] == mode and report["unquantized"]["eval_loss"] == pytest.approx(_logged(run)[8], rel=1e-6)
    loaded = load_run(run)  # what `generate --quantize MODE` decodes with: the weights stored on the mode's grid
    source = make_source(loaded.cfg)
    batches = [source.eval_batch(i) for i in range(loaded.cfg.train.eval_batches)]
    stored = eval_loss(loaded.model, quantize(loaded.params, loaded.model.axes, mode), batches)
    assert report["eval_loss"] == pytest.approx(stored, rel=1e-4)
    assert report["eval_loss"] != report["unquantized"]["eval_loss"]  # the grid changed the weights


def test_a_run_whose_mesh_does_not_fit_here_is_evaluated_on_one_device(run, capsys):
    # 3 devices on the data axis cannot be laid over this host's 8, as a run from a bigger machine's cannot
    assert main(["eval", str(run), "--set", "mesh.data=3", "--json"]) == 0
    captured = capsys.readouterr()
    assert "does not fit the 8 device(s) here, so the checkpoint is evaluated on one device" in captured.err
    assert json.loads(captured.out)["eval_loss"] == pytest.approx(_logged(run)[8], rel=1e-5)
