"""Judging the RLHF demonstration: VADER on held-out prompts against the KL to the SFT reference.

Each judged run continues every held-out prompt `samples` times at temperature 1. Its score is the
mean VADER compound score of those continuations (the "human" PPO and DPO never saw); its KL is
the mean over samples of sum_t log pi(y_t) - log pi_ref(y_t) on the response tokens, an unbiased
estimate of KL(pi || pi_ref) per response. Reward hacking shows in the words: the summary counts
how often the commonest words recur and how many distinct words the continuations use.

Outputs in OUT: summary.json, summary.md (a table and example continuations) and reward_kl.png/.svg
(held-out VADER against KL per run, and each PPO run's training curve of reward-model score against KL).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scalelab.errors import UserError
from scalelab.posttrain.demo import read_prompt_texts, sample_texts
from scalelab.posttrain.heads import base_params
from scalelab.posttrain.losses import token_logprobs
from scalelab.posttrain.ppo_policy import hidden_and_logits
from scalelab.posttrain.sentiment import vader

WORD = re.compile(r"[a-z']+")


@functools.partial(jax.jit, static_argnames="graphdef")
def _summed_logprobs(graphdef: Any, params: Any, tokens: jax.Array, response_mask: jax.Array) -> jax.Array:
    logits = hidden_and_logits(graphdef, params, tokens[:, :-1])[1]
    return (token_logprobs(logits, tokens[:, 1:]) * response_mask[:, 1:]).sum(axis=1)


def response_logprobs(cfg: Any, params: Any, tokens: np.ndarray, mask: np.ndarray, batch: int = 256) -> np.ndarray:
    """Summed log-probability of each row's response tokens under a gpt model's `params`."""
    from scalelab.posttrain.ppo import shared_graphdef

    out = []
    for start in range(0, len(tokens), batch):
        t, m = tokens[start : start + batch], mask[start : start + batch]
        pad = batch - len(t)  # one compiled shape for every chunk
        t, m = np.pad(t, ((0, pad), (0, 0))), np.pad(m, ((0, pad), (0, 0)))
        out.append(
            np.asarray(_summed_logprobs(shared_graphdef(cfg), params, jnp.asarray(t), jnp.asarray(m)))[: batch - pad]
        )
    return np.concatenate(out)


def word_stats(texts: list[str]) -> dict[str, Any]:
    """Distinct-word share, words per continuation, and the commonest words with their share of all words."""
    words = [w for text in texts for w in WORD.findall(text.lower())]
    counts = collections.Counter(words)
    total = max(len(words), 1)
    return {
        "words_per_continuation": len(words) / max(len(texts), 1),
        "distinct_word_share": len(counts) / total,
        "top_words": [[w, round(c / total, 4)] for w, c in counts.most_common(8)],
        "repeated_within_continuation": float(np.mean([_repeats(t) for t in texts])) if texts else 0.0,
    }


def _repeats(text: str) -> float:
    words = WORD.findall(text.lower())
    return 0.0 if not words else 1.0 - len(set(words)) / len(words)


@dataclasses.dataclass
class Judged:
    name: str
    stage: str
    beta: float | None
    vader_mean: float
    vader_stderr: float
    positive_share: float
    kl: float
    kl_stderr: float
    words: dict[str, Any]
    examples: list[list[str]]
    curve: list[list[float]]  # PPO: [kl, reward-model score] per training step


def judge_run(run_dir: Path, reference: Any, prompts: list[str], new_tokens: int, samples: int, seed: int) -> Judged:
    from scalelab.inference.generate import load_run
    from scalelab.train.metrics import read_metrics

    run = load_run(run_dir)
    repeated = [p for p in prompts for _ in range(samples)]
    drawn = sample_texts(run, repeated, new_tokens, seed, desc=f"judging {run_dir.name}")
    scores = vader(drawn.texts)
    own = response_logprobs(run.cfg.model, base_params(run.params), drawn.tokens, drawn.response_mask)
    ref = response_logprobs(reference.cfg.model, base_params(reference.params), drawn.tokens, drawn.response_mask)
    kl = own - ref
    stage = run.cfg.posttrain.stage
    curve = []
    if stage == "ppo":
        curve = [[r["kl"], r["reward"]] for r in read_metrics(run_dir) if "kl" in r]
    return Judged(
        name=run_dir.name,
        stage=stage,
        beta=run.cfg.posttrain.beta if stage in ("ppo", "dpo") else None,
        vader_mean=float(scores.mean()),
        vader_stderr=float(scores.std() / np.sqrt(len(scores))),
        positive_share=float((scores > 0.05).mean()),
        kl=float(kl.mean()),
        kl_stderr=float(kl.std() / np.sqrt(len(kl))),
        words=word_stats(drawn.texts),
        examples=[[p, t] for p, t in zip(drawn.prompts[::samples][:4], drawn.texts[::samples][:4], strict=True)],
        curve=curve,
    )


def sft_target(pretrained_dir: Path, sft_dir: Path) -> dict[str, Any]:
    """The SFT target: completion loss (mean negative log-likelihood per completion token, final EOS included) of
    the pre-trained run and of the SFT run on the SFT run's own held-out examples (its eval_file, or the share of
    its train_file it held out), each example alone in its row."""
    from scalelab.inference.generate import load_run
    from scalelab.posttrain.sources import SFTSource
    from scalelab.train.config_io import load_config

    held = SFTSource(load_config(Path(sft_dir) / "config.yaml")).eval_seqs
    width = max(len(seq.inputs) for seq in held) + 1
    tokens, mask = np.zeros((len(held), width), np.int32), np.zeros((len(held), width), np.float32)
    for row, seq in enumerate(held):  # tokens = inputs + the last target; mask[t] weighs the target tokens[t]
        tokens[row, : len(seq.inputs) + 1] = [*seq.inputs, seq.targets[-1]]
        mask[row, 1 : len(seq.inputs) + 1] = seq.weights
    losses = {}
    for name, run_dir in (("pretrained", pretrained_dir), ("sft", sft_dir)):
        run = load_run(Path(run_dir))
        summed = response_logprobs(run.cfg.model, base_params(run.params), tokens, mask)
        losses[name] = float(-summed.sum() / mask.sum())
    return {
        "pretrained_run": str(pretrained_dir),
        "heldout_examples": len(held),
        "completion_tokens": int(mask.sum()),
        "pretrained_loss": losses["pretrained"],
        "sft_loss": losses["sft"],
        "met": losses["sft"] < losses["pretrained"],
    }


MARGINS = (0.0, 0.25, 0.5)  # buckets of the VADER difference between chosen and rejected


def reward_accuracy(reward_dir: Path, pairs_file: Path, batch: int = 256) -> dict[str, Any]:
    """A reward-model run's pairwise agreement with VADER on preference pairs, overall and by VADER margin."""
    from scalelab.inference.generate import load_run
    from scalelab.posttrain.ppo import shared_graphdef
    from scalelab.posttrain.ppo_run import score
    from scalelab.posttrain.records import read_pairs

    run = load_run(Path(reward_dir))
    tok, eos = run.tokenizer, run.tokenizer.eos_id
    pairs = read_pairs(Path(pairs_file), "--reward-model's PAIRS")
    rows = []
    for pair in pairs:
        prompt = [eos, *tok.encode(pair.prompt)]
        rows += [(prompt, tok.encode(pair.chosen)), (prompt, tok.encode(pair.rejected))]
    width = max(len(p) + len(c) for p, c in rows)
    tokens, mask = np.zeros((len(rows), width), np.int32), np.zeros((len(rows), width), np.float32)
    for i, (p, c) in enumerate(rows):
        tokens[i, : len(p) + len(c)] = p + c
        mask[i, len(p) : len(p) + len(c)] = 1.0
    graphdef, scores = shared_graphdef(run.cfg.model), []
    for start in range(0, len(rows), batch):
        t, m = tokens[start : start + batch], mask[start : start + batch]
        pad = batch - len(t)
        t, m = np.pad(t, ((0, pad), (0, 0))), np.pad(m, ((0, pad), (0, 0)), constant_values=1.0)
        scores.append(np.asarray(score(graphdef, eos, run.params, jnp.asarray(t), jnp.asarray(m)))[: batch - pad])
    values = np.concatenate(scores)
    right = values[0::2] > values[1::2]
    margin = vader(p.chosen for p in pairs) - vader(p.rejected for p in pairs)
    buckets = {}
    for low, high in zip(MARGINS, (*MARGINS[1:], np.inf), strict=True):
        inside = (margin >= low) & (margin < high)
        buckets[f"{low}-{high}"] = {
            "pairs": int(inside.sum()),
            "accuracy": float(right[inside].mean()) if inside.any() else None,
        }
    return {"pairs": len(pairs), "accuracy": float(right.mean()), "by_vader_margin": buckets}


