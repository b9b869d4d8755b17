"""Pipeline parallelism tested for real: 2-4 processes with gloo on CPU, started by surge's own launcher.

Correctness against math: a pipeline's loss, gradients and weights after 20 optimizer steps equal those of
the unsplit model on one device, and so do the metrics the user's training_step logs (on every rank, and in
rank 0's CSV file); its checkpoint is a whole-model checkpoint, and a run resumed from a mid-epoch one
continues bit for bit.
"""
import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import surge
from surge.demos.gpt import GPTConfig, GPTModule
from surge.strategies.model_parallel import find_body, plan_split
from surge.strategies.pipeline import Pipeline, _merge_logs, schedule_names, split_batch
from surge.utils import MisconfigurationError

SCRIPT = r'''
import json, math, sys
import torch
import torch.nn.functional as F
import surge
from surge.loggers import CSVLogger
from surge.strategies import Pipeline
from surge.demos.gpt import GPTConfig, GPTModule, stdlib_text_loader

out, devices, schedule, stages, virtual, micro, steps, batch, mode = sys.argv[1:10]
devices, stages, virtual, micro, steps, batch = int(devices), int(stages), int(virtual), int(micro), int(steps), int(batch)


class Grab(surge.Callback):
    def __init__(self):
        self.losses = []

    def on_before_optimizer_step(self, trainer, module, optimizer):
        if trainer.global_step == 0:
            torch.save({n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None},
                       f"{out}/grads{trainer.global_rank}.pt")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


class SGDGPT(GPTModule):
    # SGD, not AdamW: Adam divides by the gradient's size, so a gradient that is zero in exact arithmetic
    # (the attention's key bias) turns float noise into full steps and no two summation orders agree.
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5, momentum=0.9)

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        # The user's own metrics: per step and per epoch (a mean), and a per-epoch sum.
        self.log("my_bits", loss / math.log(2), prog_bar=True, on_epoch=True)  # bits per character
        self.log("my_tokens", float(batch[1].numel()), reduce_fx="sum", on_step=False, on_epoch=True)
        self.log("my_loss_synced", loss, sync_dist=True)  # across data-parallel replicas, not stages
        return loss


class Submodule(SGDGPT):
    def training_step(self, batch, batch_idx):  # self.model(x), not self(x): cannot work under a pipeline
        x, y = batch
        return F.cross_entropy(self.model(x).flatten(0, 1), y.flatten())


def trainer_for(max_steps, callbacks=(), logger=False, checkpointing=False):
    strategy = "auto" if schedule == "single" else \
        Pipeline(stages=stages or None, schedule=schedule, microbatches=micro, virtual_stages=virtual)
    return surge.Trainer(strategy=strategy, accelerator="cpu", devices=devices, max_steps=max_steps, logger=logger,
                         enable_checkpointing=checkpointing, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=list(callbacks), gradient_clip_val=0.5, num_sanity_val_steps=0,
                         log_every_n_steps=1)


def loader():
    return stdlib_text_loader(16, batch_size=batch, limit=16 * steps, shuffle=mode == "resume")  # enough for 2 replicas


torch.manual_seed(0)
model = (Submodule if mode == "submodule" else SGDGPT)(GPTConfig.tiny(n_layer=4))
grab = Grab()
if mode in ("fit", "submodule"):
    trainer = trainer_for(steps, [grab], logger=CSVLogger(out, name="csv", version=0))
    trainer.fit(model, loader())
    trainer.save_checkpoint(f"{out}/final.ckpt")
    result = {"losses": grab.losses, "metric": float(trainer.callback_metrics["train_loss"]),
              "mine": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("my_")}}
elif mode == "resume":
    # Uninterrupted, with a checkpoint in the middle of the epoch (chosen by a metric the user logs) ...
    middle = (steps + 1) // 2  # the only multiple of every_n_train_steps up to `steps` (an odd number)
    checkpoint = surge.ModelCheckpoint(dirpath=f"{out}/ckpt", filename="middle", every_n_train_steps=middle,
                                       monitor="my_bits_step")
    trainer = trainer_for(steps, [grab, checkpoint], checkpointing=True)
    trainer.fit(model, loader())
    trainer.save_checkpoint(f"{out}/final.ckpt")
    # ... then a new model (other weights, other random state) resumed from it to the same end.
    torch.manual_seed(1)
    resumed, grab_resumed = SGDGPT(GPTConfig.tiny(n_layer=4)), Grab()
    again = trainer_for(steps, [grab_resumed])
    again.fit(resumed, loader(), ckpt_path=f"{out}/ckpt/middle.ckpt")
    again.save_checkpoint(f"{out}/resumed.ckpt")
    result = {"losses": grab.losses, "resumed": grab_resumed.losses, "middle": middle}
else:  # validate a checkpoint saved by another run
    trainer = trainer_for(steps)
    result = trainer.validate(model, loader(), ckpt_path=mode, verbose=False)[0]
with open(f"{out}/result{trainer.global_rank}.json", "w") as f:
    json.dump(result, f)
'''

