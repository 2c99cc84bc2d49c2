"""The scalelab console script: help texts and clean user errors."""

import pytest

from train.cli import COMMANDS, build_parser, main


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for entry in COMMANDS:
        assert entry.split("register_")[-1] in out


def test_every_subcommand_explains_itself(capsys):
    subcommands = build_parser()._subparsers._group_actions[0].choices
    for name in subcommands:
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0
        assert "usage: scalelab" in capsys.readouterr().out


def test_bad_config_is_a_one_line_error_with_status_2(capsys, tmp_path):
    assert main(["train", "gpt-tiny", "--set", "model.n_layer=3", "--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'model.n_layer'; did you mean 'model.n_layers'?" in err
    assert main(["train", "no-such-config", "--run-dir", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err