def check_judge_inputs(
    runs: list[Path], reference: Path, new_tokens: int, samples: int, reward: Any, pretrained: Path | None
) -> None:
    """Every run is checked before the first one samples for minutes."""
    from scalelab.posttrain.runs import check_policy_run, check_reward_run

    if samples < 1 or new_tokens < 1:
        flag, value = ("--samples", samples) if samples < 1 else ("--new-tokens", new_tokens)
        raise UserError(f"{flag} must be at least 1, got {value}")
    for run in runs:
        check_policy_run("RUN_DIR", Path(run))
    check_policy_run("--reference", Path(reference))
    if pretrained is not None:
        check_policy_run("--pretrained", Path(pretrained))
    if reward is not None:
        check_reward_run("--reward-model", Path(reward[0]))


def judge(
    runs: list[Path],
    reference: Path,
    heldout: Path,
    out: Path,
    new_tokens: int,
    samples: int = 4,
    seed: int = 1234,
    reward: tuple[Path, Path] | None = None,
    pretrained: Path | None = None,
) -> list[Judged]:
    """Judge each run against the reference on the held-out prompts; write the summary and the plot into `out`.
    `reward` = (reward-model run, held-out pairs) adds that model's agreement with VADER; `pretrained` (the run
    the reference SFT run started from) adds the SFT target (`sft_target`)."""
    from scalelab.inference.generate import load_run

    check_judge_inputs(runs, reference, new_tokens, samples, reward, pretrained)
    prompts = read_prompt_texts(heldout, "--prompts")
    ref = load_run(Path(reference))
    judged = [judge_run(Path(r), ref, prompts, new_tokens, samples, seed) for r in runs]
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "heldout_prompts": len(prompts),
        "samples_per_prompt": samples,
        "new_tokens": new_tokens,
        "reference": str(reference),
        "reward_model": None if reward is None else {"run": str(reward[0]), **reward_accuracy(*reward)},
        "sft_target": None if pretrained is None else sft_target(Path(pretrained), Path(reference)),
        "runs": [dataclasses.asdict(j) for j in judged],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "summary.md").write_text(markdown(judged, summary))
    plot(judged, out)
    return judged


