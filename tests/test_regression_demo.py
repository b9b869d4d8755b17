import torch

import surge
from surge.demos.regression import LinearRegression, RegressionData


def test_linear_regression_recovers_the_generating_weights(tmp_path):
    surge.seed_everything(0)
    data, model = RegressionData(n=2048), LinearRegression()
    trainer = surge.Trainer(max_epochs=8, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=data)
    assert torch.allclose(model.linear.weight.detach().T, data.true_weight, atol=0.05)
    assert torch.allclose(model.linear.bias.detach(), data.true_bias, atol=0.05)
    test_loss = trainer.test(model, datamodule=data, verbose=False)[0]["test_loss"]
    assert test_loss < 0.02  # the noise variance is 0.01
