"""Post-training: supervised fine-tuning, a reward model, PPO and DPO over the pre-trained models.

Every stage is an ordinary `scalelab.train.loop.train()` run: the config key `posttrain.stage`
(train/stage.py) picks a Stage that supplies the batch source, the model wrapper, the loss and
the eval sums, so meshes, orbax checkpoints, exact resume, metrics.jsonl and TensorBoard are the
pre-training ones. Importing this package registers sft, reward and dpo in train.stage.STAGES.

Interfaces for PPO (part 2) — stable:
- Load a run (model + params + tokenizer): `scalelab.inference.generate.load_run(run_dir)` -> LoadedRun
  (cfg, model: ModelDef, params, step_dir, tokenizer). Check a frozen reference against the policy with
  `posttrain.reference.check_reference(policy_cfg, reference_cfg, reference_dir)` (ReferenceMismatchError).
- Scalar head: `posttrain.heads.ScalarHeadModel.wrap(model_def)`; `.init(seed)`, `.init_head(seed)`,
  `.apply(params, batch)` -> logits, `.hidden(params, batch)` -> (B, T, d_model),
  `.token_values(params, batch)` -> (B, T) (value head), `.scores(params, batch)` -> (B,) at each row's last
  real token (segment_ids > 0, right-padded). Params = decoder params + {"score_head": {kernel, bias}}.
  A reward run's params load with `load_run(reward_run_dir)` (its config.yaml has posttrain.stage=reward).
  `DecoderLM.hidden(tokens, positions=, segment_ids=)` (model/transformer.py) gives the hidden states.
- Log-probs and losses: `posttrain.losses.token_logprobs(logits, targets)` -> (B, T) fp32,
  `sequence_logprobs(logits, targets, weights)` -> (B,), `pairs(x)`, `bradley_terry`, `dpo`.
- Stage loop and checkpoints: register a Stage (train/stage.py protocol: model, source, loss, eval,
  init_params) in `scalelab.train.stage.STAGES["ppo"]`; `train(cfg, run_dir, init_from=...)` then runs it
  with the usual checkpoints, resume and metrics. A loss returns (loss, {"loss": ..., other scalars}) and every
  scalar is logged per step; eval sums "<name>_sum" / "weight_sum" are logged as eval_<name>. Keys PPO needs
  in the config go in train/stage.py's PostTrainConfig (section `posttrain:`).
- Text to sequences: `posttrain.encode.Encoder` / `sequence(...)`; records: `posttrain.records`
  (read_examples, read_pairs, PostTrainDataError naming file:line).
- CLI: `scalelab/cli/posttrain.py` `add_stage_command(subparsers, name, help)` gives a stage a command in
  `train`'s shape (CONFIG --set --run-dir --overwrite --init-from --quiet).
"""

from scalelab.posttrain.ppo_run import register as _register_ppo
from scalelab.posttrain.stages import register as _register

_register()
_register_ppo()