def markdown(judged: list[Judged], summary: dict[str, Any]) -> str:
    lines = [
        f"Held-out judgement: {summary['heldout_prompts']} validation-split prompts x {summary['samples_per_prompt']} "
        f"samples, up to {summary['new_tokens']} tokens, temperature 1; KL to {summary['reference']}.",
        "",
        "| run | stage | beta | mean VADER (± s.e.) | positive share | KL to reference (± s.e.) | distinct words | "
        "top words |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for j in judged:
        top = ", ".join(f"{w} {s:.0%}" for w, s in j.words["top_words"][:4])
        beta = "" if j.beta is None else f"{j.beta:g}"
        lines.append(
            f"| {j.name} | {j.stage} | {beta} | {j.vader_mean:+.3f} ± {j.vader_stderr:.3f} | {j.positive_share:.0%} | "
            f"{j.kl:.2f} ± {j.kl_stderr:.2f} | {j.words['distinct_word_share']:.0%} | {top} |"
        )
    rm = summary.get("reward_model")
    if rm:
        parts = ", ".join(
            f"ΔVADER {k}: {v['accuracy']:.0%} of {v['pairs']}" for k, v in rm["by_vader_margin"].items() if v["pairs"]
        )
        lines += ["", f"Reward model {rm['run']}: held-out pairwise accuracy against VADER {rm['accuracy']:.1%} "
                  f"({rm['pairs']} pairs; by margin {parts})."]  # fmt: skip
    sft = summary.get("sft_target")
    if sft:
        verdict = "below" if sft["met"] else "NOT below"
        lines += ["", f"SFT target: held-out completion loss {sft['sft_loss']:.3f} (SFT) is {verdict} "
                  f"{sft['pretrained_loss']:.3f} (pre-trained {sft['pretrained_run']}) on the SFT run's "
                  f"{sft['heldout_examples']} held-out examples ({sft['completion_tokens']} completion tokens)."]  # fmt: skip
    lines += ["", "Example continuations (prompt → continuation):", ""]
    for j in judged:
        lines.append(f"- **{j.name}**: " + " / ".join(f"*{p}* →{t!r}" for p, t in j.examples[:3]))
    return "\n".join(lines) + "\n"


def plot(judged: list[Judged], out: Path) -> list[Path]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5))
    left, right = fig.subplots(1, 2)
    for j in judged:
        left.errorbar(j.kl, j.vader_mean, xerr=j.kl_stderr, yerr=j.vader_stderr, fmt="o", capsize=3)
        label = j.name if j.beta is None else f"{j.name} (β={j.beta:g})"
        left.annotate(label, (j.kl, j.vader_mean), textcoords="offset points", xytext=(5, 5), fontsize=8)
        if j.curve:
            curve = np.asarray(j.curve)
            right.plot(curve[:, 0], curve[:, 1], "-", marker=".", label=f"β={j.beta:g}")
    left.set(xlabel="KL(policy || SFT reference) per response (nats)", ylabel="mean VADER compound, held-out prompts")
    left.set_title("Held-out sentiment against KL")
    right.set(xlabel="KL per response during PPO (nats)", ylabel="mean reward-model score of the rollouts")
    right.set_title("PPO training: reward against KL, per β")
    if any(j.curve for j in judged):
        right.legend()
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    paths = [out / "reward_kl.png", out / "reward_kl.svg"]
    fig.savefig(paths[0], dpi=130)
    fig.savefig(paths[1])
    return paths
