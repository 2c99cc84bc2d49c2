"""Broken YAML and JSON files are errors that name the file, the place and the fix."""

import pytest

from scalelab.cli import main
from scalelab.model.config import ConfigError
from scalelab.scaling.sweep.results import read_result
from scalelab.scaling.sweep.spec import load_spec
from scalelab.train.config import load_config


def test_broken_config_names_file_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  d_model: 64\n   n_layers: 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML at line 3, column 12: .*; fix the file"):
        load_config(str(path))


def test_non_utf8_config_is_refused_by_name(tmp_path):
    path = tmp_path / "latin.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin\.yaml: not UTF-8 text \(byte 9\)"):
        load_config(str(path))


def test_broken_override_value_names_the_override():
    with pytest.raises(ConfigError, match=r"override 'model\.d_model=\[1,': not valid YAML"):
        load_config("gpt-tiny", ["model.d_model=[1,"])


def test_broken_spec_says_to_fix_it(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("base: gpt-tiny\nsizes: [1, 2\n")
    with pytest.raises(ConfigError, match=r"spec\.yaml: not valid YAML at line 3.*; fix the spec"):
        load_spec(path)


def test_truncated_result_says_how_to_retrain(tmp_path):
    (tmp_path / "result.json").write_text('{"run": "a", "final_loss": 3.')
    with pytest.raises(ConfigError, match=rf"result\.json: not valid JSON at line 1, .*; delete {tmp_path} to retrain"):
        read_result(tmp_path)


def test_cli_prints_one_line_for_a_broken_config(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("model: {d_model: 64\n")
    assert main(["train", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scalelab train: error:") and "not valid YAML" in err and "Traceback" not in err
