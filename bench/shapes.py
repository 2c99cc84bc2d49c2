"""The benchmark's model shapes and the scalelab configs built from them.

Every rung shares one GPT architecture (pre-norm LayerNorm, GELU, learned positions, tied
embeddings, no linear biases) so the PyTorch baseline in bench/torch_gpt.py matches it exactly.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scalelab.train.config import Config


@dataclasses.dataclass(frozen=True)
class Shape:
    """One benchmark configuration: model shape and the tokens each step trains on."""

    name: str
    d_model: int
    n_layers: int
    n_heads: int
    seq_len: int
    batch_size: int
    vocab_size: int
    accelerator_only: bool = False  # too slow to step on a CPU; benchmarked where a GPU or TPU is

    @property
    def tokens_per_step(self) -> int:
        """Tokens trained on per optimizer step."""
        return self.batch_size * self.seq_len

    def with_layers(self, n_layers: int) -> Shape:
        """This shape at another depth (for the depth sweep)."""
        return dataclasses.replace(self, name=f"{self.name}-L{n_layers}", n_layers=n_layers)

    def config(
        self,
        dtype: str = "bfloat16",
        remat: str = "none",
        scan_layers: bool = True,
        unroll_max_layers: int | None = None,
        overrides: tuple[str, ...] = (),
    ) -> Config:
        """The scalelab config of this shape: synthetic data, AdamW, no evaluation, quiet logging.

        `overrides` are `--set`-style strings (`model.attention_impl=xla`) applied last, so a benchmark
        can try a config key without this module naming it.
        """
        # Imported here: the CLI lists the shapes' names, and the config modules import JAX.
        from scalelab.train.config_io import config_from_dict

        return config_from_dict(
            {
                "name": self.name,
                "model": {
                    "family": "gpt",
                    "vocab_size": self.vocab_size,
                    "d_model": self.d_model,
                    "n_layers": self.n_layers,
                    "n_heads": self.n_heads,
                    "max_seq_len": self.seq_len,
                    "activation": "gelu",
                    "norm": "layernorm",
                    "position": "learned",
                    "use_bias": False,
                    "tie_embeddings": True,
                    "dtype": dtype,
                    "remat": remat,
                    "scan_layers": scan_layers,
                    "unroll_max_layers": unroll_max_layers,
                },
                "optimizer": {"lr": 3e-4, "weight_decay": 0.1, "clip_norm": 1.0},
                "schedule": {"name": "constant"},
                "train": {
                    "steps": 1000,
                    "batch_size": self.batch_size,
                    "seq_len": self.seq_len,
                    "eval_every": 0,
                },
                "logging": {"tensorboard": False, "progress": False},
            },
            overrides,
        )


# From gpt-tiny's shape up; the two `ref-*` rungs are the nanoGPT reference shapes.
LADDER: tuple[Shape, ...] = (
    Shape("tiny", d_model=64, n_layers=2, n_heads=4, seq_len=64, batch_size=16, vocab_size=256),
    Shape("ref-128", d_model=128, n_layers=2, n_heads=4, seq_len=128, batch_size=16, vocab_size=4096),
    Shape("d256", d_model=256, n_layers=4, n_heads=4, seq_len=256, batch_size=8, vocab_size=8192),
    Shape("ref-512", d_model=512, n_layers=4, n_heads=8, seq_len=256, batch_size=8, vocab_size=8192),
    Shape("d768", d_model=768, n_layers=8, n_heads=12, seq_len=256, batch_size=8, vocab_size=8192),
    Shape("d1024", d_model=1024, n_layers=12, n_heads=16, seq_len=256, batch_size=8, vocab_size=8192),
    Shape(
        "gpt-350m",
        d_model=1024,
        n_layers=24,
        n_heads=16,
        seq_len=1024,
        batch_size=16,
        vocab_size=50304,
        accelerator_only=True,
    ),
    Shape(
        "gpt-1b",
        d_model=2048,
        n_layers=18,
        n_heads=16,
        seq_len=2048,
        batch_size=8,
        vocab_size=50304,
        accelerator_only=True,
    ),
)
# `bench --quick` must finish in about 3 minutes on a 2-core CPU: ref-512 alone took minutes there.
QUICK_LADDER: tuple[str, ...] = ("tiny", "ref-128")

# The depth sweep's base: small enough that 48 layers still steps in seconds on a CPU.
DEPTH_BASE = Shape("depth", d_model=128, n_layers=4, n_heads=4, seq_len=128, batch_size=8, vocab_size=4096)
DEPTHS: tuple[int, ...] = (4, 8, 16, 32, 48)
QUICK_DEPTHS: tuple[int, ...] = (4, 48)


def by_name(names: list[str] | tuple[str, ...]) -> list[Shape]:
    """Ladder rungs by name, in ladder order; an unknown name is an error listing the valid ones."""
    known = {shape.name: shape for shape in LADDER}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown ladder rung(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    return [shape for shape in LADDER if shape.name in names]
