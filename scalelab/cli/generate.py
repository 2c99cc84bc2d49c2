"""`scalelab generate`: continue prompts with a trained gpt run, or answer them with a t5 run."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from scalelab.cli.posttrain import load_stages
from scalelab.errors import UserError
from scalelab.inference.quant_modes import KV_CACHE_DTYPES, MODES

DEFAULT_NEW_TOKENS = 64


def register_generate(subparsers: argparse._SubParsersAction) -> None:
    """Add the `generate` subcommand."""
    parser = subparsers.add_parser(
        "generate",
        help="continue prompts with a trained gpt run (or decode from them with a t5 run)",
        description=(
            "Continue prompts with the newest checkpoint of a gpt run, decoding with a KV cache; a t5 run reads\n"
            "each prompt with its encoder and prints what its decoder writes.\n"
            "Prompts are text (encoded with the run's tokenizer) or, for runs without one, token ids."
        ),
        epilog=(
            "examples: scalelab generate runs/gpt-tiny-text --prompt 'To be, or not' --max-new-tokens 40 --top-p 0.9\n"
            "          scalelab generate runs/gpt-tiny --prompt-ids 3,17,42 --temperature 0\n"
            "          scalelab generate runs/t5-tiny --prompt-ids 5,9,12,30 --temperature 0   (the ids are the encoder's input)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="a run directory written by scalelab train")
    prompts = parser.add_mutually_exclusive_group(required=True)
    prompts.add_argument(
        "--prompt",
        action="append",
        metavar="TEXT",
        help="text to continue (repeatable: the prompts are decoded together as one batch)",
    )
    prompts.add_argument(
        "--prompt-ids",
        action="append",
        metavar="ID,ID,...",
        help="token ids to continue, comma-separated (repeatable); runs on data.source=synthetic have no "
        "tokenizer and take only these",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help=f"tokens to generate per prompt (default {DEFAULT_NEW_TOKENS}, or as many as fit in model.max_seq_len); "
        "text output stops early at an end-of-document token",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="sampling temperature: logits are divided by it; 0 picks the likeliest token (greedy) (default 1.0)",
    )
    parser.add_argument(
        "--top-k", type=int, default=None, help="sample only among the k likeliest tokens (default: all of them)"
    )
    parser.add_argument(
        "--top-p",
        type=float,
        default=None,
        metavar="P",
        help="nucleus sampling: sample only among the fewest likeliest tokens whose probabilities add up to P, "
        "after --top-k (default: all of them)",
    )
    parser.add_argument("--seed", type=int, default=0, help="sampling seed; the same seed gives the same text")
    parser.add_argument(
        "--quantize",
        choices=tuple(MODES),
        default=None,
        help="quantize the weights first (docs/quantization.md): "
        + "; ".join(f"{m.name}: {m.help}" for m in MODES.values())
        + " (calibrated on the prompts)",
    )
    parser.add_argument(
        "--kv-cache",
        choices=KV_CACHE_DTYPES,
        default="model",
        help="model: keys and values in the model's compute dtype; int8: int8 with a scale per token and head, "
        "about half the bytes of bf16 (default model)",
    )
    parser.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    """Load the run, decode every prompt as one batch and print the continuations."""
    import jax

    from scalelab.data.objectives import START_ID
    from scalelab.inference.calibrate import calibrate
    from scalelab.inference.decode import Sampler, decoder_prefix, generate
    from scalelab.inference.generate import load_run, parse_ids, right_padded
    from scalelab.inference.quantize import check_params, quantize, report

    load_stages()  # the run may be a post-training stage's

    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise UserError(f"--temperature must be a finite number >= 0 (0 is greedy), got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise UserError(f"--top-k must be at least 1 (or left out for the whole vocabulary), got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:  # also refuses nan
        raise UserError(f"--top-p must be a probability above 0 and at most 1 (1 keeps every token), got {args.top_p}")
    sampler = Sampler(args.temperature, args.top_k, args.top_p)
    run = load_run(args.run_dir)
    if hasattr(run.model, "base"):  # a PPO policy carries its value head (posttrain/heads.py): decode with the decoder
        decoder = {key: value for key, value in run.params.items() if key in run.model.base.shapes}
        run = dataclasses.replace(run, model=run.model.base, params=decoder)
    if args.prompt is not None and run.tokenizer is None:
        raise UserError(
            f"{args.run_dir} trained on data.source={run.cfg.data.source}, which has no tokenizer to encode "
            "text; give token ids with --prompt-ids 3,17,42"
        )
    prompts = (
        [run.tokenizer.encode(text) for text in args.prompt]
        if args.prompt is not None
        else parse_ids(args.prompt_ids, run.cfg.model.vocab_size)
    )
    padded, lengths = right_padded(prompts)
    t5 = run.cfg.model.family == "t5"
    room = run.cfg.model.max_seq_len - decoder_prefix(run.cfg.model, padded.shape[1])
    if args.max_new_tokens is None and room < 1:
        raise UserError(
            f"the prompt has {padded.shape[1]} tokens, which leaves no room in model.max_seq_len="
            f"{run.cfg.model.max_seq_len}; shorten it to at most {run.cfg.model.max_seq_len - 1} tokens"
        )
    new_tokens = args.max_new_tokens or min(DEFAULT_NEW_TOKENS, room)
    params = run.params
    note = f"step {run.step_dir.name} of {args.run_dir}"
    if args.quantize is not None:
        check_params(run.params, run.model.shapes, run.cfg.model.family)
        scales = None
        if MODES[args.quantize].activations == "calibrated":
            batch = {"inputs": padded, "segment_ids": (np.arange(padded.shape[1]) < lengths[:, None]).astype(np.int32)}
            if t5:
                batch["decoder_inputs"] = np.full((len(padded), 1), START_ID, np.int32)
            scales = calibrate(run.model, run.params, [batch])
        params = quantize(run.params, run.model.axes, args.quantize, scales)
        note += f"; {report(run.params, params).describe()}"
    start = time.perf_counter()
    tokens = generate(
        run.cfg.model,
        run.model.graphdef,
        params,
        padded,
        lengths,
        new_tokens=new_tokens,
        seed=args.seed,
        sampler=sampler,
        start_id=START_ID if t5 else None,
        kv_dtype=args.kv_cache,
    )
    tokens = np.asarray(jax.device_get(tokens))
    seconds = time.perf_counter() - start
    print(f"scalelab generate: {note}; {tokens.size} tokens in {seconds:.2f} s (compile included)", file=sys.stderr)
    for row, prompt in enumerate(prompts):
        if args.prompt is not None:
            print(_continuation_text(run.tokenizer, "" if t5 else args.prompt[row], tokens[row]))
        else:
            text = "" if run.tokenizer is None else f"  {run.tokenizer.decode(tokens[row], special=True)!r}"
            print(" ".join(str(i) for i in [*prompt, "|", *tokens[row].tolist()]) + text)
    return 0


def _continuation_text(tokenizer: Any, prompt: str, tokens: np.ndarray) -> str:
    """The prompt (empty for t5, whose output is not a continuation) and the decoded tokens, cut at the first
    end-of-document token."""
    ids = tokens.tolist()
    if tokenizer.eos_id in ids:
        ids = ids[: ids.index(tokenizer.eos_id)]
    # Reserved pieces by name: a span-corruption t5 answers in sentinels, which plain decoding drops.
    return f"{prompt}{tokenizer.decode(ids, special=True)}\n"
