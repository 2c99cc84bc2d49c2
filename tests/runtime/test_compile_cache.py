"""Every command keeps its compiled programs under $SCALELAB_CACHE, so a repeated command compiles nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from scalelab.runtime import compile_cache
from scalelab.runtime.compile_cache import SUBDIR, use_compile_cache

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def jax_cache_settings():
    """Put back the process-wide JAX settings the function under test changes."""
    names = (
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    )
    previous = {name: getattr(jax.config, name) for name in names}
    yield
    for name, value in previous.items():
        jax.config.update(name, value)


def test_the_cache_goes_under_scalelab_cache_and_keeps_every_program(tmp_path, monkeypatch, jax_cache_settings):
    monkeypatch.setenv("SCALELAB_CACHE", str(tmp_path))
    jax.config.update("jax_compilation_cache_dir", None)
    assert use_compile_cache({}) == tmp_path / SUBDIR
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / SUBDIR)
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
    assert jax.config.jax_persistent_cache_min_entry_size_bytes == 0


@pytest.mark.parametrize("switch", ["off", "0", "false"])
def test_turned_off_it_leaves_jax_alone(tmp_path, monkeypatch, jax_cache_settings, switch):
    monkeypatch.setenv("SCALELAB_CACHE", str(tmp_path))
    jax.config.update("jax_compilation_cache_dir", None)
    assert use_compile_cache({compile_cache.SWITCH: switch}) is None
    assert jax.config.jax_compilation_cache_dir is None


def test_a_cache_the_user_chose_wins(tmp_path, monkeypatch, jax_cache_settings):
    monkeypatch.setenv("SCALELAB_CACHE", str(tmp_path / "ours"))
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "theirs"))
    assert use_compile_cache({}) is None
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "theirs")


def test_before_jax_is_imported_the_setting_reaches_it_through_the_environment(tmp_path):
    # The CLI imports JAX only for the commands that use it, after this call.
    code = (
        "import sys; from scalelab.runtime.compile_cache import use_compile_cache; d = use_compile_cache(); "
        "assert 'jax' not in sys.modules; import jax; "
        "print(jax.config.jax_compilation_cache_dir == str(d), jax.config.jax_persistent_cache_min_compile_time_secs)"
    )
    env = {k: v for k, v in os.environ.items() if k not in (compile_cache.SWITCH, "JAX_COMPILATION_CACHE_DIR")}
    env.update(SCALELAB_CACHE=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "0.0"]


def test_a_repeated_train_command_compiles_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in (compile_cache.SWITCH, "JAX_COMPILATION_CACHE_DIR")}
    env.update(SCALELAB_CACHE=str(tmp_path / "cache"), JAX_LOG_COMPILES="1")
    command = [sys.executable, "-m", "scalelab", "train", "gpt-tiny", "--quiet"]
    command += ["--set", "train.steps=4", "--set", "schedule.warmup_steps=1", "--set", "train.eval_every=2"]

    def run(run_dir: str) -> tuple[int, int]:
        """(programs the run asked for, programs it loaded from the persistent cache)"""
        done = subprocess.run(
            [*command, "--run-dir", str(tmp_path / run_dir)], cwd=REPO, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stderr.count("Compiling jit("), done.stderr.count("Persistent compilation cache hit")

    asked, loaded = run("first")
    assert asked >= 2 and loaded == 0  # the train and eval steps at least, all compiled afresh
    assert (tmp_path / "cache" / SUBDIR).is_dir()
    again, loaded = run("second")
    # Every program the second run asked for came from the cache. It asks for fewer: the first run
    # searched every matmul size for the peak, the second checks the kept best at one size.
    assert loaded == again >= 2
