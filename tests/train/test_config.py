"""Config loading, inheritance, overrides and every validation error."""

import pytest
import yaml

from scalelab.configs import CONFIG_DIR
from scalelab.model.config import ConfigError
from scalelab.train.config_io import load_config, save_config
from scalelab.train.lr_schedules import LR_SCHEDULES


def test_schedule_names_are_the_registry_of_lr_schedules(monkeypatch):
    for name in LR_SCHEDULES:
        assert load_config("gpt-tiny", [f"schedule.name={name}"]).schedule.name == name
    # A schedule added to the registry is one the config accepts, with no second list to update.
    monkeypatch.setitem(LR_SCHEDULES, "step", LR_SCHEDULES["constant"])
    assert load_config("gpt-tiny", ["schedule.name=step"]).schedule.name == "step"


def test_every_shipped_config_loads():
    for path in CONFIG_DIR.glob("*.yaml"):
        assert load_config(path).name == path.stem


def test_overrides_are_parsed_as_yaml():
    cfg = load_config("gpt-tiny", ["model.n_layers=4", "optimizer.lr=3e-4", "optimizer.clip_norm=null"])
    assert cfg.model.n_layers == 4
    assert cfg.optimizer.lr == pytest.approx(3e-4)
    assert cfg.optimizer.clip_norm is None


def test_a_whole_number_in_scientific_notation_is_an_int():
    cfg = load_config("gpt-tiny", ["train.steps=1e3", "train.batch_size=3.2e1", "train.eval_every=1.0e2"])
    assert (cfg.train.steps, cfg.train.batch_size, cfg.train.eval_every) == (1000, 32, 100)
    assert all(type(v) is int for v in (cfg.train.steps, cfg.train.batch_size, cfg.train.eval_every))


def test_base_inheritance_merges_sections(tmp_path):
    (tmp_path / "child.yaml").write_text(yaml.safe_dump({"base": "gpt-tiny", "model": {"d_model": 128}}))
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.model.d_model == 128
    assert cfg.model.n_layers == load_config("gpt-tiny").model.n_layers
    assert cfg.name == "child"


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config("gpt-tiny", ["train.steps=70"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.d_modle=64", "unknown key 'model.d_modle'; did you mean 'model.d_model'?"),
        ("trian.steps=3", "unknown key 'trian'; did you mean 'train'?"),
        ("train.steps=abc", "train.steps: expected int, got str 'abc'"),
        ("train.steps=2.5", "train.steps: expected int, got float 2.5"),
        ("train.steps=1e400", "train.steps: expected int, got str '1e400'"),
        ("optimizer.lr=fast", "optimizer.lr: expected float"),
        ("model.tie_embeddings=3", "model.tie_embeddings: expected bool"),
        ("model.d_model=66", "model.d_model (66) is not divisible by model.n_heads (4)"),
        ("schedule.warmup_steps=100000", "schedule.warmup_steps (100000) is longer than training"),
        ("train.batch_size=0", "train.batch_size must be positive"),
        ("train.batch_size=-4", "train.batch_size must be positive"),
        ("model.activation=tanh", "model.activation: unknown value 'tanh'"),
        ("data.source=huggingface", "data.source: unknown value 'huggingface'; choose one of synthetic, tfds"),
        ("model.position=alibi2", "model.position: unknown value 'alibi2'"),
        ("model.n_kv_heads=3", "model.n_heads (4) is not divisible by model.n_kv_heads (3)"),
        ("model.n_kv_heads=-2", "model.n_kv_heads must be positive, or null for the default, got -2"),
        ("model.head_dim=0", "model.head_dim must be positive, or null for the default, got 0"),
        ("model.d_ff=0", "model.d_ff must be positive, or null for the default, got 0"),
        ("model.norm_eps=-1", "model.norm_eps must be positive, got -1"),
        ("model.init_std=0", "model.init_std must be positive, got 0"),
        ("model.rope_theta=0", "model.rope_theta must be positive, got 0"),
        ("schedule.name=step", "schedule.name: unknown value 'step'"),
        ("mesh.data=0", "mesh.data must be a positive size or -1"),
        ("model.unroll_max_layers=-1", "model.unroll_max_layers must be 0 or more (0 always loops), or null"),
        ("train.grad_accum=3", "train.batch_size (16) is not divisible by train.grad_accum (3)"),
        ("optimizer.lr=.nan", "optimizer.lr: expected a finite number, got nan"),
        ("optimizer.lr=nan", "optimizer.lr: expected a finite number, got 'nan'"),
        ("optimizer.lr=.inf", "optimizer.lr: expected a finite number, got inf"),
        ("optimizer.clip_norm=-.inf", "optimizer.clip_norm: expected a finite number, got -inf"),
        ("model.dropout=.nan", "model.dropout: expected a finite number, got nan"),
        ("checkpoint.every_minutes=.inf", "checkpoint.every_minutes: expected a finite number, got inf"),
    ],
)
def test_bad_configs_fail_with_a_message_naming_the_key(override, message):
    with pytest.raises(ConfigError) as error:
        load_config("gpt-tiny", [override])
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("config", "overrides", "message"),
    [
        (
            "gpt-tiny",
            ["model.attention=sliding", "model.window=64"],
            "model.window (64) covers every position of a row of train.seq_len=64, so model.attention=sliding would be full attention; set model.window below 64, or model.attention=full",
        ),
        ("bert-tiny", ["model.attention=sliding", "model.window=126"], "set model.window below 126"),
        (
            "gpt-tiny",
            ["model.attention=sparse", "model.window=8", "model.global_tokens=64"],
            "model.global_tokens (64) makes every position of a row of train.seq_len=64 global, so model.attention=sparse would be full attention; set model.global_tokens below 64",
        ),
    ],
)
def test_a_window_or_global_tokens_that_cover_the_row_are_refused(config, overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(config, ["train.steps=20", *overrides])
    assert message in str(error.value)
    # One position short of covering the row is a real band, and loads.
    load_config("gpt-tiny", ["model.attention=sliding", "model.window=63"])
    load_config("bert-tiny", ["model.attention=sliding", "model.window=124"])
    load_config("t5-tiny", ["model.attention=sparse", "model.window=8", "model.global_tokens=56"])


def test_sinusoidal_positions_need_an_even_width():
    with pytest.raises(ConfigError, match=r"model\.position=sinusoidal needs an even model\.d_model, got 63"):
        load_config("gpt-tiny", ["model.position=sinusoidal", "model.d_model=63", "model.n_heads=3"])


def test_missing_config_names_the_available_ones():
    with pytest.raises(FileNotFoundError, match="gpt-tiny"):
        load_config("no-such-config")


def test_overrides_leave_the_given_mapping_unchanged():
    from scalelab.train.config_io import config_from_dict, load_raw

    raw = load_raw("gpt-tiny")
    config_from_dict(raw, ["model.n_layers=5"])
    assert raw["model"]["n_layers"] == 2
