"""Lightning's demo data and models under ``lightning.pytorch.demos``: ``transformer`` (Transformer,
WikiText2) and ``mnist_datamodule`` (MNIST, MNISTDataModule), as Lightning's example scripts use them,
offline (no download when the data is there; none needed for the tests)."""
from __future__ import annotations

import urllib.request

import pytest
import torch
import torch.nn.functional as F

import surge
from surge.lightning.demos import LightningTransformer, Transformer, WikiText2
from surge.demos import mnist_datamodule as mdm  # (the module behind lightning.pytorch.demos.mnist_datamodule)
from surge.lightning.demos.transformer import tokenize


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the test tried to download")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(urllib.request, "urlretrieve", refuse)


def test_wikitext2_reads_the_file_that_is_there_and_cuts_next_token_blocks(tmp_path, no_network):
    (tmp_path / "wikitext-2.txt").write_text(" a b c \n b c d e \n", encoding="utf8")
    ids, dictionary = tokenize(tmp_path / "wikitext-2.txt")
    assert dictionary.idx2word == ["a", "b", "c", "<eos>", "d", "e"]
    assert ids.tolist() == [0, 1, 2, 3, 1, 2, 4, 5, 3] and ids.dtype == torch.int64

    ds = WikiText2(data_dir=tmp_path, block_size=2)
    assert ds.vocab_size == 6 and len(ds) == 9 // 2 - 1
    x, y = ds[1]
    assert x.tolist() == [2, 3] and y.tolist() == [3, 1]
    x, y = ds[len(ds) - 1]  # the last block still has a full target
    assert len(x) == len(y) == 2


def test_transformer_gives_log_probabilities_that_do_not_look_ahead():
    torch.manual_seed(0)
    model = Transformer(vocab_size=30, ninp=16, nhead=2, nhid=32, nlayers=1).eval()
    inputs = torch.randint(0, 30, (2, 6))
    target = torch.randint(0, 30, (2, 6))
    out = model(inputs, target)
    assert out.shape == (12, 30)
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(12))
    # Changing the last tokens leaves the earlier positions' predictions alone.
    inputs2, target2 = inputs.clone(), target.clone()
    inputs2[:, -1] = (inputs2[:, -1] + 1) % 30
    target2[:, -1] = (target2[:, -1] + 1) % 30
    out2 = model(inputs2, target2).view(2, 6, 30)
    torch.testing.assert_close(out2[:, :-1], out.view(2, 6, 30)[:, :-1])


def test_lightning_transformer_learns_a_repeating_text(tmp_path, no_network, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "wikitext-2.txt").write_text(" one two three four five\n" * 60, encoding="utf8")
    monkeypatch.chdir(tmp_path)  # LightningTransformer reads ./data, as Lightning's
    surge.seed_everything(0)
    model = LightningTransformer(vocab_size=WikiText2().vocab_size)
    batch = next(iter(torch.utils.data.DataLoader(WikiText2(), batch_size=8)))
    model.eval()
    with torch.no_grad():
        before = F.nll_loss(model(*batch), batch[1].view(-1)).item()
    trainer = surge.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False)
    trainer.fit(model)
    model.eval()
    with torch.no_grad():
        after = F.nll_loss(model(*batch), batch[1].view(-1)).item()
    assert trainer.global_step == 3 * len(WikiText2()) and after < before / 2, (before, after)


def _write_pt_files(root, n_train=40, n_test=12):
    folder = root / "MNIST" / "complete"
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for name, n in (("training.pt", n_train), ("test.pt", n_test)):
        torch.save((torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g),
                    torch.randint(0, 10, (n,), generator=g)), folder / name)


def test_mnist_without_torchvision_reads_lightnings_pt_files(tmp_path, no_network, monkeypatch, capsys):
    monkeypatch.setattr(mdm, "_torchvision_available", lambda: False)
    _write_pt_files(tmp_path)
    ds = mdm.MNIST(str(tmp_path), train=True, download=True)
    assert isinstance(ds, mdm._MNIST) and len(ds) == 40
    assert "Using our hosted version" in capsys.readouterr().out
    img, label = ds[3]
    raw = ds.data[3].float()
    torch.testing.assert_close(img, ((raw - 0.1307) / 0.3081)[None])
    assert isinstance(label, int) and label == int(ds.targets[3])
    assert len(mdm.MNIST(str(tmp_path), train=False)) == 12
    with pytest.raises(RuntimeError, match="Dataset not found"):
        mdm._MNIST(str(tmp_path / "elsewhere"), download=False)


def test_mocked_mnist_env_var_picks_the_pt_files_even_with_torchvision(tmp_path, no_network, monkeypatch):
    monkeypatch.setattr(mdm, "_torchvision_available", lambda: True)
    monkeypatch.setenv("PL_USE_MOCKED_MNIST", "1")
    _write_pt_files(tmp_path)
    assert isinstance(mdm.MNIST(str(tmp_path)), mdm._MNIST)


def test_mnist_datamodule_splits_and_loads(tmp_path, no_network, monkeypatch):
    monkeypatch.setattr(mdm, "_torchvision_available", lambda: False)
    _write_pt_files(tmp_path)
    dm = mdm.MNISTDataModule(data_dir=str(tmp_path), val_split=8, num_workers=0, batch_size=5)
    assert dm.num_classes == 10 and dm.default_transforms is None
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.dataset_train), len(dm.dataset_val)) == (32, 8)
    train = dm.train_dataloader()
    assert len(train) == 32 // 5 and train.drop_last  # drop_last, as Lightning's
    x, y = next(iter(train))
    assert x.shape == (5, 1, 28, 28) and y.shape == (5,)
    assert len(dm.val_dataloader()) == 1 and len(dm.test_dataloader()) == 2
    again = mdm.MNISTDataModule(data_dir=str(tmp_path), val_split=8, num_workers=0)
    again.setup("fit")
    assert again.dataset_val.indices == dm.dataset_val.indices  # a fixed split


def test_lightning_paths_hold_surges_demos():
    import surge.lightning.demos.mnist_datamodule as pl_mnist
    import surge.lightning.demos.transformer as pl_transformer
    from surge.demos import transformer

    assert pl_mnist.MNISTDataModule is mdm.MNISTDataModule and pl_mnist._MNIST is mdm._MNIST
    assert pl_transformer.WikiText2 is transformer.WikiText2 is WikiText2
    assert issubclass(pl_mnist.MNISTDataModule, surge.lightning.LightningDataModule)
