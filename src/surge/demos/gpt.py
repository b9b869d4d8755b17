"""A small character-level GPT trained on the Python standard library's own source code.

No download: the text is read from a few stdlib modules' ``.py`` files. The model has the shape
pipeline parallelism expects (token + position embedding, an ``nn.ModuleList`` named ``blocks``, a final
LayerNorm and a head; ``pipeline_embed`` / ``pipeline_head`` for what runs before and after the blocks),
and its steps compute the logits with one call ``self(x)``, so it runs unchanged on one device, with
``strategy="pipeline"`` and with ``ModelParallel``.

Example::

    model = GPTModule(GPTConfig.tiny())
    trainer = surge.Trainer(strategy="pipeline", accelerator="cpu", devices=2, max_steps=20)
    trainer.fit(model, stdlib_text_loader(model.config.block_size, batch_size=8))
"""
from __future__ import annotations

import dataclasses
import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..module import Module

VOCAB = 128  # ASCII; anything else becomes "?"


@dataclasses.dataclass
class GPTConfig:
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    vocab_size: int = VOCAB
    lr: float = 3e-3

    @classmethod
    def tiny(cls, n_layer: int = 4) -> "GPTConfig":
        """A model of a few ten thousand parameters, for tests."""
        return cls(block_size=16, n_layer=n_layer, n_head=2, n_embd=32)


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention then an MLP, each with a residual."""

    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        self.n_head = c.n_head
        self.ln1, self.ln2 = nn.LayerNorm(c.n_embd), nn.LayerNorm(c.n_embd)
        self.qkv = nn.Linear(c.n_embd, 3 * c.n_embd)
        self.proj = nn.Linear(c.n_embd, c.n_embd)
        self.mlp = nn.Sequential(nn.Linear(c.n_embd, 4 * c.n_embd), nn.GELU(), nn.Linear(4 * c.n_embd, c.n_embd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        self.config = c
        self.tok_emb = nn.Embedding(c.vocab_size, c.n_embd)
        self.pos_emb = nn.Embedding(c.block_size, c.n_embd)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd)
        self.head = nn.Linear(c.n_embd, c.vocab_size, bias=False)

    def pipeline_embed(self, idx: torch.Tensor) -> torch.Tensor:
        """What runs before the blocks (on the first pipeline stage)."""
        pos = torch.arange(idx.shape[1], device=idx.device)
        return self.tok_emb(idx) + self.pos_emb(pos)

    def pipeline_head(self, x: torch.Tensor) -> torch.Tensor:
        """What runs after the blocks (on the last pipeline stage): logits."""
        return self.head(self.ln_f(x))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.pipeline_embed(idx)
        for block in self.blocks:
            x = block(x)
        return self.pipeline_head(x)


class GPTModule(Module):
    """The GPT as a surge Module: next-character cross-entropy, AdamW."""

    def __init__(self, config: GPTConfig | None = None) -> None:
        super().__init__()
        self.config = config or GPTConfig()
        self.model = GPT(self.config)

    def forward(self, idx):
        return self.model(idx)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)  # one call self(x): under a pipeline it returns the last stage's output
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.config.lr)


def stdlib_text(modules=("textwrap", "string", "functools", "heapq")) -> str:
    """The source code of a few standard-library modules, concatenated."""
    import importlib

    parts = []
    for name in modules:
        with open(inspect.getsourcefile(importlib.import_module(name)), encoding="utf-8") as f:
            parts.append(f.read())
    return "\n".join(parts)


def encode(text: str) -> torch.Tensor:
    return torch.tensor([o if o < VOCAB else ord("?") for o in map(ord, text)], dtype=torch.long)


def decode(ids) -> str:
    return "".join(chr(int(i)) for i in ids)


class CharDataset(Dataset):
    """Non-overlapping windows of ``block_size + 1`` characters: (input, the same shifted by one)."""

    def __init__(self, block_size: int, text: str | None = None, limit: int | None = None) -> None:
        self.data = encode(text if text is not None else stdlib_text())
        self.block_size = block_size
        n = (len(self.data) - 1) // block_size
        self.n = n if limit is None else min(n, limit)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        chunk = self.data[i * self.block_size: (i + 1) * self.block_size + 1]
        return chunk[:-1], chunk[1:]


def stdlib_text_loader(block_size: int, batch_size: int = 8, limit: int | None = None, shuffle: bool = False):
    """A DataLoader of character windows of the stdlib's source (``drop_last``: equal batches for a pipeline)."""
    return DataLoader(CharDataset(block_size, limit=limit), batch_size=batch_size, shuffle=shuffle, drop_last=True)


def perplexity(loss: float) -> float:
    return math.exp(loss)
