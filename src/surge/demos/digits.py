"""The main demo: a small convolutional network on scikit-learn's handwritten digits.

The data set (1,797 8x8 grey images of the digits 0-9) ships inside scikit-learn, so the demo
runs offline. Run it with ``surge demo`` or ``python -m surge.demos.digits``.
"""
from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ..datamodule import DataModule
from ..module import Module


class DigitsDataModule(DataModule):
    """scikit-learn's digits: 1,437 images for training, 180 for validation, 180 for test (fixed split)."""

    def __init__(self, batch_size: int = 32, num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()

    def prepare_data(self) -> None:
        try:
            import sklearn  # noqa: F401
        except ImportError as err:
            raise ImportError("the digits demo needs scikit-learn: pip install scikit-learn") from err

    def setup(self, stage: str) -> None:
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        x = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
        y = torch.tensor(y, dtype=torch.long)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.hparams.seed))
        x, y = x[order], y[order]
        n_val = n_test = len(x) // 10
        n_train = len(x) - n_val - n_test
        self.train_set = TensorDataset(x[:n_train], y[:n_train])
        self.val_set = TensorDataset(x[n_train:n_train + n_val], y[n_train:n_train + n_val])
        self.test_set = TensorDataset(x[n_train + n_val:], y[n_train + n_val:])

    def _loader(self, ds, shuffle):
        return DataLoader(ds, batch_size=self.hparams.batch_size, shuffle=shuffle,
                          num_workers=self.hparams.num_workers, persistent_workers=self.hparams.num_workers > 0)

    def train_dataloader(self):
        return self._loader(self.train_set, True)

    def val_dataloader(self):
        return self._loader(self.val_set, False)

    def test_dataloader(self):
        return self._loader(self.test_set, False)

    def predict_dataloader(self):
        return self._loader(self.test_set, False)


class DigitsClassifier(Module):
    """Two 3x3 convolutions and a linear head; about 26k parameters."""

    def __init__(self, channels: int = 32, lr: float = 3e-3, weight_decay: float = 1e-4):
        super().__init__()
        self.save_hyperparameters()
        c = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(2 * c * 16, 10))

    def forward(self, x):
        return self.head(self.features(x))

    def _shared(self, batch, stage):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(1) == y).float().mean()
        # Under DDP each rank sees a shard of the val/test set: sync_dist makes the epoch value the mean
        # over all ranks (train metrics stay per rank, which keeps the training step free of collectives).
        sync = stage != "train"
        self.log(f"{stage}_loss", loss, prog_bar=stage != "train", sync_dist=sync)
        self.log(f"{stage}_acc", acc, prog_bar=True, sync_dist=sync)
        return loss

    def training_step(self, batch, batch_idx):
        return self._shared(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._shared(batch, "val")

    def test_step(self, batch, batch_idx):
        self._shared(batch, "test")

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return self(batch[0]).argmax(1)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.hparams.lr,
                                                    total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _where_to_run(accelerator: str, devices, strategy):
    """The demo's defaults: one GPU when there is one; otherwise every core, as up to 4 DDP processes on
    the CPU (gloo), since one process does not keep several cores busy on a model this small."""
    from ..accelerators import resolve_accelerator

    if devices is not None:
        devices = int(devices) if devices.lstrip("-").isdigit() else devices
    if resolve_accelerator(accelerator) == "cpu":
        accelerator = "cpu"
        if devices is None:
            devices = min(os.cpu_count() or 1, 4)
    elif devices is None:
        devices = 1
    if strategy is None:
        strategy = "ddp" if isinstance(devices, int) and devices > 1 else "auto"
    return accelerator, devices, strategy


def main(argv=None) -> dict:
    """Train, test and report; returns the test metrics."""
    import yaml

    import surge
    from surge.cli import SaveConfigCallback

    parser = argparse.ArgumentParser(prog="surge demo", description="Train a CNN on scikit-learn's handwritten digits.")
    parser.add_argument("--max-epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--devices", default=None,
                        help="default: one GPU, or without a GPU min(CPU cores, 4) CPU processes with DDP")
    parser.add_argument("--strategy", default=None, help='default: "ddp" when there are several devices, else "auto"')
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--root-dir", default=os.path.join(os.getcwd(), "runs", "digits"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress-bar", action="store_true")
    args = parser.parse_args(argv)

    surge.seed_everything(args.seed, workers=True)
    accelerator, devices, strategy = _where_to_run(args.accelerator, args.devices, args.strategy)
    data = DigitsDataModule(batch_size=args.batch_size)
    model = DigitsClassifier(lr=args.lr)
    checkpoint_args = dict(monitor="val_acc", mode="max", save_last=True)
    checkpoint = surge.ModelCheckpoint(**checkpoint_args)
    trainer_args = dict(max_epochs=args.max_epochs, accelerator=accelerator, devices=devices,
                        strategy=strategy, precision=args.precision, default_root_dir=os.path.abspath(args.root_dir),
                        enable_progress_bar=not args.no_progress_bar, log_every_n_steps=10)
    # The run's config in the command line's format, saved to the log folder: `surge fit --config` trains it again.
    config = {"seed_everything": args.seed,
              "trainer": {**trainer_args, "callbacks": [{"class_path": "surge.callbacks.ModelCheckpoint",
                                                          "init_args": checkpoint_args}]},
              "model": {"class_path": "surge.demos.digits.DigitsClassifier", "init_args": dict(model.hparams)},
              "data": {"class_path": "surge.demos.digits.DigitsDataModule", "init_args": dict(data.hparams)}}
    save_config = SaveConfigCallback(yaml.safe_dump(config, sort_keys=False))
    trainer = surge.Trainer(callbacks=[checkpoint, save_config], **trainer_args)
    trainer.fit(model, datamodule=data)
    results = trainer.test(model, datamodule=data, ckpt_path="best", verbose=False)[0]
    if trainer.is_global_zero:
        print(f"test accuracy: {results['test_acc']:.4f}  (test loss {results['test_loss']:.4f})")
        print(f"logs:        {trainer.log_dir}")
        print(f"checkpoints: {checkpoint.dirpath} (best: {os.path.basename(checkpoint.best_model_path)})")
        if save_config.path:
            print(f"config:      {save_config.path} (`surge fit --config` with it trains this model again)")
    return results


if __name__ == "__main__":
    main()
