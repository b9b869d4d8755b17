"""Lightning's language-model demo (``lightning.pytorch.demos.transformer``) on surge.

- :class:`Transformer`: token embedding plus sinusoidal positions into ``nn.Transformer`` (batch first),
  a linear decoder and log-softmax; ``model(inputs, target)`` with two ``(B, T)`` token tensors gives
  ``(B * T, vocab_size)`` log-probabilities, for ``F.nll_loss(output, target.view(-1))``.
- :class:`WikiText2`: the text file ``<data_dir>/wikitext-2.txt`` cut into blocks of ``block_size``
  tokens; item ``i`` is ``(tokens[i*b : i*b+b], tokens[i*b+1 : i*b+b+1])``. The file is downloaded
  (WikiText-2's training text from the PyTorch examples repository) only when it is not there, so a
  machine without network runs with any text put at that path.
- :class:`Dictionary` and :func:`tokenize`: words split on white space, ``<eos>`` after each line, ids in
  order of first appearance.
- :class:`LightningTransformer`: the model trained with SGD (lr 0.1) on WikiText2.

Differences from Lightning's demo: each position gets its own positional encoding (Lightning's adds the
encoding of position ``T`` to every position), and the encoder input and the decoder's view of it are
causally masked as well as the decoder input, so position ``t`` never sees a token after ``t``.
"""
from __future__ import annotations

import math
import os
import urllib.request
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..module import Module

__all__ = ["Transformer", "PositionalEncoding", "WikiText2", "Dictionary", "tokenize", "LightningTransformer"]

WIKITEXT2_URL = "https://raw.githubusercontent.com/pytorch/examples/main/word_language_model/data/wikitext-2/train.txt"


class Transformer(nn.Module):
    def __init__(self, vocab_size: int = 33278, ninp: int = 200, nhead: int = 2, nhid: int = 200,
                 nlayers: int = 2, dropout: float = 0.2) -> None:
        super().__init__()
        self.pos_encoder = PositionalEncoding(ninp, dropout)
        self.embedding = nn.Embedding(vocab_size, ninp)
        self.transformer = nn.Transformer(d_model=ninp, nhead=nhead, num_encoder_layers=nlayers,
                                          num_decoder_layers=nlayers, dim_feedforward=nhid, dropout=dropout,
                                          batch_first=True)
        self.decoder = nn.Linear(ninp, vocab_size)
        self.ninp = ninp
        self.vocab_size = vocab_size
        self.src_mask: Optional[Tensor] = None

    @staticmethod
    def generate_square_subsequent_mask(size: int) -> Tensor:
        """``size x size`` float mask: 0 on and below the diagonal, -inf above (no looking ahead)."""
        return torch.full((size, size), float("-inf")).triu(diagonal=1)

    def forward(self, inputs: Tensor, target: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        t = inputs.size(1)
        if self.src_mask is None or self.src_mask.size(0) != t or self.src_mask.device != inputs.device:
            self.src_mask = self.generate_square_subsequent_mask(t).to(inputs.device)
        tgt_mask = self.src_mask if mask is None else mask
        scale = math.sqrt(self.ninp)
        src = self.pos_encoder(self.embedding(inputs) * scale)
        tgt = self.pos_encoder(self.embedding(target) * scale)
        out = self.transformer(src, tgt, src_mask=self.src_mask, tgt_mask=tgt_mask,
                               memory_mask=self.src_mask if target.size(1) == t else None)
        return F.log_softmax(self.decoder(out), dim=-1).view(-1, self.vocab_size)


class PositionalEncoding(nn.Module):
    """Adds the sinusoidal encoding of each position (sin on even features, cos on odd), then dropout.
    The table is built on first use on the input's device and is not a buffer (so not in state_dict)."""

    def __init__(self, dim: int, dropout: float = 0.1, max_len: int = 5000) -> None:
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        self.dim = dim
        self.max_len = max_len
        self.pe: Optional[Tensor] = None

    def _init_pos_encoding(self, device) -> Tensor:
        position = torch.arange(self.max_len, dtype=torch.float, device=device)[:, None]
        freq = torch.exp(torch.arange(0, self.dim, 2, device=device).float() * (-math.log(10000.0) / self.dim))
        pe = torch.zeros(self.max_len, self.dim, device=device)
        pe[:, 0::2] = torch.sin(position * freq)
        pe[:, 1::2] = torch.cos(position * freq)[:, : self.dim // 2]
        return pe[None]

    def forward(self, x: Tensor) -> Tensor:
        if self.pe is None or self.pe.device != x.device:
            self.pe = self._init_pos_encoding(x.device)
        return self.dropout(x + self.pe[:, : x.size(1)])


class Dictionary:
    """Words to ids (``word2idx``) and back (``idx2word``), ids in order of first :meth:`add_word`."""

    def __init__(self) -> None:
        self.word2idx: dict[str, int] = {}
        self.idx2word: list[str] = []

    def add_word(self, word: str) -> int:
        if word not in self.word2idx:
            self.word2idx[word] = len(self.idx2word)
            self.idx2word.append(word)
        return self.word2idx[word]

    def __len__(self) -> int:
        return len(self.idx2word)


def tokenize(path: Path) -> tuple[Tensor, Dictionary]:
    """The file's words (each line's followed by ``<eos>``) as one int64 tensor of ids, and the dictionary."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no text at {path}")
    dictionary = Dictionary()
    ids: list[int] = []
    with open(path, encoding="utf8") as f:
        for line in f:
            ids.extend(dictionary.add_word(word) for word in line.split() + ["<eos>"])
    return torch.tensor(ids, dtype=torch.int64), dictionary


class WikiText2(Dataset):
    """Next-token blocks of WikiText-2's training text (see the module docstring)."""

    def __init__(self, data_dir: Path = Path("./data"), block_size: int = 35, download: bool = True) -> None:
        super().__init__()
        self.path = Path(data_dir) / "wikitext-2.txt"
        if download:
            self.download(self.path)
        self.data, self.dictionary = tokenize(self.path)
        self.block_size = block_size

    @property
    def vocab_size(self) -> int:
        return len(self.dictionary)

    def __len__(self) -> int:
        return len(self.data) // self.block_size - 1

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        start = index * self.block_size
        return self.data[start:start + self.block_size], self.data[start + 1:start + self.block_size + 1]

    @staticmethod
    def download(destination: Path) -> None:
        """Fetch WikiText-2's training text to ``destination`` unless a file is there already."""
        if os.path.exists(destination):
            return
        os.makedirs(Path(destination).parent, exist_ok=True)
        with urllib.request.urlopen(WIKITEXT2_URL) as response:  # noqa: S310
            text = response.read().decode("utf8")
        with open(destination, "w", encoding="utf8") as f:
            f.write(text)


class LightningTransformer(Module):
    def __init__(self, vocab_size: int = 33278) -> None:
        super().__init__()
        self.model = Transformer(vocab_size=vocab_size)

    def forward(self, inputs: Tensor, target: Tensor) -> Tensor:
        return self.model(inputs, target)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        inputs, target = batch
        return F.nll_loss(self(inputs, target), target.view(-1))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.model.parameters(), lr=0.1)

    def prepare_data(self) -> None:
        WikiText2(download=True)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(WikiText2())
