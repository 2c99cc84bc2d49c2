"""PPO end to end on a toy reward: the policy learns to say one token more often, paying KL for it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scalelab.errors import ConfigError
from scalelab.model import ModelConfig
from scalelab.model.functional import describe
from scalelab.posttrain.heads import ScalarHeadModel, base_params
from scalelab.posttrain.ppo import PPOLearner, count_token_scorer, make_tx, standalone_update
from scalelab.posttrain.ppo_policy import zero_head
from scalelab.train.stage import PPOConfig

TOY = ModelConfig(vocab_size=16, d_model=32, n_layers=1, n_heads=2, max_seq_len=16, dtype="float32")
REWARDED = 3


def test_ppo_raises_the_mean_reward_of_a_toy_scorer_within_a_few_steps():
    model = ScalarHeadModel.wrap(describe(TOY))
    init = jax.jit(model.init, static_argnums=0)  # compiled once: op by op it took seconds
    params = zero_head(init(0))
    settings = PPOConfig(new_tokens=8, epochs=2, minibatches=2)
    update = standalone_update(model, settings, make_tx(3e-3, 1.0))
    reference = base_params(init(0))  # its own buffers: the update donates the policy's
    learner = PPOLearner(
        model, settings, update, reference, count_token_scorer(REWARDED), beta=0.01, eos_id=None, seed=0
    )
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": make_tx(3e-3, 1.0).init(params)}
    prompts, lengths = np.tile(np.arange(1, 5, dtype=np.int32), (16, 1)), np.full(16, 4, np.int32)
    history = []
    for step in range(8):
        state, metrics = learner.step(state, prompts, lengths, step)
        history.append(metrics)
    assert int(state["step"]) == 8 * 2 * 2  # optimizer updates: steps x epochs x minibatches
    first, last = history[0], history[-1]
    # A uniform-ish start says token 3 about 8/16 times per response; PPO makes it several times likelier.
    assert last["reward"] > first["reward"] + 1.5
    assert first["kl"] == pytest.approx(0.0, abs=1e-5)  # step 0's policy is the reference
    assert last["kl"] > 0.5  # the gain was paid for in divergence from the reference
    assert last["entropy"] < first["entropy"]
    for name in ("reward", "kl", "entropy", "clip_fraction", "value_loss", "response_length", "beta"):
        assert np.isfinite(last[name]), name
    assert last["response_length"] == 8.0  # no EOS: every response runs to ppo.new_tokens


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("epochs", 0, "posttrain.ppo.epochs must be at least 1"), ("lam", 1.5, r"posttrain.ppo.lam must be in \(0, 1\]"),
     ("target_kl", 0.0, "posttrain.ppo.target_kl must be positive"), ("temperature", 0.0, "posttrain.ppo.temperature must be > 0")],
)  # fmt: skip
def test_bad_ppo_settings_name_the_key(field, value, message):
    with pytest.raises(ConfigError, match=message):
        PPOConfig(**{field: value})
