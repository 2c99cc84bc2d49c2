"""The offline RLHF demonstration's data steps: corpus openings as SFT examples and prompts, and
preference pairs sampled from the SFT policy and labelled by VADER (posttrain/sentiment.py).

The chain (Makefile target posttrain-demo, docs/ppo.md) is ordinary commands:
pre-train -> `scalelab sentiment data` -> SFT -> `scalelab sentiment pairs` -> reward model ->
PPO at a few betas, and DPO -> `scalelab sentiment judge` (posttrain/demo_judge.py).

Files `sentiment data` writes into its folder:
- sft.jsonl: {"prompt", "completion"}: a line's opening words and what the corpus says next (train split),
- prompts.jsonl: {"prompt"}: other train-split openings, for pair sampling and PPO,
- heldout.jsonl: {"prompt"}: validation-split openings, for judging only.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import numpy as np

from scalelab.errors import UserError
from scalelab.posttrain.heads import base_params
from scalelab.posttrain.rollout import sample
from scalelab.posttrain.sentiment import (
    check_min_margin,
    label_pairs,
    openings,
    split_lines,
    write_jsonl,
)

SFT_FILE, PROMPTS_FILE, HELDOUT_FILE = "sft.jsonl", "prompts.jsonl", "heldout.jsonl"
PAIRS_FILE, HELDOUT_PAIRS_FILE = "pairs.jsonl", "pairs-heldout.jsonl"


@dataclasses.dataclass(frozen=True)
class DemoData:
    """How many examples of each kind, and their shape."""

    sft: int = 3000
    prompts: int = 3000
    heldout: int = 200
    prompt_words: int = 4  # words of a line given as the prompt
    completion_words: int = 10  # words of the rest of the line kept as the SFT completion
    min_words: int = 8  # lines shorter than this are not used
    seed: int = 0


def write_demo_data(out: Path, spec: DemoData = DemoData(), data: Any = None) -> dict[str, int]:
    """Write sft.jsonl, prompts.jsonl and heldout.jsonl into `out`; the counts written."""
    for name in ("sft", "prompts", "heldout"):  # a negative count would slice the others' share
        if getattr(spec, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(spec, name)}")
    train_lines = split_lines("train", spec.min_words, data)
    heldout_lines = split_lines("validation", spec.min_words, data)
    drawn = openings(train_lines, spec.sft + spec.prompts, spec.prompt_words, spec.seed)
    order = np.random.default_rng(spec.seed + 1).permutation(len(drawn))
    sft = [drawn[i] for i in order[: spec.sft]]
    prompts = [drawn[i][0] for i in order[spec.sft :]]
    heldout = [p for p, _ in openings(heldout_lines, spec.heldout, spec.prompt_words, spec.seed)]
    cut = lambda rest: " " + " ".join(rest.split()[: spec.completion_words])  # noqa: E731
    return {
        SFT_FILE: write_jsonl(out / SFT_FILE, ({"prompt": p, "completion": cut(c)} for p, c in sft)),
        PROMPTS_FILE: write_jsonl(out / PROMPTS_FILE, ({"prompt": p} for p in prompts)),
        HELDOUT_FILE: write_jsonl(out / HELDOUT_FILE, ({"prompt": p} for p in heldout)),
    }


def read_prompt_texts(path: Path, setting: str) -> list[str]:
    from scalelab.posttrain.records import read_prompts

    return [text for _, text in read_prompts(Path(path), setting)]


@dataclasses.dataclass
class Samples:
    """Sampled continuations of prompts, as text and as the token rows they were sampled as."""

    prompts: list[str]
    texts: list[str]
    tokens: np.ndarray  # (rows, width): EOS, prompt, response, padding
    response_mask: np.ndarray  # (rows, width) 1 on response tokens


def prompt_rows(tokenizer: Any, prompts: list[str], room: int) -> tuple[np.ndarray, np.ndarray]:
    """EOS + prompt ids right-padded to the longest (refused beyond `room` tokens), and their lengths."""
    encoded = [[tokenizer.eos_id, *tokenizer.encode(p)] for p in prompts]
    width = max(len(ids) for ids in encoded)
    if width > room:
        raise UserError(
            f"a prompt takes {width} tokens, more than the {room} that model.max_seq_len leaves after the new tokens; "
            "use shorter prompts or lower --new-tokens"
        )
    rows, lengths = np.zeros((len(prompts), width), np.int32), np.array([len(i) for i in encoded], np.int32)
    for row, ids in enumerate(encoded):
        rows[row, : len(ids)] = ids
    return rows, lengths


def sample_texts(
    run: Any, prompts: list[str], new_tokens: int, seed: int, batch: int = 256, desc: str = "sampling"
) -> Samples:
    """Continue each prompt once with `run` (inference.generate.LoadedRun) at temperature 1, cut at EOS;
    a progress bar (labelled `desc`) counts the prompts."""
    from scalelab.posttrain.ppo import shared_graphdef
    from scalelab.posttrain.rollout import join
    from scalelab.runtime.progress import progress_bar

    cfg, tokenizer = run.cfg.model, run.tokenizer
    params = base_params(run.params)
    room = cfg.max_seq_len - new_tokens
    if room < 2:  # EOS and at least one prompt token
        raise UserError(
            f"--new-tokens {new_tokens} leaves no room for a prompt in model.max_seq_len={cfg.max_seq_len}; give at "
            f"most {cfg.max_seq_len - 2}"
        )
    rows, lengths = prompt_rows(tokenizer, prompts, room)
    texts, tokens, masks = [], [], []
    bar = progress_bar(total=len(prompts), desc=desc, unit="prompt", leave=False)
    for start in range(0, len(prompts), batch):
        part = slice(start, start + batch)
        size = len(prompts[part])
        # Pad the last chunk to the batch size: one compiled program serves every chunk.
        p, n = np.zeros((batch, rows.shape[1]), np.int32), np.ones(batch, np.int32)
        p[:size], n[:size] = rows[part], lengths[part]
        key = jax.random.fold_in(jax.random.key(seed), start)
        out = sample(cfg, shared_graphdef(cfg), params, p, n, new_tokens=new_tokens, key=key, eos_id=tokenizer.eos_id)
        joined, mask = join(p, n, out.tokens, out.mask)
        response, kept = np.asarray(out.tokens)[:size], np.asarray(out.mask)[:size]
        for ids, m in zip(response, kept, strict=True):
            ids = [int(i) for i, keep in zip(ids, m, strict=True) if keep and i != tokenizer.eos_id]
            texts.append(tokenizer.decode(ids))
        tokens.append(np.asarray(joined)[:size])
        masks.append(np.asarray(mask)[:size])
        bar.update(size)
    bar.close()
    return Samples(list(prompts), texts, np.concatenate(tokens), np.concatenate(masks))


def write_pairs(
    sft_dir: Path,
    prompts_file: Path,
    out: Path,
    new_tokens: int,
    heldout_fraction: float = 0.1,
    seed: int = 0,
    *,
    min_margin: float,
) -> dict[str, Any]:
    """Two continuations per prompt from the SFT run, VADER-labelled, as pairs.jsonl and pairs-heldout.jsonl.

    The held-out pairs come from a separate share of the prompts; the reward model's accuracy on them
    is its agreement with VADER on responses it never trained on. Pairs whose VADER scores differ by
    less than `min_margin` are dropped before the split, so training and held-out pairs pass the same filter.
    """
    from scalelab.inference.generate import load_run
    from scalelab.posttrain.runs import check_policy_run

    check_min_margin(min_margin)  # before minutes of sampling
    if new_tokens < 1:
        raise UserError(f"--new-tokens must be at least 1, got {new_tokens}")
    check_policy_run("SFT_RUN", Path(sft_dir))
    run = load_run(Path(sft_dir))
    prompts = read_prompt_texts(prompts_file, "PROMPTS")
    first = sample_texts(run, prompts, new_tokens, seed, desc="first continuations")
    second = sample_texts(run, prompts, new_tokens, seed + 1, desc="second continuations")
    records, dropped = label_pairs(prompts, first.texts, second.texts, min_margin)
    held = round(len(records) * heldout_fraction)
    counts = {
        PAIRS_FILE: write_jsonl(out / PAIRS_FILE, records[held:]),
        HELDOUT_PAIRS_FILE: write_jsonl(out / HELDOUT_PAIRS_FILE, records[:held]),
    }
    return {**counts, **dropped, "min_margin": min_margin}
