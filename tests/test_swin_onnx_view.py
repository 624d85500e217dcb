"""Swin's attention through torch.onnx (dynexport/decompositions/attention_layout.py): a mask
computed from a parameter and a transposed query make CPU attention's output layout depend on
whether the mask requires grad, and torch.onnx's re-trace then fails on a `view`. dynexport
copies the output to contiguous memory and the ONNX model matches eager, dynamic batch kept."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dynexport
from dynexport.conversion import replaced_ops
from dynexport.decompositions import decompose
from dynexport.runtimes import OnnxRuntimeRunner, OpenVINORunner

pytestmark = pytest.mark.slow  # converts through both exporters

HEADS, TOKENS, WIDTH = 2, 16, 32


class WindowAttention(torch.nn.Module):
    """The shape of transformers' SwinAttention: per-head bias from a parameter table,
    query/key/value as `linear(x).view(B, L, H, D).transpose(1, 2)`, output transposed back
    and made contiguous before the output projection."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.qkv = torch.nn.Linear(WIDTH, 3 * WIDTH)
        self.bias_table = torch.nn.Parameter(torch.randn(TOKENS * TOKENS, HEADS,
                                                         generator=generator))

    def forward(self, x):
        batch = x.shape[0]
        q, k, v = (t.view(batch, TOKENS, HEADS, -1).transpose(1, 2)
                   for t in self.qkv(x).chunk(3, dim=-1))
        bias = self.bias_table.view(TOKENS, TOKENS, HEADS).permute(2, 0, 1).unsqueeze(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # the attention line
        return out.transpose(1, 2).contiguous().reshape(batch, TOKENS, -1)


class ContiguousQueryAttention(torch.nn.Module):
    def forward(self, x, mask):
        q = self.bias_table.new_ones(1) * x.view(x.shape[0], HEADS, TOKENS, -1)
        out = F.scaled_dot_product_attention(q, q, q, attn_mask=mask + self.bias_table[0])
        return out.transpose(1, 2).reshape(x.shape[0], -1)

    def __init__(self):
        super().__init__()
        self.bias_table = torch.nn.Parameter(torch.zeros(TOKENS))


class InputMaskAttention(torch.nn.Module):
    """BERT's case: the mask is an input, not computed from a parameter."""

    def forward(self, x, mask):
        q = x.view(x.shape[0], TOKENS, HEADS, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, q, q, attn_mask=mask)
        return out.transpose(1, 2).reshape(x.shape[0], -1)


def _batch(size: int, seed: int) -> torch.Tensor:
    return torch.randn(size, TOKENS, WIDTH, generator=torch.Generator().manual_seed(seed))


def _program(model: torch.nn.Module) -> torch.export.ExportedProgram:
    return torch.export.export(model, (_batch(3, 1),),
                               dynamic_shapes=({0: torch.export.Dim("batch", max=64)},))


def test_without_dynexport_torch_onnx_fails_on_the_view():
    with pytest.raises(Exception, match="Cannot view a tensor with shape"):
        torch.onnx.export(_program(WindowAttention().eval()), (), dynamo=True, verbose=False)


def test_dynexport_converts_it_with_the_batch_dynamic_and_matches_eager(tmp_path):
    model = WindowAttention().eval()
    program = dynexport.export(model, (_batch(3, 1),),
                               dynamic_shapes=({0: torch.export.Dim("batch", max=64)},))
    onnx = OnnxRuntimeRunner(dynexport.to_onnx(program, tmp_path / "model.onnx"), 1)
    openvino = OpenVINORunner(dynexport.to_openvino(program))
    for batch, seed in ((3, 1), (5, 2)):  # the export's batch and another
        x = _batch(batch, seed)
        with torch.no_grad():
            expected = model(x).numpy()  # eager PyTorch
        for runner in (onnx, openvino):
            np.testing.assert_allclose(runner.run([x.numpy()])[0], expected,
                                       rtol=1e-5, atol=1e-5, err_msg=runner.name)


def test_the_copy_is_reported_at_the_users_attention_line():
    program = _program(WindowAttention().eval())
    replaced = replaced_ops(program, decompose(program))
    assert [(op, location.line) for op, location in replaced] == [
        ("aten.scaled_dot_product_attention.default", _attention_line())]
    assert replaced[0][1].file == __file__


@pytest.mark.parametrize("model", [ContiguousQueryAttention, InputMaskAttention])
def test_attentions_whose_kernel_cannot_change_are_left_as_captured(model):
    program = torch.export.export(model(), (_batch(2, 1), torch.randn(TOKENS, TOKENS)))
    assert decompose(program) is program


def _attention_line() -> int:
    lines = open(__file__).read().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.endswith("# the attention line"))
