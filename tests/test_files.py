"""Broken YAML and JSON files are errors that name the file, the place and the fix; files are written atomically."""

import os
import re

import pytest

from scalelab.cli import main
from scalelab.files import write_atomic
from scalelab.model.config import ConfigError
from scalelab.scaling.sweep.results import read_result
from scalelab.scaling.sweep.spec import load_spec
from scalelab.train.config_io import load_config


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


def test_truncated_result_says_how_to_record_it_anew(tmp_path):
    (tmp_path / "result.json").write_text('{"run": "a", "final_loss": 3.')
    fix = f"delete {tmp_path / 'result.json'} and run the sweep again to record that run anew"
    with pytest.raises(ConfigError, match=rf"result\.json: not valid JSON at line 1, .*; {re.escape(fix)}$"):
        read_result(tmp_path)


def test_cli_prints_one_line_for_a_broken_config(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("model: {d_model: 64\n")
    assert main(["train", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scalelab train: error:") and "not valid YAML" in err and "Traceback" not in err


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    saved = os.umask(0o022)
    yield os.umask
    os.umask(saved)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_write_atomic_gives_the_mode_open_would(tmp_path, umask, mask, mode):
    umask(mask)
    write_atomic(tmp_path / "results.csv", "run,N\n")
    with open(tmp_path / "plain.csv", "w"):
        pass
    assert (tmp_path / "results.csv").stat().st_mode & 0o777 == mode
    assert (tmp_path / "plain.csv").stat().st_mode & 0o777 == mode


def test_write_atomic_writes_text_as_utf8_and_bytes_as_they_are(tmp_path):
    write_atomic(tmp_path / "a.txt", "café\nline 2\n")
    write_atomic(tmp_path / "sub" / "b.bin", b"\x00\xff")
    assert (tmp_path / "a.txt").read_bytes() == "café\nline 2\n".encode()
    assert (tmp_path / "sub" / "b.bin").read_bytes() == b"\x00\xff"
    write_atomic(tmp_path / "a.txt", "new")
    assert (tmp_path / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "sub"]


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_write_atomic_failure_keeps_the_old_file_and_no_temp_file(tmp_path, monkeypatch, failing):
    path = tmp_path / "result.json"
    write_atomic(path, "old\n")

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, failing, crash)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, "new\n")
    monkeypatch.undo()
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["result.json"]