STEPS = 20


def run(tmp_path, name, devices, schedule, stages=0, virtual=1, micro=4, steps=STEPS, batch=8, mode="fit"):
    out = tmp_path / name
    out.mkdir()
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        env.pop(k, None)
    proc = subprocess.run([sys.executable, str(script), str(out), str(devices), schedule, str(stages), str(virtual),
                           str(micro), str(steps), str(batch), mode], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=240)
    return proc, out


def result(out, rank=0):
    return json.loads((out / f"result{rank}.json").read_text())


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The unsplit model on one device: the reference every pipeline must reproduce."""
    proc, out = run(tmp_path_factory.mktemp("single"), "single", 1, "single")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def grads(out, ranks):
    merged = {}
    for r in ranks:
        merged.update(torch.load(out / f"grads{r}.pt"))
    return merged


def weights(out):
    return torch.load(out / "final.ckpt", weights_only=False)["state_dict"]


def csv_column(out, name):
    with open(out / "csv" / "version_0" / "metrics.csv", newline="") as f:
        return [float(row[name]) for row in csv.DictReader(f) if row.get(name)]


def assert_same_as_single(out, single, ranks):
    mine, ref = result(out), result(single)
    assert mine["losses"] == pytest.approx(ref["losses"], abs=1e-5)
    for r in ranks:  # every stage reports the last stage's loss
        assert result(out, r)["metric"] == pytest.approx(ref["metric"], abs=1e-5)
    # What training_step logged (on the last stage, per micro-batch) is in callback_metrics on every rank
    # and in rank 0's CSV file (rank 0 holds the first stage), with the single-device values.
    assert {"my_bits", "my_bits_step", "my_bits_epoch", "my_tokens", "my_loss_synced"} <= set(ref["mine"])
    for r in ranks:
        assert result(out, r)["mine"] == pytest.approx(ref["mine"], rel=1e-5)
    assert len(csv_column(out, "my_bits_step")) == STEPS
    assert csv_column(out, "my_bits_step") == pytest.approx(csv_column(single, "my_bits_step"), rel=1e-5)
    assert csv_column(out, "my_tokens") == csv_column(single, "my_tokens") == [STEPS * 8 * 16]  # an epoch sum
    g, g_ref = grads(out, ranks), grads(single, [0])
    assert sorted(g) == sorted(g_ref)  # every parameter got its gradient, under its original name
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], atol=1e-6, rtol=1e-4, msg=name)
    w, w_ref = weights(out), weights(single)
    assert sorted(w) == sorted(w_ref)  # a whole-model checkpoint, gathered on rank 0
    for name in w_ref:
        torch.testing.assert_close(w[name], w_ref[name], atol=2e-5, rtol=1e-4, msg=name)


CASES = [("GPipe", 2, 1), ("1F1B", 2, 1), ("Interleaved1F1B", 2, 2), ("InterleavedZeroBubble", 2, 2),
         ("ZBVZeroBubble", 2, 2)]


@pytest.mark.parametrize("schedule, devices, virtual", [c for c in CASES if c[0] in schedule_names()])
def test_two_stage_pipeline_matches_single_device(tmp_path, single, schedule, devices, virtual):
    proc, out = run(tmp_path, schedule, devices, schedule, virtual=virtual)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_as_single(out, single, range(devices))


def test_four_stage_pipeline_matches_single_device(tmp_path, single):
    proc, out = run(tmp_path, "four", 4, "1F1B", steps=STEPS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_as_single(out, single, range(4))


def test_two_by_two_trains_gpt_like_one_device_on_the_global_batch(tmp_path):
    # 2 stages x 2 replicas, 8 samples per replica == one device on batches of 16.
    proc, out = run(tmp_path, "2x2", 4, "1F1B", stages=2, steps=4, batch=8)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc, ref = run(tmp_path, "ref", 1, "single", steps=4, batch=16)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Each replica reports the loss of its own half (ranks 0-1 are replica 0, ranks 2-3 replica 1).
    halves = zip(result(out, 0)["losses"], result(out, 2)["losses"])
    assert [(a + b) / 2 for a, b in halves] == pytest.approx(result(ref)["losses"], abs=1e-5)
    assert result(ref)["losses"][-1] < result(ref)["losses"][0]  # it learns
    for r in range(4):  # sync_dist=True: the mean over the replicas, the same on every rank
        assert result(out, r)["mine"]["my_loss_synced"] == pytest.approx(result(ref)["losses"][-1], abs=1e-5)
    w, w_ref = weights(out), weights(ref)
    for name in w_ref:
        torch.testing.assert_close(w[name], w_ref[name], atol=2e-5, rtol=1e-4, msg=name)


def test_checkpoints_move_between_single_device_and_pipeline(tmp_path, single):
    # A single-device checkpoint validated by a 2-stage pipeline, a 2-stage one loaded into a plain module.
    proc, out = run(tmp_path, "val", 2, "GPipe", steps=2, mode=str(single / "final.ckpt"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc, ref = run(tmp_path, "valref", 1, "single", steps=2, mode=str(single / "final.ckpt"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert result(out)["val_loss"] == pytest.approx(result(ref)["val_loss"], abs=1e-5)
    assert result(out, 1)["val_loss"] == pytest.approx(result(ref)["val_loss"], abs=1e-5)


def test_pipeline_resumes_exactly_from_a_mid_epoch_checkpoint(tmp_path):
    # One uninterrupted run of 5 steps on shuffled data, with a checkpoint after step 3 (ModelCheckpoint
    # monitoring a metric training_step logs, so rank 0 must see it); then a new model and Trainer resumed
    # from that checkpoint: the same losses bit for bit, the same final weights.
    proc, out = run(tmp_path, "resume", 2, "1F1B", steps=5, mode="resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for r in range(2):
        res = result(out, r)
        assert res["middle"] == 3 and len(res["losses"]) == 5
        assert res["resumed"] == res["losses"][3:]
    w, w_resumed = weights(out), torch.load(out / "resumed.ckpt", weights_only=False)["state_dict"]
    assert sorted(w) == sorted(w_resumed)
    for name in w:
        torch.testing.assert_close(w_resumed[name], w[name], atol=0, rtol=0, msg=name)


def test_training_step_calling_a_submodule_is_a_clear_error(tmp_path):
    proc, _ = run(tmp_path, "submodule", 2, "GPipe", steps=1, mode="submodule")
    assert proc.returncode != 0
    assert "training_step must compute the model's output with one call self(inputs)" in proc.stderr
    assert "Call self(x) exactly once, not a submodule" in proc.stderr


def test_batch_not_divisible_by_microbatches_is_a_clear_error(tmp_path):
    proc, _ = run(tmp_path, "bad", 2, "GPipe", micro=3, steps=1, batch=8)
    assert proc.returncode != 0
    assert "does not split into Pipeline(microbatches=3)" in proc.stderr


# ---------------------------------------------------------------------- in-process: no processes needed
def test_more_stages_than_blocks_is_a_clear_error():
    body = find_body(GPTModule(GPTConfig.tiny(n_layer=2)))
    with pytest.raises(MisconfigurationError, match="cannot split 2 blocks .* into 3 pipeline stages"):
        plan_split(body, 3)


def test_unknown_split_point_is_a_clear_error():
    body = find_body(GPTModule(GPTConfig.tiny(n_layer=4)))
    assert body.path == "model.blocks"
    with pytest.raises(MisconfigurationError, match="split point 'blocks.9' names no block; the blocks are model.blocks.0"):
        plan_split(body, 2, ["blocks.9"])
    assert plan_split(body, 2, ["model.blocks.3"]) == [(0, 3), (3, 4)]


def test_model_without_blocks_is_a_clear_error():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)

    with pytest.raises(MisconfigurationError, match="cannot find the blocks of Odd"):
        find_body(Odd())


def test_split_is_balanced_by_parameter_count():
    seq = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10), nn.Linear(10, 100), nn.Linear(100, 1))
    assert plan_split(find_body(seq), 2) == [(0, 3), (3, 4)] or plan_split(find_body(seq), 2) == [(0, 2), (2, 4)]
    assert plan_split(find_body(seq), 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]


def test_bad_arguments_are_clear_errors():
    with pytest.raises(MisconfigurationError, match=r"Pipeline\(schedule='Fast'\) is not known"):
        Pipeline(schedule="Fast")
    with pytest.raises(MisconfigurationError, match="microbatches"):
        Pipeline(microbatches=0)
    with pytest.raises(MisconfigurationError, match="one stage per process"):
        Pipeline(schedule="1F1B", virtual_stages=2)


def test_model_parallel_in_one_process_matches_single_device():
    from torch.utils.data import DataLoader

    from surge.demos.gpt import CharDataset
    from surge.strategies import ModelParallel

    def train(strategy):
        torch.manual_seed(0)
        model = GPTModule(GPTConfig.tiny(n_layer=4))
        trainer = surge.Trainer(strategy=strategy, accelerator="cpu", devices=1, max_steps=3, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(model, DataLoader(CharDataset(16, limit=24), batch_size=8))
        return model.state_dict()

    split, ref = train(ModelParallel(devices=["cpu", "cpu"])), train("auto")
    for name in ref:
        torch.testing.assert_close(split[name], ref[name], atol=1e-6, rtol=1e-5)


def test_split_batch_splits_every_tensor_of_the_batch_size():
    x, mask = torch.arange(8).view(4, 2), torch.ones(2)
    parts = split_batch({"x": x, "mask": mask, "name": "a", "pair": (torch.arange(4), 3)}, 4, 2)
    assert len(parts) == 2
    assert parts[1]["x"].tolist() == [[4, 5], [6, 7]]
    assert parts[0]["mask"] is mask and parts[0]["name"] == "a"  # not of the batch size: whole in each part
    assert parts[1]["pair"][0].tolist() == [2, 3] and parts[1]["pair"][1] == 3


def test_what_micro_batches_log_merges_by_reduce_fx():
    def opts(reduce, batch_size=None):
        return {"reduce_fx": reduce, "batch_size": batch_size, "sync_dist": False}

    per_micro = [[("a", torch.tensor(1.0), opts("mean")), ("s", torch.tensor(2.0), opts("sum")),
                  ("w", torch.tensor(1.0), opts("mean", 1)), ("m", torch.tensor(5.0), opts("max"))],
                 [("a", torch.tensor(3.0), opts("mean")), ("s", torch.tensor(5.0), opts("sum")),
                  ("w", torch.tensor(4.0), opts("mean", 3)), ("m", torch.tensor(2.0), opts("max"))]]
    merged = {name: (float(v), o["batch_size"]) for name, v, o in _merge_logs(per_micro)}
    assert merged == {"a": (2.0, None), "s": (7.0, None), "w": (3.25, 4), "m": (5.0, None)}


def test_batch_without_inputs_is_a_clear_error_and_pipeline_inputs_fixes_it():
    class Named(GPTModule):
        def pipeline_inputs(self, batch):
            return batch["input_ids"]

    strategy = Pipeline()
    strategy.module = GPTModule(GPTConfig.tiny(n_layer=2))
    ids = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(MisconfigurationError, match=r"Define GPTModule\.pipeline_inputs\(self, batch\)"):
        strategy._inputs_of({"input_ids": ids})
    assert strategy._inputs_of((ids, ids)) is ids
    strategy.module = Named(GPTConfig.tiny(n_layer=2))
    assert strategy._inputs_of({"input_ids": ids}) is ids
