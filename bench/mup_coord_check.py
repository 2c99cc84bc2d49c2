"""µP's coordinate check: how much each layer's output moves in a few Adam steps, against width.

Under a parametrization whose learning rate transfers across width, one step changes every
activation coordinate by an amount that does not depend on width. Under the standard one, Adam's
per-coordinate steps add up over the fan-in, so the change grows with width, fastest in the
logits. This trains the same tiny GPT at several widths for a few steps at one fixed learning
rate, with the real model and optimizer (train/optim.py's per-parameter learning rates), and
records the RMS change from initialization of each block's output and of the logits on a fixed
batch. The test (tests/model/test_mup.py) checks its ratios; this command draws them:

    python -m scalelab.bench.mup_coord_check --out docs/images/mup-coord-check.png
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from scalelab.model.functional import describe
from scalelab.model.stack import block_fn
from scalelab.train.config_io import load_config
from scalelab.train.optim import make_optimizer

WIDTHS = (16, 32, 64, 128)
BASE_WIDTH = 16
STEPS = 4


def coordinate_check(
    parametrization: str,
    widths: Sequence[int] = WIDTHS,
    *,
    base_width: int = BASE_WIDTH,
    steps: int = STEPS,
    lr: float = 1e-2,
    n_layers: int = 2,
    n_heads: int = 2,
    seq_len: int = 16,
    batch_size: int = 8,
    seed: int = 0,
) -> dict[str, list[float]]:
    """{layer name: RMS change of its output after `steps` Adam steps, one value per width}.

    The layers are `block 1`.. `block n` (the residual stream after each block) and `logits`.
    n_heads stays fixed, so the head width grows with d_model and µP's attention scale is exercised.
    """
    tokens = np.random.default_rng(seed).integers(0, 256, (batch_size, seq_len + 1), dtype=np.int32)
    batch = {"inputs": jnp.asarray(tokens[:, :-1])}
    targets = jnp.asarray(tokens[:, 1:])
    changes: dict[str, list[float]] = {}
    for width in widths:
        cfg = load_config(
            "gpt-tiny",
            [
                f"model.d_model={width}",
                f"model.n_layers={n_layers}",
                f"model.n_heads={n_heads}",
                f"model.max_seq_len={seq_len}",
                "model.dtype=float32",
                f"model.parametrization={parametrization}",
                f"model.mup_base_width={base_width}",
                f"optimizer.lr={lr}",
                "optimizer.weight_decay=0.0",
                "optimizer.clip_norm=null",
                "schedule.name=constant",
                "schedule.warmup_steps=0",
                f"train.steps={steps}",
                f"train.seq_len={seq_len}",
            ],
        )
        for name, change in _layer_changes(cfg, batch, targets, steps, seed).items():
            changes.setdefault(name, []).append(change)
    return changes


def _layer_changes(cfg, batch, targets, steps: int, seed: int) -> dict[str, float]:
    model = describe(cfg.model)
    tx = make_optimizer(cfg, model.axes)
    n_layers = cfg.model.n_layers

    def outputs(params) -> list[jax.Array]:
        """Each block's output and the logits, from a runner that keeps what every layer returns."""
        kept: list[jax.Array] = []

        def runner(graphdef, state, x, inputs, keys, remat):
            apply = block_fn(graphdef, remat)
            for i in range(n_layers):
                x = apply(x, jax.tree.map(lambda a, i=i: a[i], state), inputs, None)
                kept.append(x)
            return x

        logits = model.apply(params, batch, runner=runner)
        return [*kept, logits]

    @jax.jit
    def train_step(params, opt_state):
        def loss(p):
            logits = model.apply(p, batch)
            return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    params = model.init(seed)
    measure = jax.jit(outputs)
    before = measure(params)
    opt_state = jax.jit(tx.init)(params)
    for _ in range(steps):
        params, opt_state = train_step(params, opt_state)
    after = measure(params)
    names = [f"block {i + 1}" for i in range(n_layers)] + ["logits"]
    return {
        name: float(np.sqrt(np.mean(np.square(np.asarray(a, np.float64) - np.asarray(b, np.float64)))))
        for name, a, b in zip(names, after, before, strict=True)
    }


def plot(
    results: dict[str, dict[str, list[float]]], widths: Sequence[int], out: Path, base_width: int, steps: int = STEPS
) -> None:
    """Two panels (one per parametrization) of each layer's change against width, log-log; PNG and SVG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), sharey=True)
    for ax, (parametrization, changes) in zip(np.atleast_1d(axes), results.items(), strict=True):
        for name, values in changes.items():
            ax.plot(widths, values, marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(list(widths), [str(w) for w in widths])
        ax.set_xlabel("width (d_model)")
        ax.set_title(f"{parametrization}" + (f" (base width {base_width})" if parametrization == "mup" else ""))
        ax.grid(True, which="both", alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel(f"RMS change of the output after {steps} Adam steps")
    np.atleast_1d(axes)[0].legend()
    fig.suptitle("Coordinate check: the same learning rate at every width")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    fig.savefig(out.with_suffix(".svg"))
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("mup-coord-check.png"), help="the PNG (an SVG goes beside it)")
    parser.add_argument("--widths", type=int, nargs="+", default=list(WIDTHS))
    parser.add_argument("--base-width", type=int, default=BASE_WIDTH)
    args = parser.parse_args(argv)
    results = {p: coordinate_check(p, args.widths, base_width=args.base_width) for p in ("standard", "mup")}
    for parametrization, changes in results.items():
        for name, values in changes.items():
            ratio = values[-1] / values[0]
            print(f"{parametrization:9s} {name:8s} " + " ".join(f"{v:.3g}" for v in values) + f"  ratio {ratio:.2f}")
    plot(results, args.widths, args.out, args.base_width)
    print(f"wrote {args.out} and {args.out.with_suffix('.svg')}")


if __name__ == "__main__":
    main()
