"""How fast a train step could be if it were nothing but its matmuls, each at its own best rate.

MFU divides by the rate of one large square matmul. A model's matmuls are smaller and oddly
shaped (a 128-wide contraction, a vocabulary-wide output), and a CPU runs them well below that
rate. Timing every matmul of a step in isolation and adding them up gives the step time of a
perfect program around those kernels: the MFU no implementation built on them can exceed.
"""

from __future__ import annotations

import dataclasses
import functools

from scalelab.bench.shapes import Shape
from scalelab.model.counting import flops_per_token
from scalelab.runtime.peak import matmul_flops_rate


@dataclasses.dataclass(frozen=True)
class Matmul:
    """`count` x `batch` independent (m, k) x (k, n) products in one train step."""

    name: str
    count: int
    batch: int
    m: int
    k: int
    n: int

    @property
    def flops(self) -> int:
        """FLOPs of all `count` occurrences."""
        return 2 * self.count * self.batch * self.m * self.k * self.n


def _dense(name: str, count: int, tokens: int, d_in: int, d_out: int) -> list[Matmul]:
    """A weight matmul's forward, input gradient and weight gradient."""
    return [
        Matmul(name, count, 1, tokens, d_in, d_out),
        Matmul(f"{name} dx", count, 1, tokens, d_out, d_in),
        Matmul(f"{name} dw", count, 1, d_in, tokens, d_out),
    ]


def train_step_matmuls(shape: Shape) -> list[Matmul]:
    """Every matmul of one bf16 train step of `shape`'s GPT (full causal attention, no remat)."""
    cfg = shape.config().model
    tokens, d, layers = shape.tokens_per_step, cfg.d_model, cfg.n_layers
    q_out, kv_out = cfg.n_heads * cfg.dim_per_head, cfg.kv_heads * cfg.dim_per_head
    heads, t, hd = shape.batch_size * cfg.n_heads, shape.seq_len, cfg.dim_per_head
    attention = [
        # Forward scores and values; the backward recomputes the scores (model/attention.py).
        Matmul("q·k", 2 * layers, heads, t, hd, t),
        Matmul("p·v", layers, heads, t, t, hd),
        Matmul("do·v", layers, heads, t, hd, t),
        Matmul("p·do", layers, heads, t, t, hd),
        Matmul("ds·k", layers, heads, t, t, hd),
        Matmul("ds·q", layers, heads, t, t, hd),
    ]
    return [
        *_dense("q", layers, tokens, d, q_out),
        *_dense("k", layers, tokens, d, kv_out),
        *_dense("v", layers, tokens, d, kv_out),
        *_dense("attn out", layers, tokens, q_out, d),
        *_dense("ffn in", layers, tokens, d, cfg.ffn_dim * (2 if cfg.activation == "swiglu" else 1)),
        *_dense("ffn out", layers, tokens, cfg.ffn_dim, d),
        *attention,
        *_dense("head", 1, tokens, d, cfg.vocab_size),
    ]


@functools.cache
def _seconds(dtype: str, batch: int, m: int, k: int, n: int) -> float:
    return 2 * batch * m * k * n / matmul_flops_rate(dtype, batch, m, k, n)


def matmul_ceiling(shape: Shape, peak: float, dtype: str = "bfloat16") -> dict[str, float]:
    """Seconds a step's matmuls take back to back at their isolated rates, and the MFU that allows."""
    seconds = sum(mm.count * _seconds(dtype, mm.batch, mm.m, mm.k, mm.n) for mm in train_step_matmuls(shape))
    model_flops = flops_per_token(shape.config(dtype).model, shape.seq_len) * shape.tokens_per_step
    return {"matmul_s": seconds, "mfu_ceiling": model_flops / seconds / peak}
