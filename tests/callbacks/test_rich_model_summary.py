"""RichModelSummary: the rich table printed at fit start holds ModelSummary's rows and totals, to max_depth."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import surge
from surge.callbacks import ModelSummary, RichModelSummary
from surge.callbacks.model_summary import summarize

rich = pytest.importorskip("rich")


class Net(surge.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))  # 40 + 36
        self.head = nn.Linear(4, 1)  # 5
        self.frozen = nn.Linear(2, 3)  # 9, not trained
        self.frozen.requires_grad_(False)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self.head(self.encoder(x)), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def data():
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)


@pytest.fixture
def console(monkeypatch):
    """rich's global console, writing plain text (no colours) into a buffer the test reads."""
    from rich.console import Console

    c = Console(record=True, width=120, color_system=None, force_terminal=False, file=open("/dev/null", "w"))
    monkeypatch.setattr(rich, "get_console", lambda: c)
    yield c
    c.file.close()


def fit(tmp_path, callbacks, **kw):
    trainer = surge.Trainer(default_root_dir=str(tmp_path), max_epochs=1, callbacks=callbacks, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, **kw)
    trainer.fit(Net(), data())
    return trainer


def table_rows(text):
    """(index, name, type, params) of each table row rich drew with its box characters."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)[1:-1]]
        if len(cells) == 4 and cells[0].isdigit():
            rows.append(tuple(cells))
    return rows


def test_table_and_totals_match_model_summary(tmp_path, console):
    trainer = fit(tmp_path, [RichModelSummary()])
    text = console.export_text()
    assert table_rows(text) == [("0", "encoder", "Sequential", "76"), ("1", "head", "Linear", "5"),
                                ("2", "frozen", "Linear", "9")]
    header = next(line for line in text.splitlines() if "Name" in line)
    assert [c.strip() for c in re.split(r"[│┃]", header)[1:-1]] == ["", "Name", "Type", "Params"]
    assert "Trainable params: 81" in text
    assert "Non-trainable params: 9" in text
    assert "Total params: 90" in text
    assert "Total estimated model params size (MB): 0.000" in text
    # The same numbers as ModelSummary's text table.
    plain = summarize(trainer.lightning_module, max_depth=1)
    for _, name, kind, count in table_rows(text):
        assert re.search(rf"\| {name} +\| {kind} +\| {count}$", plain, re.M)
    # It is the model summary: the Trainer adds no second, plain one.
    assert sum(isinstance(cb, ModelSummary) for cb in trainer.callbacks) == 1


def test_max_depth(tmp_path, console):
    fit(tmp_path, [RichModelSummary(max_depth=2)])
    rows = table_rows(console.export_text())
    assert [r[1] for r in rows] == ["encoder", "encoder.0", "encoder.1", "encoder.2", "head", "frozen"]
    assert rows[2] == ("2", "encoder.1", "ReLU", "0") and rows[3] == ("3", "encoder.2", "Linear", "36")


def test_negative_depth_prints_nothing_and_zero_only_totals(tmp_path, console):
    fit(tmp_path, [RichModelSummary(max_depth=-1)])
    assert console.export_text() == ""
    fit(tmp_path, [RichModelSummary(max_depth=0)])
    text = console.export_text()
    assert table_rows(text) == [] and "Total params: 90" in text


def test_large_counts_are_abbreviated(console):
    RichModelSummary.summarize([("big", "Linear", 1_001_000)], 1_001_000, 1_000_000, 4.004)
    text = console.export_text()
    assert ("0", "big", "Linear", "1.0 M") in table_rows(text)
    assert "Non-trainable params: 1.0 K" in text and "(MB): 4.004" in text


def test_rich_progress_bar_brings_the_rich_summary(tmp_path, console):
    from surge.callbacks import RichProgressBar

    trainer = surge.Trainer(default_root_dir=str(tmp_path), max_epochs=1, logger=False, enable_checkpointing=False,
                            callbacks=[RichProgressBar()])
    assert any(type(cb) is RichModelSummary for cb in trainer.callbacks)
    plain = surge.Trainer(default_root_dir=str(tmp_path), logger=False, enable_progress_bar=False)
    assert any(type(cb) is ModelSummary for cb in plain.callbacks)
