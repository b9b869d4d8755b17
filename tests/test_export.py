"""Module.to_onnx / to_torchscript / to_exported_program: each exported file is loaded back and run
(ONNX with onnxruntime) and must give the module's own output."""
from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import surge

SRC = os.path.join(os.path.dirname(__file__), os.pardir, "src")


def _missing(*packages):
    absent = [p for p in packages if importlib.util.find_spec(p) is None]
    return pytest.mark.skipif(bool(absent), reason=f"{', '.join(absent)} not installed (pip install 'surge[onnx]')")


pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # torch deprecates TorchScript

needs_onnx = _missing("onnx", "onnxruntime")
needs_onnxscript = _missing("onnx", "onnxruntime", "onnxscript")


class Net(surge.Module):
    """Dropout and batch norm make train and eval mode differ, so an export in the wrong mode shows."""

    def __init__(self):
        super().__init__()
        self.save_hyperparameters()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
        self.example_input_array = torch.randn(4, 8)

    def forward(self, x):
        return self.body(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class TwoInputs(surge.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 5)
        self.b = nn.Linear(10, 5)
        self.example_input_array = (torch.rand(2, 3), torch.rand(2, 10))

    def forward(self, x, y):
        return torch.tanh(self.a(x) + self.b(y))


def trained_net():
    torch.manual_seed(0)
    model = Net()
    data = torch.utils.data.TensorDataset(torch.randn(32, 8), torch.randint(0, 3, (32,)))
    surge.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False).fit(model, torch.utils.data.DataLoader(data, batch_size=8))
    model.train()  # as a user's model is after fit: the exports must not depend on it
    return model


def reference(model, *inputs):
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(*inputs)
    model.train(was)
    return out


def run_onnx(source, *inputs):
    import onnxruntime

    session = onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])
    feed = {arg.name: x.numpy() for arg, x in zip(session.get_inputs(), inputs)}
    return torch.from_numpy(session.run(None, feed)[0])


# ---------------------------------------------------------------------- ONNX
@needs_onnxscript
def test_onnx_default_exporter_matches_the_module(tmp_path):
    model = trained_net()
    x = torch.randn(5, 8)
    path = tmp_path / "model.onnx"
    program = model.to_onnx(path, x)  # torch 2.9+: the torch.export-based exporter, an ONNXProgram back
    assert isinstance(program, torch.onnx.ONNXProgram)
    assert model.training  # its mode is given back
    torch.testing.assert_close(run_onnx(str(path), x), reference(model, x), rtol=1e-4, atol=1e-5)


@needs_onnx
def test_onnx_legacy_exporter_uses_example_input_array_and_writes_to_a_file_object(tmp_path):
    model = trained_net()
    buffer = io.BytesIO()
    assert model.to_onnx(buffer, dynamo=False) is None  # shape taken from model.example_input_array
    x = torch.randn(4, 8)
    torch.testing.assert_close(run_onnx(buffer.getvalue(), x), reference(model, x), rtol=1e-4, atol=1e-5)

    two = TwoInputs()
    path = str(tmp_path / "two.onnx")
    two.to_onnx(path, dynamo=False, input_names=["x", "y"])
    x, y = two.example_input_array
    torch.testing.assert_close(run_onnx(path, x, y), reference(two, x, y), rtol=1e-4, atol=1e-5)


def test_export_without_an_input_names_both_ways_to_give_one(tmp_path):
    model = TwoInputs()
    model.example_input_array = None
    for export, argument in [(lambda: model.to_onnx(tmp_path / "m.onnx"), "input_sample"),
                             (lambda: model.to_torchscript(method="trace"), "example_inputs"),
                             (lambda: model.to_exported_program(), "input_sample")]:
        with pytest.raises(ValueError, match=rf"`{argument}`.*`example_input_array`"):
            export()
    assert not (tmp_path / "m.onnx").exists()


# ---------------------------------------------------------------------- TorchScript
def test_torchscript_script_saves_a_module_that_gives_the_same_output(tmp_path):
    model = trained_net()
    path = tmp_path / "model.pt"
    scripted = model.to_torchscript(file_path=path)
    assert isinstance(scripted, torch.jit.ScriptModule)
    assert model.training and not scripted.training
    x = torch.randn(6, 8)
    loaded = torch.jit.load(str(path))
    torch.testing.assert_close(loaded(x), reference(model, x))
    torch.testing.assert_close(scripted(x), reference(model, x))


def test_torchscript_trace_takes_example_inputs_or_example_input_array(tmp_path):
    two = TwoInputs()
    x, y = torch.rand(7, 3), torch.rand(7, 10)
    traced = two.to_torchscript(tmp_path / "given.pt", method="trace", example_inputs=(x, y))
    torch.testing.assert_close(torch.jit.load(str(tmp_path / "given.pt"))(x, y), two(x, y))
    torch.testing.assert_close(traced(x, y), two(x, y))
    buffer = io.BytesIO()
    two.to_torchscript(buffer, method="trace")  # from example_input_array
    buffer.seek(0)
    torch.testing.assert_close(torch.jit.load(buffer)(x, y), two(x, y))


def test_torchscript_bad_method_names_the_argument():
    with pytest.raises(ValueError, match=r"method='compile'.*'script', 'trace'"):
        Net().to_torchscript(method="compile")


# ---------------------------------------------------------------------- torch.export
def test_exported_program_saved_and_loaded_gives_the_same_output(tmp_path):
    model = trained_net()
    batch = torch.export.Dim("batch", min=2, max=64)
    path = tmp_path / "model.pt2"
    program = model.to_exported_program(path, dynamic_shapes={"x": {0: batch}})
    assert isinstance(program, torch.export.ExportedProgram)
    assert model.training
    x = torch.randn(9, 8)  # another batch size than example_input_array's 4
    torch.testing.assert_close(torch.export.load(str(path)).module()(x), reference(model, x))

    two = TwoInputs()
    x, y = two.example_input_array
    keyword = two.to_exported_program(input_sample={"x": x, "y": y})
    torch.testing.assert_close(keyword.module()(x=x, y=y), two(x, y))


# ---------------------------------------------------------------------- import cost and names
def test_import_surge_loads_no_onnx():
    code = ("import surge, surge.lightning; surge.Module.to_onnx; import sys; "
            "bad = [m for m in ('onnx', 'onnxscript', 'onnxruntime', 'surge.export') if m in sys.modules]; "
            "assert not bad, bad")
    env = dict(os.environ, PYTHONPATH=os.path.abspath(SRC))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_lightning_module_has_the_exports():
    import surge.lightning as pl

    model = pl.LightningModule()
    assert model.example_input_array is None
    model.example_input_array = torch.zeros(1)
    assert torch.equal(model.example_input_array, torch.zeros(1))
    assert pl.LightningModule.to_onnx is surge.Module.to_onnx
    assert pl.LightningModule.to_torchscript is surge.Module.to_torchscript
