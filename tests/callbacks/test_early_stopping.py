"""EarlyStopping: when fit stops, and why."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import surge
from surge.callbacks import EarlyStopping
from surge.utils import MisconfigurationError


def data(n=16):
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)


class Scripted(surge.Module):
    """Logs ``score`` (validation) and ``train_score`` (training epoch end) from a fixed sequence."""

    def __init__(self, scores):
        super().__init__()
        self.scores = list(scores)
        self.layer = nn.Linear(4, 1)
        self.epochs_run = 0

    def _score(self):
        return torch.tensor(self.scores[min(self.current_epoch, len(self.scores) - 1)], dtype=torch.float32)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self.layer(x), y)

    def on_train_epoch_end(self):
        self.epochs_run += 1
        self.log("train_score", self._score())

    def validation_step(self, batch, batch_idx):
        self.log("score", self._score())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def fit(tmp_path, scores, es, val=True, max_epochs=20, **kw):
    model = Scripted(scores)
    t = surge.Trainer(default_root_dir=str(tmp_path), max_epochs=max_epochs, callbacks=[es], logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, **kw)
    t.fit(model, data(), data() if val else None)
    return t, model


def test_stops_after_patience_checks_without_improvement(tmp_path):
    es = EarlyStopping("score", patience=3)
    t, model = fit(tmp_path, [1.0, 0.5, 0.6, 0.7, 0.55, 0.4, 0.3], es)
    # best 0.5 at epoch 1; epochs 2, 3, 4 do not improve -> stop after epoch 4
    assert model.epochs_run == 5
    assert es.stopped_epoch == 4 and t.current_epoch == 5
    assert es.wait_count == 3
    assert float(es.best_score) == pytest.approx(0.5)
    assert "did not improve" in es.stopping_reason_message


def test_improvement_resets_the_count(tmp_path):
    es = EarlyStopping("score", patience=2)
    _, model = fit(tmp_path, [1.0, 1.1, 0.9, 1.0, 0.8, 0.85, 0.9, 0.1], es)
    # improvements at epochs 2 and 4, then two misses (5, 6): stop after epoch 6
    assert model.epochs_run == 7 and es.stopped_epoch == 6


def test_mode_max(tmp_path):
    es = EarlyStopping("score", patience=2, mode="max")
    _, model = fit(tmp_path, [0.1, 0.5, 0.4, 0.45, 0.9], es)
    assert model.epochs_run == 4 and float(es.best_score) == pytest.approx(0.5)


def test_min_delta(tmp_path):
    # improvements of 0.05 are smaller than min_delta=0.1 and do not count
    es = EarlyStopping("score", patience=2, min_delta=0.1)
    _, model = fit(tmp_path, [1.0, 0.95, 0.9, 0.5, 0.1], es)
    assert model.epochs_run == 3 and float(es.best_score) == pytest.approx(1.0)


def test_strict_missing_metric_names_it(tmp_path):
    es = EarlyStopping("val_not_logged", strict=True)
    with pytest.raises(MisconfigurationError, match="val_not_logged"):
        fit(tmp_path, [1.0], es)


def test_not_strict_missing_metric_runs_on(tmp_path):
    es = EarlyStopping("val_not_logged", strict=False, patience=1)
    _, model = fit(tmp_path, [1.0], es, max_epochs=3)
    assert model.epochs_run == 3


def test_stopping_threshold(tmp_path):
    es = EarlyStopping("score", patience=100, stopping_threshold=0.25)
    _, model = fit(tmp_path, [1.0, 0.5, 0.3, 0.2, 0.1], es)
    assert model.epochs_run == 4 and "threshold" in es.stopping_reason_message


def test_divergence_threshold(tmp_path):
    es = EarlyStopping("score", patience=100, divergence_threshold=5.0)
    _, model = fit(tmp_path, [1.0, 2.0, 7.0, 0.1], es)
    assert model.epochs_run == 3 and "diverged" in es.stopping_reason_message


def test_non_finite_stops(tmp_path):
    es = EarlyStopping("score", patience=100)
    _, model = fit(tmp_path, [1.0, float("nan"), 0.5], es)
    assert model.epochs_run == 2 and "not finite" in es.stopping_reason_message


def test_check_on_train_epoch_end(tmp_path):
    # train_score is only logged at the training epoch end: checking there sees it
    es = EarlyStopping("train_score", patience=1, check_on_train_epoch_end=True)
    _, model = fit(tmp_path, [1.0, 2.0, 3.0], es)
    assert model.epochs_run == 2


def test_without_validation_checks_on_train_epoch_end(tmp_path):
    es = EarlyStopping("train_score", patience=2)
    _, model = fit(tmp_path, [1.0, 2.0, 3.0, 4.0], es, val=False)
    assert model.epochs_run == 3


def test_min_epochs_overrides_early_stop(tmp_path):
    es = EarlyStopping("score", patience=1)
    _, model = fit(tmp_path, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], es, min_epochs=4)
    assert model.epochs_run == 4


def test_state_dict_round_trip():
    es = EarlyStopping("score", patience=5)
    es.wait_count, es.stopped_epoch, es.best_score = 2, 0, torch.tensor(0.25)
    other = EarlyStopping("score", patience=5)
    other.load_state_dict(es.state_dict())
    assert other.wait_count == 2 and float(other.best_score) == 0.25
    assert es.state_key == other.state_key != EarlyStopping("score", mode="max").state_key


@pytest.mark.parametrize("kwargs", [{"mode": "avg"}, {"patience": -1}])
def test_bad_arguments(kwargs):
    with pytest.raises(MisconfigurationError):
        EarlyStopping("score", **kwargs)


def test_a_subclass_overriding_the_check_is_called_once_per_check(tmp_path):
    # Lightning code customises early stopping by overriding _run_early_stopping_check(trainer): surge calls it
    # once per check, at validation end (or at train epoch end without validation), and never in the sanity check.
    class Counting(EarlyStopping):
        calls = 0

        def _run_early_stopping_check(self, trainer):
            Counting.calls += 1
            assert not trainer.sanity_checking
            super()._run_early_stopping_check(trainer)

    model = Scripted([1.0] * 10)
    surge.Trainer(default_root_dir=str(tmp_path), max_epochs=4, callbacks=[Counting("score", patience=100)],
                  logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                  num_sanity_val_steps=2).fit(model, data(), data())
    assert Counting.calls == 4
    Counting.calls = 0
    fit(tmp_path / "train", [1.0] * 10, Counting("train_score", patience=100), val=False, max_epochs=3)
    assert Counting.calls == 3


def test_a_subclass_decides_through_evaluate_stopping_criteria(tmp_path):
    # Lightning's contract, which subclasses override: (should_stop, reason) for the monitored value.
    class StopOnSecondCheck(EarlyStopping):
        def __init__(self):
            super().__init__("score", patience=100)
            self.seen = []

        def _evaluate_stopping_criteria(self, current):
            self.seen.append(float(current))
            should_stop, reason = super()._evaluate_stopping_criteria(current)  # keeps best_score and the count
            return len(self.seen) == 2, reason if len(self.seen) < 2 else "my own reason"

    es = StopOnSecondCheck()
    t, model = fit(tmp_path, [1.0, 0.5, 0.25, 0.1], es)
    assert es.seen == [1.0, 0.5] and model.epochs_run == 2 and t.should_stop
    assert es.stopping_reason_message == "my own reason" and es.stopped_epoch == 1
    assert float(es.best_score) == 0.5 and es.monitor_op is torch.lt and EarlyStopping("x", mode="max").monitor_op is torch.gt


def test_verbose_messages_carry_the_rank_and_log_rank_zero_only_keeps_rank_0s(capsys):
    class Ranked:
        def __init__(self, rank, world):
            self.global_rank, self.world_size = rank, world

    for (rank, world, zero_only), expected in {(0, 1, False): "bar", (0, 2, False): "[rank: 0] bar",
                                                (1, 2, False): "[rank: 1] bar", (0, 1, True): "bar",
                                                (0, 2, True): "[rank: 0] bar", (1, 2, True): ""}.items():
        EarlyStopping._log_info(Ranked(rank, world), "bar", zero_only)
        assert capsys.readouterr().out.strip() == expected, (rank, world, zero_only)
    assert EarlyStopping("x", log_rank_zero_only=True).log_rank_zero_only


def test_verbose_messages_go_to_logging_when_it_shows_them(tmp_path, capsys, caplog):
    caplog.set_level("INFO", logger="surge.callbacks.early_stopping")
    fit(tmp_path, [1.0, 0.5, 0.6, 0.7], EarlyStopping("score", patience=2, verbose=True), max_epochs=4)
    said = [r.getMessage() for r in caplog.records if r.name == "surge.callbacks.early_stopping"]
    assert said[0] == "EarlyStopping: score improved to 1" and "did not improve in the last 2 checks" in said[-1]
    assert "EarlyStopping" not in capsys.readouterr().out  # shown by logging, so not printed as well
