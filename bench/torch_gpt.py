"""A plain PyTorch GPT and its AdamW train step: the baseline scalelab's throughput is compared with.

It has the bench ladder's architecture (pre-norm LayerNorm blocks, tanh-GELU MLP, learned
positions, tied embeddings, no linear biases) so both sides do the same work per token.
torch is an optional extra (`pip install -e '.[bench]'`); nothing here is imported without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from scalelab.bench.shapes import Shape

# (precision, compiled) of the four variants, named as the tables print them.
VARIANTS: dict[str, tuple[str, bool]] = {
    "torch-fp32-eager": ("float32", False),
    "torch-fp32-compile": ("float32", True),
    "torch-bf16-eager": ("bfloat16", False),
    "torch-bf16-compile": ("bfloat16", True),
}


class Block(nn.Module):
    """x + Attn(LN(x)), then x + MLP(LN(x)); attention by the fused causal SDPA kernel."""

    def __init__(self, shape: Shape, eps: float):
        super().__init__()
        d = shape.d_model
        self.n_heads = shape.n_heads
        self.ln1 = nn.LayerNorm(d, eps=eps)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.ln2 = nn.LayerNorm(d, eps=eps)
        self.fc = nn.Linear(d, 4 * d, bias=False)
        self.out = nn.Linear(4 * d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class TorchGPT(nn.Module):
    """Token and position embeddings, pre-norm blocks, final norm, logits through the tied embedding."""

    def __init__(self, shape: Shape, eps: float = 1e-6, std: float = 0.02):
        super().__init__()
        self.embed = nn.Embedding(shape.vocab_size, shape.d_model)
        self.positions = nn.Embedding(shape.seq_len, shape.d_model)
        self.blocks = nn.ModuleList(Block(shape, eps) for _ in range(shape.n_layers))
        self.norm = nn.LayerNorm(shape.d_model, eps=eps)
        # Same initialisation as the JAX model: N(0, 0.02), residual projections scaled by depth.
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                scaled = name.endswith(("proj.weight", "out.weight"))
                nn.init.normal_(p, std=std / math.sqrt(2 * shape.n_layers) if scaled else std)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy, with logits and loss in fp32."""
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.embed(tokens) + self.positions(pos)
        for block in self.blocks:
            x = block(x)
        logits = F.linear(self.norm(x), self.embed.weight)
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.view(-1))


@dataclasses.dataclass
class TorchRun:
    """One baseline variant ready to step: model, AdamW, a fixed batch and the step closure."""

    name: str
    step: Callable[[], torch.Tensor]
    compile_s: float
    sync: Callable[[], None]

    def time_steps(self, steps: int) -> float:
        """Seconds for `steps` train steps, synchronised at the end."""
        self.sync()
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        self.sync()
        return time.perf_counter() - start


def device() -> torch.device:
    """The accelerator when torch sees one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build(name: str, shape: Shape, lr: float = 3e-4, clip_norm: float = 1.0, seed: int = 0) -> TorchRun:
    """The variant `name` of VARIANTS for `shape`, warmed up (and compiled) on a fixed random batch."""
    precision, compiled = VARIANTS[name]
    dev = device()
    torch.manual_seed(seed)
    model = TorchGPT(shape).to(dev)
    # AdamW as ours: decay matrices only, betas (0.9, 0.95), global-norm clipping.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    forward = torch.compile(model) if compiled else model
    gen = torch.Generator().manual_seed(seed)
    data = torch.randint(0, shape.vocab_size, (shape.batch_size, shape.seq_len + 1), generator=gen).to(dev)
    tokens, targets = data[:, :-1].contiguous(), data[:, 1:].contiguous()
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if precision == "bfloat16" else contextlib.nullcontext()

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = forward(tokens, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        opt.step()
        return loss.detach()

    sync = torch.cuda.synchronize if dev.type == "cuda" else lambda: None
    start = time.perf_counter()
    for _ in range(2):  # the first call compiles; the second settles allocator and optimizer state
        step()
    sync()
    return TorchRun(name, step, time.perf_counter() - start, sync)
