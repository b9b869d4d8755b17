"""surge.demos.boring (lightning.pytorch.demos.boring_classes): the numbers Lightning's tests count on."""
import torch
from torch.utils.data import DataLoader

import surge
from surge.demos.boring import (BoringDataModule, BoringDataModuleNoLen, BoringModel, DemoModel,
                                IterableBoringDataModule, ManualOptimBoringModel, Net, RandomDictDataset,
                                RandomIterableDataset, RandomIterableDatasetWithLen)


def quiet(tmp_path, **kwargs):
    return surge.Trainer(default_root_dir=tmp_path, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, **kwargs)


def test_boring_model_trains_64_single_vector_batches_and_returns_lightnings_dicts(tmp_path):
    model, seen = BoringModel(), {}

    class Spy(surge.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            seen["train"] = (sorted(outputs), tuple(batch.shape))

        def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
            seen["val"] = sorted(outputs)

    before = model.layer.weight.detach().clone()
    trainer = quiet(tmp_path, max_epochs=1, callbacks=[Spy()], num_sanity_val_steps=0)
    trainer.fit(model)
    assert trainer.global_step == 64 and trainer.num_val_batches == [64]
    assert seen == {"train": (["loss"], (1, 32)), "val": ["x"]}
    assert not torch.equal(before, model.layer.weight)  # the loss moves the weights
    assert trainer.lr_scheduler_configs[0].scheduler.__class__ is torch.optim.lr_scheduler.StepLR
    assert sorted(trainer.test(model, verbose=False)[0]) == []  # test_step returns {"y": ...} and logs nothing


def test_data_comes_from_the_global_stream_so_a_seed_fixes_it():
    surge.seed_everything(3)
    a = BoringModel().train_dataloader().dataset.data
    surge.seed_everything(3)
    assert torch.equal(a, BoringModel().train_dataloader().dataset.data)


def test_the_datamodules_split_and_shape_as_lightnings(tmp_path):
    dm = BoringDataModule()
    dm.setup("fit")
    assert len(dm.random_train) == len(dm.random_val) == 64 and not hasattr(dm, "random_test")
    assert set(dm.random_train.indices).isdisjoint(dm.random_val.indices)
    nolen = BoringDataModuleNoLen()
    nolen.setup("test")
    assert sum(1 for _ in nolen.test_dataloader()) == 256
    pair = IterableBoringDataModule()
    pair.setup("validate")
    assert [sum(1 for _ in ld) for ld in pair.val_dataloader()] == [32, 32]
    trainer = quiet(tmp_path, max_epochs=1, limit_train_batches=4, limit_val_batches=2)
    trainer.fit(ManualOptimBoringModel(), datamodule=BoringDataModule())
    assert trainer.global_step == 4


def test_the_small_datasets_and_models():
    item = RandomDictDataset(4, 3)[1]
    assert torch.equal(item["b"], item["a"] + 2)
    assert len(list(RandomIterableDataset(4, 5))) == 5 and len(RandomIterableDatasetWithLen(4, 5)) == 5
    assert DemoModel(out_dim=3)(torch.randn(2, 32)).shape == (2, 3)
    assert Net().eval()(torch.randn(2, 1, 28, 28)).exp().sum(1).allclose(torch.ones(2))
    assert isinstance(BoringModel().val_dataloader(), DataLoader)
