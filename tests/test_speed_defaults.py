"""Speed arguments on the CPU: compile=, fuse_optimizers=, allow_tf32=, cuda_graphs= (its errors), the
prefetcher's absence on CPU, cheap import, and precisions a device cannot do. GPU paths: test_precision_gpu.py."""
import subprocess
import sys
import types

import pytest
import torch
from torch.utils.data import DataLoader

from surge import Trainer
from surge.cuda_graphs import GraphedForward, check_cuda_graphs_args
from surge.demos.toy import ToyModel, ToyDataset
from surge.speed import SpeedSettings, fuse_optimizer
from surge.utils import MisconfigurationError, SurgeError


def make_trainer(**kwargs):
    base = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    base.update(kwargs)
    return Trainer(**base)


class LossRecorder(ToyModel):
    def __init__(self):
        super().__init__()
        self.losses = []

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.losses.append(loss.detach().clone())
        return loss


# ---------------------------------------------------------------------------------------- cheap import
def test_import_and_trainer_without_compile_do_not_load_dynamo():
    code = ("import sys, surge; t = surge.Trainer(accelerator='cpu', logger=False, enable_progress_bar=False); "
            "print('torch._dynamo' in sys.modules, 'torch._inductor' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# ---------------------------------------------------------------------------------------- compile
@pytest.mark.parametrize("bad", ["yes", 1, {"modee": "max-autotune"}, ["mode"]])
def test_bad_compile_argument_is_a_clear_error(bad):
    with pytest.raises(MisconfigurationError, match="compile"):
        make_trainer(compile=bad)


def _inductor_works():
    try:
        fn = torch.compile(lambda x: (x * 2).sum())
        fn(torch.ones(3))
        return ""
    except Exception as err:  # noqa: BLE001  (any failure: no working compiler toolchain here)
        return f"torch.compile does not work here: {type(err).__name__}: {err}"[:200]


@pytest.fixture(scope="module")
def inductor():
    reason = _inductor_works()
    if reason:
        pytest.skip(reason)


def test_compile_trains_like_eager_without_graph_breaks(inductor):
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    eager = LossRecorder()
    make_trainer(max_epochs=2).fit(eager)
    torch.manual_seed(0)
    compiled = LossRecorder()
    counters.clear()
    trainer = make_trainer(max_epochs=2, compile=True)
    trainer.fit(compiled)
    assert compiled._compiled_call_impl is not None  # the module's call went through torch.compile
    assert len(compiled.losses) == len(eager.losses) == 16
    torch.testing.assert_close(torch.stack(compiled.losses), torch.stack(eager.losses), rtol=1e-5, atol=1e-6)
    for a, b in zip(compiled.parameters(), eager.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # self.log is in training_step, outside the compiled forward: nothing broke the graph.
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert "train_loss" in trainer.callback_metrics
    # compiled in place: the checkpoint keys are the plain ones
    assert set(compiled.state_dict()) == {"layer.weight", "layer.bias"}


def test_compiled_forward_is_one_graph(inductor):
    import torch._dynamo

    model = ToyModel()
    explanation = torch._dynamo.explain(model)(torch.randn(4, 32))
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


def test_compile_options_are_passed_and_compiled_once(inductor, monkeypatch):
    calls = []
    model = ToyModel()
    original = torch.nn.Module.compile

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "compile", spy)
    trainer = make_trainer(max_steps=2, compile={"backend": "eager", "fullgraph": True})
    trainer.fit(model)
    trainer.fit(model)  # a second fit reuses the compiled module
    assert calls == [{"backend": "eager", "fullgraph": True}]


# ---------------------------------------------------------------------------------------- fused optimizers
def test_cpu_keeps_the_optimizer_as_written():
    model = ToyModel()
    trainer = make_trainer(max_steps=2)
    trainer.fit(model)
    opt = trainer.optimizers[0]
    assert opt.defaults["fused"] is None and opt.defaults["foreach"] is None
    assert all(g["fused"] is None for g in opt.param_groups)


def test_fuse_optimizer_leaves_cpu_explicit_and_subclassed_optimizers_alone():
    p = torch.nn.Parameter(torch.randn(3))
    assert not fuse_optimizer(torch.optim.Adam([p]))  # CPU parameters
    meta = torch.nn.Parameter(torch.randn(3, device="meta"))
    assert not fuse_optimizer(torch.optim.AdamW([meta], foreach=False))

    class MyAdam(torch.optim.Adam):
        pass

    assert not fuse_optimizer(MyAdam([p]))
    assert not fuse_optimizer(torch.optim.RMSprop([p]))


def test_fuse_optimizer_sets_fused_on_cuda_parameters(monkeypatch):
    # No GPU here: pretend the parameters are CUDA tensors to check what gets set (not a step).
    p = torch.nn.Parameter(torch.randn(3))
    monkeypatch.setattr(torch.Tensor, "device", property(lambda self: torch.device("cuda", 0)))
    opt = torch.optim.AdamW([p], lr=0.1)
    assert fuse_optimizer(opt)
    assert opt.defaults["fused"] is True and opt.param_groups[0]["fused"] is True
    assert opt._step_supports_amp_scaling
    assert not fuse_optimizer(torch.optim.SGD([p], lr=0.1, fused=False))


@pytest.mark.parametrize("arg,bad", [("fuse_optimizers", "yes"), ("allow_tf32", "auto"), ("cuda_graphs", 1)])
def test_bad_switches_are_clear_errors(arg, bad):
    with pytest.raises(MisconfigurationError, match=arg):
        make_trainer(**{arg: bad})


def test_allow_tf32_true_on_cpu_warns_and_changes_nothing():
    before = torch.get_float32_matmul_precision()
    with pytest.warns(UserWarning, match="allow_tf32=True does nothing on cpu"):
        make_trainer(max_steps=1, allow_tf32=True).fit(ToyModel())
    assert torch.get_float32_matmul_precision() == before


# ---------------------------------------------------------------------------------------- input pipeline
def test_cpu_iterates_the_loader_itself():
    loader = DataLoader(ToyDataset(32, 16), batch_size=4)
    trainer = make_trainer()
    trainer.module = ToyModel()
    assert trainer._speed.wrap_train_loader(trainer, loader) is loader


# ---------------------------------------------------------------------------------------- CUDA graphs: errors
def test_cuda_graphs_on_cpu_is_a_construction_error():
    with pytest.raises(MisconfigurationError, match="cuda_graphs=True needs a CUDA device"):
        make_trainer(cuda_graphs=True)


def _fake_strategy(cls):
    strategy = cls()
    strategy.root_device = torch.device("cuda", 0)  # a device object only: nothing runs on it
    return strategy


def test_cuda_graphs_argument_checks():
    from surge.strategies.ddp import DDP
    from surge.strategies.single import SingleDevice

    with pytest.raises(MisconfigurationError, match="one device only"):
        check_cuda_graphs_args(_fake_strategy(DDP), None, 1)
    with pytest.raises(MisconfigurationError, match="reduce-overhead"):
        check_cuda_graphs_args(_fake_strategy(SingleDevice), {}, 1)
    with pytest.raises(MisconfigurationError, match="accumulate_grad_batches=1"):
        check_cuda_graphs_args(_fake_strategy(SingleDevice), None, 4)
    check_cuda_graphs_args(_fake_strategy(SingleDevice), None, 1)  # fine


def test_cuda_graphs_refuse_manual_optimization():
    from surge.strategies.single import SingleDevice

    settings = SpeedSettings(cuda_graphs=True, strategy=_fake_strategy(SingleDevice))
    module = ToyModel()
    module.automatic_optimization = False
    trainer = types.SimpleNamespace(module=module, strategy=_fake_strategy(SingleDevice), optimizers=[])
    with pytest.raises(MisconfigurationError, match="automatic optimisation"):
        settings.setup_optimizers(trainer)


def test_graphed_forward_checks_shapes_and_arguments_and_runs_eager_in_eval():
    module = ToyModel()
    captured = []

    def fake_capture(args):  # stands in for make_graphed_callables on the CPU
        captured.append([a.shape for a in args])
        return module.layer

    module.forward = forward = GraphedForward(module, capture=fake_capture)
    x = torch.randn(8, 32)
    out = module(x)
    torch.testing.assert_close(out, module.layer(x))
    module(torch.randn(8, 32))
    assert captured == [[torch.Size([8, 32])]]  # captured once, replayed after
    with pytest.raises(SurgeError, match=r"same shapes.*\[8, 32\].*\[3, 32\].*drop_last=True"):
        module(torch.randn(3, 32))
    with pytest.raises(SurgeError, match="keyword arguments"):
        module(x=x)
    module.eval()
    module(torch.randn(3, 32))  # evaluation runs the eager forward, any shape
    with torch.no_grad():
        module.train()
        module(torch.randn(5, 32))  # no grad: eager too
    assert len(captured) == 1 and forward.graphed is not None


# ---------------------------------------------------------------------------------------- precision checks
def test_mixed_precision_on_a_device_without_autocast_is_an_error():
    from surge.precision import get_precision

    with pytest.raises(MisconfigurationError, match="16-mixed"):
        get_precision("16-mixed", torch.device("meta"))


def _count_layer_calls(monkeypatch):
    """Count the calls of the layers between the fit loop and torch that a plain step can go without."""
    from surge import precision, strategies
    from surge.module_hooks import ModuleHooks

    calls = {"zero_grad": 0, "backward": 0, "optimizer_step": 0}

    def counting(cls, name, key):
        original = getattr(cls, name)

        def wrapper(*args, **kwargs):
            calls[key] += 1
            return original(*args, **kwargs)
        monkeypatch.setattr(cls, name, wrapper)

    counting(ModuleHooks, "optimizer_zero_grad", "zero_grad")
    counting(precision.Precision, "backward", "backward")
    counting(strategies.strategy.Strategy, "optimizer_step", "optimizer_step")
    return calls


def test_a_plain_step_calls_torch_directly_and_a_customised_one_goes_through_every_layer(monkeypatch):
    # Nothing listens or overrides: zero_grad, backward and the optimizer step run without the layers in between
    # (a dozen Python calls a step fewer); the losses are those of the full path below.
    torch.manual_seed(0)
    plain = LossRecorder()
    make_trainer(max_steps=4).fit(plain, DataLoader(ToyDataset(32, 64), batch_size=8))
    calls = _count_layer_calls(monkeypatch)
    torch.manual_seed(0)
    again = LossRecorder()
    make_trainer(max_steps=4).fit(again, DataLoader(ToyDataset(32, 64), batch_size=8))
    assert calls == {"zero_grad": 0, "backward": 0, "optimizer_step": 0}

    class Customised(LossRecorder):  # its own backward and zero_grad hooks: every layer again
        def backward(self, loss, *args, **kwargs):
            loss.backward(*args, **kwargs)

        def optimizer_zero_grad(self, epoch, batch_idx, optimizer):
            super().optimizer_zero_grad(epoch, batch_idx, optimizer)

    torch.manual_seed(0)
    custom = Customised()
    # gradient clipping needs the full optimizer step (the precision unscales before it)
    make_trainer(max_steps=4, gradient_clip_val=1e6).fit(custom, DataLoader(ToyDataset(32, 64), batch_size=8))
    assert calls == {"zero_grad": 4, "backward": 4, "optimizer_step": 4}
    assert plain.losses == again.losses == custom.losses
