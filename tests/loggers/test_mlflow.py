"""MLflowLogger against a real local MLflow store, read back with mlflow's own client."""
from __future__ import annotations

import os

import pytest

mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed (pip install 'surge[mlflow]')")

import surge
from surge.demos.toy import ToyModel
from surge.loggers import MLflowLogger


class Tuned(ToyModel):
    def __init__(self, opt=None):
        super().__init__(lr=0.05)  # saves size, out, lr, batch_size
        self.hparams["opt"] = opt  # and a nested one, flattened to opt/name, opt/momentum


def fit(tmp_path, logger, **kw):
    t = surge.Trainer(default_root_dir=str(tmp_path), logger=logger, max_epochs=2, limit_train_batches=4,
                      limit_val_batches=2, log_every_n_steps=2, enable_progress_bar=False,
                      enable_model_summary=False, **kw)
    t.fit(Tuned(opt={"name": "sgd", "momentum": 0.9}))
    return t


def test_params_metrics_and_checkpoint_in_a_sqlite_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = MLflowLogger(experiment_name="boring", run_name="first", tracking_uri=uri, log_model=True)
    t = fit(tmp_path, logger)
    assert t.log_dir.startswith(str(tmp_path))  # checkpoints beside the store, not in the cwd

    client = mlflow.MlflowClient(uri)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "first"
    assert client.get_experiment(run.info.experiment_id).name == "boring"
    assert run.data.params["lr"] == "0.05" and run.data.params["opt/momentum"] == "0.9"
    history = client.get_metric_history(logger.run_id, "train_loss")
    assert [m.step for m in history] == [2, 4, 6, 8]
    assert "val_loss" in run.data.metrics
    artifacts = [a.path for a in client.list_artifacts(logger.run_id, "checkpoints")]
    assert "checkpoints/last.ckpt" in artifacts
    local = client.download_artifacts(logger.run_id, "checkpoints/last.ckpt", str(tmp_path / "dl"))
    assert os.path.getsize(local) == os.path.getsize(os.path.join(t.log_dir, "checkpoints", "last.ckpt"))


def test_file_store_and_failed_status(tmp_path):
    store = tmp_path / "mlruns"
    logger = MLflowLogger(experiment_name="e", tracking_uri=f"file:{store}")

    class Boom(Tuned):
        def training_step(self, batch, batch_idx):
            if self.trainer.global_step == 3:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    t = surge.Trainer(default_root_dir=str(tmp_path), logger=logger, max_steps=10, log_every_n_steps=1,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(RuntimeError, match="boom"):
        t.fit(Boom())
    run = mlflow.MlflowClient(f"file:{store}").get_run(logger.run_id)
    assert run.info.status == "FAILED"
    assert run.data.metrics["train_loss"] > 0
    assert str(store) in t.log_dir


def test_nothing_created_without_a_write(tmp_path):
    logger = MLflowLogger(tracking_uri=f"file:{tmp_path / 'none'}")
    logger.finalize("success")
    assert not (tmp_path / "none").exists()
