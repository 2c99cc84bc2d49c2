"""PPO rollout throughput next to plain KV-cache decoding of the same model, batch and lengths.

Run: .venv/bin/python -m scalelab.bench.rollout_bench [--quick] (or `scalelab bench rollout`).
Three contenders, each sampling `new` tokens at temperature 1 after a `prompt`-token prompt, compiled
once and timed with the interleaved windows of bench/measure.py:
- decode: inference/decode.py's `generate` (what `scalelab generate` runs),
- rollout: posttrain/rollout.py's `sample`, which also keeps each token's log-probability and the
  response mask (stopping at EOS), i.e. what a PPO step samples with,
- rollout+experience: the rollout, then PPO's experience pass (policy log-probs and values, the
  reference's log-probs, KL-shaped rewards and GAE over the sampled batch), everything a PPO step
  does before its optimizer updates.
Tokens/s counts sampled tokens. Writes bench/results/rollout.json.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp

from scalelab.bench.measure import Contender, interleave, load_average
from scalelab.bench.report import RESULTS_DIR, write_json
from scalelab.inference.decode import Sampler, generate
from scalelab.model.config import ModelConfig
from scalelab.model.functional import describe
from scalelab.posttrain.heads import ScalarHeadModel, base_params
from scalelab.posttrain.ppo import experience, shared_graphdef
from scalelab.posttrain.rollout import join, sample
from scalelab.train.stage import PPOConfig

QUICK_ARGS = ["--quick"]
# decode_bench's model, so the plain decode figure here can be read against that benchmark's.
MODEL = ModelConfig(vocab_size=512, d_model=256, n_layers=4, n_heads=8, n_kv_heads=4, max_seq_len=512)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tokens and rounds")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"), help="compute dtype")
    parser.add_argument("--batch", type=int, default=32, help="rows sampled together (a PPO rollout batch)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "rollout.json", help="results JSON")
    args = parser.parse_args(argv)
    prompt_len, new, rounds = (16, 16, 2) if args.quick else (32, 64, 3)
    cfg = dataclasses.replace(MODEL, dtype=args.dtype)
    model = ScalarHeadModel.wrap(describe(cfg))
    params = model.init(0)
    decoder = base_params(params)
    graphdef = shared_graphdef(cfg)
    prompts = jax.random.randint(jax.random.key(0), (args.batch, prompt_len), 0, cfg.vocab_size)
    lengths = jnp.full((args.batch,), prompt_len, jnp.int32)
    key = jax.random.key(1)
    settings = PPOConfig(new_tokens=new)

    def rollout():
        return sample(cfg, graphdef, decoder, prompts, lengths, new_tokens=new, key=key)

    def rollout_and_experience():
        out = rollout()
        tokens, mask = join(prompts, lengths, out.tokens, out.mask)
        scores = jnp.zeros((args.batch,), jnp.float32)
        return experience(graphdef, settings, params, decoder, tokens, mask, scores, 0.05)

    contenders = [
        Contender("decode", lambda: generate(cfg, graphdef, decoder, prompts, new_tokens=new, sampler=Sampler(1.0))),
        Contender("rollout", rollout),
        Contender("rollout+experience", rollout_and_experience),
    ]
    timings = interleave(contenders, rounds=rounds, window_s=2.0)
    tokens = args.batch * new
    rates = {name: tokens / t.step_s for name, t in timings.items()}
    result = {
        "model": dataclasses.asdict(cfg),
        "batch": args.batch,
        "prompt": prompt_len,
        "new_tokens": new,
        "load_average": load_average(),
        "tokens_per_s": rates,
        "best_tokens_per_s": {name: tokens / t.best_step_s for name, t in timings.items()},
        "rollout_over_decode": rates["rollout"] / rates["decode"],
    }
    write_json(args.out, result)
    for name, rate in rates.items():
        print(f"{name:20s} {rate:10.1f} tokens/s  ({rate / rates['decode']:.2f}x decode)")
    print(f"results in {args.out}")
    return result


if __name__ == "__main__":
    main()
