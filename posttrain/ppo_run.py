"""A PPO run in a run directory: the shared stage machinery around PPO's own loop.

PPO cannot be a plain `train()` stage: each step samples with the current policy and then makes
several optimizer updates on that sample, while `train()` makes one update per data batch. So the
loop is here, and everything around it is the ordinary run's:
- posttrain.stage=ppo registers PPOStage, so `Trainer.build` gives the policy (decoder + value head,
  posttrain/heads.py), its mesh and shardings, the optimizer and a compiled `train_step` whose loss is
  PPO's clipped loss: one minibatch update is one ordinary train step.
- config.yaml, metrics.jsonl (one line per PPO step, exactly once after a resume), TensorBoard,
  orbax checkpoints through CheckpointStore; the KL coefficient and running reward statistics are
  saved in each checkpoint's JSON record, so a resumed run repeats an uninterrupted one.
- SIGTERM/Ctrl-C saves and exits 75, a non-finite update exits 3, the run-directory lock.

Checkpoints are numbered by PPO steps; the state's own `step` counts optimizer updates (it drives
the learning-rate schedule). Prompts come from posttrain.train_file (JSONL lines with a "prompt":
SFT and preference files both qualify), in a reshuffled order that is a pure function of the step.
This runs in one process; the reference and the reward model are replicated on every device.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from scalelab.data.loader import shuffled_rows
from scalelab.errors import ConfigError, UserError
from scalelab.posttrain.heads import HEAD, ScalarHeadModel, base_params, head_values, last_token
from scalelab.posttrain.ppo import PPOLearner, ppo_loss, shared_graphdef
from scalelab.posttrain.ppo_policy import hidden_and_logits, zero_head
from scalelab.posttrain.records import PostTrainDataError, read_prompts
from scalelab.posttrain.runs import check_init_from, check_reference_run, load_decoder
from scalelab.train.checkpoint_compat import CheckpointError, checkpoint_meta
from scalelab.train.checkpoint_store import CheckpointStore, clear_checkpoints
from scalelab.train.config import Config
from scalelab.train.config_io import load_config, save_config
from scalelab.train.faults import Preempted, PreemptionGuard, RunDirLock
from scalelab.train.metrics import MetricsWriter, clear_metrics, refuse_replacing, truncate_metrics
from scalelab.train.optim import learning_rate
from scalelab.train.stage import STAGES
from scalelab.train.trainer import Trainer

PROMPT_STREAM = 2  # keeps the prompt order apart from other draws of the data seed


class NotARewardModelError(UserError):
    """posttrain.ppo.reward_model names a run that is not a reward model (or does not fit the policy)."""


class PPOStage:
    """posttrain.stage=ppo for the Trainer: the policy with a value head, and PPO's minibatch loss."""

    def model(self, cfg: Config, base: Any) -> Any:
        return ScalarHeadModel.wrap(base)

    def source(self, cfg: Config, process_index: int, process_count: int) -> Any:
        raise ConfigError(
            "posttrain.stage=ppo samples its own batches from the policy; run it with `scalelab ppo CONFIG` "
            "(scalelab train runs the other stages)"
        )

    def loss(self, cfg: Config, model: Any, runner: Any):
        return ppo_loss(model, cfg.posttrain.ppo, runner)

    def eval(self, cfg: Config, model: Any, runner: Any):
        loss_fn = ppo_loss(model, cfg.posttrain.ppo, runner)

        def sums(params, batch):  # the PPO loss of a minibatch (scalelab ppo judges by reward instead)
            n = jnp.float32(batch["inputs"].shape[0])
            return {"loss_sum": loss_fn(params, batch, None)[0] * n, "weight_sum": n}

        return sums

    def init_params(self, cfg: Config, trainer: Trainer, init_from: Path) -> Any:
        """The decoder of `init_from` (the SFT run, or an earlier PPO run) and a zero value head."""
        check_init_from("ppo", init_from)
        decoder, _ = load_decoder(init_from, cfg, trainer)
        head = jax.jit(lambda: trainer.model.init_head(0), out_shardings=trainer.state_shardings["params"][HEAD])()
        return zero_head({**decoder, HEAD: head})


def register() -> None:
    STAGES["ppo"] = PPOStage()


