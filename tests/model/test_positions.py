"""Absolute position encodings: the fixed sin/cos table enters at the scale of learned positions."""

import math

import jax.numpy as jnp
import numpy as np
from flax import nnx

from scalelab.model import ModelConfig
from scalelab.model.positions import LearnedPositions, SinusoidalPositions
from scalelab.train.config_io import load_config
from scalelab.train.loop import train

CFG = ModelConfig(vocab_size=61, d_model=64, n_layers=1, n_heads=4, max_seq_len=128, dtype="float32")


def _added(kind: type, cfg: ModelConfig = CFG) -> np.ndarray:
    encoding = kind(cfg, rngs=nnx.Rngs(0))
    return np.asarray(encoding.embed(jnp.zeros((1, cfg.max_seq_len, cfg.d_model)), jnp.arange(cfg.max_seq_len)[None]))


def _rms(x: np.ndarray) -> float:
    return math.sqrt(float(np.mean(x**2)))


def test_sinusoidal_positions_start_at_the_scale_of_learned_ones():
    sinusoidal, learned = (_rms(_added(kind)) for kind in (SinusoidalPositions, LearnedPositions))
    assert abs(sinusoidal / learned - 1) < 0.1 and abs(sinusoidal / CFG.init_std - 1) < 0.1


def test_a_sinusoidal_model_learns_about_as_fast_as_a_learned_one(tmp_path):
    # Added at sin/cos's own scale, the table drowned out the tokens: 5.35 after these 60 steps.
    final = {}
    for position in ("learned", "sinusoidal"):
        overrides = [f"model.position={position}", "train.steps=60", "schedule.warmup_steps=0", "train.eval_every=0"]
        overrides += ["logging.progress=false", "logging.tensorboard=false", "logging.peak_flops=1e12"]
        final[position] = train(load_config("gpt-tiny", overrides), tmp_path / position, quiet=True).final_loss
    assert final["sinusoidal"] < final["learned"] + 0.3, final