def encode_prompts(cfg: Config, tokenizer: Any, prompts: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded prompt rows (EOS first, as SFT saw them) of seq_len - new_tokens tokens, and their lengths."""
    room = cfg.train.seq_len - cfg.posttrain.ppo.new_tokens
    rows, lengths = np.zeros((len(prompts), room), np.int32), np.zeros(len(prompts), np.int32)
    for i, (where, text) in enumerate(prompts):
        ids = [tokenizer.eos_id, *tokenizer.encode(text)]
        if len(ids) > room:
            if cfg.posttrain.overflow == "refuse":
                raise PostTrainDataError(
                    f"{where}: the prompt takes {len(ids)} tokens but train.seq_len - posttrain.ppo.new_tokens leaves "
                    f"{room}; shorten it, raise train.seq_len, or set posttrain.overflow=truncate (keeps its end)"
                )
            ids = [tokenizer.eos_id, *ids[len(ids) - room + 1 :]]
        rows[i, : len(ids)], lengths[i] = ids, len(ids)
    return rows, lengths


def reward_scorer(reward_dir: Path, cfg: Config, trainer: Trainer) -> Any:
    """score(tokens, response mask) -> (batch,) of the reward-model run in `reward_dir`, replicated on the mesh."""
    from scalelab.inference.generate import load_run

    config = Path(reward_dir) / "config.yaml"
    if not config.is_file():
        raise NotARewardModelError(
            f"posttrain.ppo.reward_model={reward_dir} has no config.yaml; give the run directory of `scalelab reward`"
        )
    run = load_run(Path(reward_dir))
    if run.cfg.posttrain.stage != "reward":
        raise NotARewardModelError(
            f"posttrain.ppo.reward_model={reward_dir} is not a reward model (its config.yaml has posttrain.stage="
            f"{run.cfg.posttrain.stage}); give the run directory of a `scalelab reward` run"
        )
    differ = [k for k in ("name", "tokenizer") if getattr(run.cfg.data, k) != getattr(cfg.data, k)]
    if run.cfg.model.vocab_size != cfg.model.vocab_size or differ:
        raise NotARewardModelError(
            f"reward model {reward_dir} reads another tokenizer than the policy (model.vocab_size "
            f"{run.cfg.model.vocab_size} vs {cfg.model.vocab_size}, data {run.cfg.data.name}/{run.cfg.data.tokenizer} vs "
            f"{cfg.data.name}/{cfg.data.tokenizer}); train the reward model from the same pre-trained run"
        )
    if run.cfg.model.position == "learned" and run.cfg.model.max_seq_len < cfg.train.seq_len:
        raise NotARewardModelError(
            f"reward model {reward_dir} reads at most {run.cfg.model.max_seq_len} tokens, fewer than train.seq_len="
            f"{cfg.train.seq_len}; lower train.seq_len"
        )
    params = jax.device_put(run.params, NamedSharding(trainer.mesh, PartitionSpec()))
    return functools.partial(score, shared_graphdef(run.cfg.model), run.tokenizer.eos_id, params)


@functools.partial(jax.jit, static_argnames=("graphdef", "eos"))
def score(graphdef: Any, eos: int, params: Any, tokens: jax.Array, response_mask: jax.Array) -> jax.Array:
    """A reward model's score of each sequence, read as it was trained: at the last token before a final EOS
    (EOS, prompt, response; the prompt is everything before the response's first column)."""
    columns = jnp.arange(tokens.shape[1])[None, :]
    in_prompt = columns < jnp.argmax(response_mask, axis=1)[:, None]
    real = in_prompt | ((response_mask > 0) & (tokens != eos))
    hidden, _ = hidden_and_logits(graphdef, base_params(params), tokens)
    values = head_values(hidden, params[HEAD])
    return jnp.take_along_axis(values, last_token(real.astype(jnp.int32))[:, None], axis=1)[:, 0]


@dataclasses.dataclass
class PPOResult:
    run_dir: Path
    steps: int
    final: dict[str, float]  # the last step's metrics


def _start_state(trainer: Trainer, init_from: Path) -> dict[str, Any]:
    params = PPOStage().init_params(trainer.cfg, trainer, init_from)
    opt_state = jax.jit(trainer.tx.init, out_shardings=trainer.state_shardings["opt_state"])(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), trainer.state_shardings["step"])
    return {"step": step, "params": params, "opt_state": opt_state}


def check_ppo_config(cfg: Config, init_from: Path | None) -> Config:
    """`cfg` with posttrain.reference defaulted to `init_from`; ConfigError for what a PPO run lacks."""
    post = cfg.posttrain
    if post.stage != "ppo":
        raise ConfigError(f"scalelab ppo trains posttrain.stage=ppo, but the config says {post.stage}")
    if post.ppo.reward_model is None:
        raise ConfigError("posttrain.ppo.reward_model is not set; give the run directory of a `scalelab reward` run")
    if post.train_file is None:
        raise ConfigError('posttrain.train_file is not set; give a JSONL file whose lines carry a "prompt"')
    if cfg.train.seq_len - post.ppo.new_tokens < 2:
        raise ConfigError(
            f"train.seq_len={cfg.train.seq_len} leaves no room for prompts after posttrain.ppo.new_tokens="
            f"{post.ppo.new_tokens}; raise train.seq_len or lower new_tokens"
        )
    if post.reference is None:
        if init_from is None:
            raise ConfigError(
                "PPO needs a frozen reference: give --init-from RUN_DIR (the SFT run) or posttrain.reference"
            )
        cfg = dataclasses.replace(cfg, posttrain=dataclasses.replace(post, reference=str(init_from)))
    return cfg


def run_ppo(cfg: Config, run_dir: Path, *, init_from: Path | None = None, existing: str = "refuse", quiet: bool = True):
    """Train `cfg` (posttrain.stage=ppo) in `run_dir`, resuming from its newest checkpoint if it has one."""
    with PreemptionGuard("ppo", saves=cfg.checkpoint.enabled) as guard, RunDirLock(Path(run_dir)):
        return _run(cfg, Path(run_dir), init_from, existing, quiet, guard)


def _run(cfg: Config, run_dir: Path, init_from: Path | None, existing: str, quiet: bool, guard: PreemptionGuard):
    from scalelab.posttrain.reference import check_reference, load_reference
    from scalelab.posttrain.sources import open_tokenizer
    from scalelab.runtime.progress import progress_bar

    saved = run_dir / "config.yaml"
    if cfg.posttrain.reference is None and init_from is None and saved.is_file():
        # A resume: the reference is the one the run started with (its --init-from), recorded in config.yaml.
        reference = load_config(saved).posttrain.reference
        cfg = dataclasses.replace(cfg, posttrain=dataclasses.replace(cfg.posttrain, reference=reference))
    cfg = check_ppo_config(cfg, init_from)
    settings = cfg.posttrain.ppo
    reference_dir = Path(cfg.posttrain.reference)
    check_init_from("ppo", init_from)  # mistakes are named before anything is loaded or compiled
    if (reference_dir / "config.yaml").is_file():
        check_reference_run(reference_dir)
        check_reference(cfg, load_config(reference_dir / "config.yaml"), reference_dir)
    reference_run = load_reference(cfg)
    tokenizer, _ = open_tokenizer(cfg)
    prompts, lengths = encode_prompts(cfg, tokenizer, read_prompts(Path(cfg.posttrain.train_file)))
    trainer = Trainer.build(cfg)
    scorer = reward_scorer(Path(settings.reward_model), cfg, trainer)
    # A PPO run as the reference leaves its value head behind: the reference is a policy.
    reference = jax.device_put(base_params(reference_run.params), base_params(trainer.state_shardings["params"]))

    store = CheckpointStore(run_dir, cfg, trainer) if cfg.checkpoint.enabled else None
    if existing == "overwrite":
        clear_metrics(run_dir)
        clear_checkpoints(run_dir)
    restored = store.restore_latest() if store is not None else None
    if restored is None:
        if existing == "refuse":
            refuse_replacing(run_dir)
        clear_metrics(run_dir)
        if init_from is None:
            raise ConfigError(
                f"{run_dir} has no checkpoint to resume; start the run with --init-from RUN_DIR (the SFT run)"
            )
        state, start = _start_state(trainer, init_from), 0
    else:
        if restored.step > cfg.train.steps:
            raise CheckpointError(
                f"{run_dir} holds a checkpoint at PPO step {restored.step}, past train.steps={cfg.train.steps}; "
                f"set train.steps to at least {restored.step}"
            )
        state, start = restored.state, restored.step
        truncate_metrics(run_dir, start)
    learner = PPOLearner(
        trainer.model,
        settings,
        trainer.train_step,
        reference,
        scorer,
        beta=cfg.posttrain.beta,
        eos_id=tokenizer.eos_id,
        seed=cfg.train.seed,
        put_batch=trainer.put_batch,
    )
    if restored is not None:
        learner.host.load(restored.meta["ppo"])
    save_config(cfg, run_dir / "config.yaml")
    if not quiet:
        where = f"resuming from PPO step {start}" if start else f"starting from {init_from}"
        print(
            f"scalelab ppo: {cfg.name} -> {run_dir}; {where}; {len(prompts)} prompts, reward model {settings.reward_model}"
        )
    rows = cfg.train.batch_size * settings.minibatches
    writer = MetricsWriter(run_dir, tensorboard=cfg.logging.tensorboard, purge_step=start or None)
    bar = progress_bar(total=cfg.train.steps, initial=start, desc=cfg.name, unit="step", disable=quiet)
    metrics: dict[str, float] = {}

    def save(step: int, reason: str, wait: bool) -> None:
        if store is None:
            return
        writer.flush(durable=True)  # metrics never lag the checkpoint that follows them
        meta = {**checkpoint_meta(cfg, trainer, step, [], None, reason), "ppo": learner.host.to_json()}
        store.save(step, state, meta, None, wait)

    try:
        schedule = learning_rate(cfg)
        for step in range(start, cfg.train.steps):
            if guard.requested():
                save(step, "preempted", wait=True)
                raise Preempted(
                    f"stopped by {guard.signal_name or 'a signal'} after {step} steps; re-run to resume", step
                )
            picked = shuffled_rows(range(step * rows, (step + 1) * rows), len(prompts), cfg.data.seed, PROMPT_STREAM)
            state, metrics = learner.step(state, prompts[picked], lengths[picked], step)
            lr = float(schedule(int(state["step"]) - 1))
            writer.write({"step": step, **metrics, "lr": lr})
            bar.update(1)
            last = step + 1 == cfg.train.steps
            if last or (cfg.checkpoint.every and (step + 1) % cfg.checkpoint.every == 0):
                save(step + 1, "final" if last else "interval", wait=last)
    finally:
        bar.close()
        writer.close()
        if store is not None:
            store.close()
    return PPOResult(run_dir, cfg.train.steps, metrics)
