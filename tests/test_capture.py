import pytest
import torch

from dynexport.capture import CaptureError, capture
from dynexport.inputs import Inputs


class Plain(torch.nn.Module):
    def forward(self, x):
        return x.relu() + 1


class DynamoBreaks(torch.nn.Module):
    def forward(self, x):
        torch._dynamo.graph_break()  # strict export cannot trace past this; non-strict can
        return x * 2


class BranchesOnData(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # neither strict nor non-strict export can decide this
            return x + 1
        return x - 1


class Broken(torch.nn.Module):
    def forward(self, x):
        raise RuntimeError("this model cannot run")


class TwoHeads(torch.nn.Module):
    def forward(self, x):
        return x + 1

    def predict(self, x):
        return x * 3


def _capture(model, *args, **kwargs):
    return capture(model, Inputs(args, kwargs))


def test_strict_first():
    result = _capture(Plain(), torch.randn(3))
    assert result.strategy == "strict"
    assert [a.strategy for a in result.attempts] == ["strict"]


def test_falls_back_to_non_strict_and_records_why():
    result = _capture(DynamoBreaks(), torch.randn(3))
    assert result.strategy == "non_strict"
    strict = result.attempts[0]
    assert strict.strategy == "strict" and not strict.ok and strict.error is not None
    x = torch.randn(3)
    assert torch.equal(result.program.module()(x), x * 2)


def test_falls_back_to_draft_for_data_dependent_branches():
    result = _capture(BranchesOnData(), torch.ones(3))
    assert result.strategy == "draft"
    assert [a.ok for a in result.attempts] == [False, False, True]
    assert result.draft_report is not None and result.draft_report.failures


def test_all_strategies_failing_raises_with_every_attempt():
    with pytest.raises(CaptureError) as info:
        _capture(Broken(), torch.ones(1))
    assert [a.strategy for a in info.value.capture.attempts] == ["strict", "non_strict", "draft"]
    assert "cannot run" in str(info.value)


def test_keyword_arguments_and_constant_flags():
    class Kwargs(torch.nn.Module):
        def forward(self, return_loss=True, **kwargs):
            assert not return_loss
            a, b = kwargs["img_inputs"]
            return a @ b

    a, b = torch.randn(2, 3), torch.randn(3, 4)
    result = capture(Kwargs(), Inputs((), {"return_loss": False, "img_inputs": (a, b)}))
    placeholders = [n for n in result.program.graph.nodes if n.op == "placeholder"
                    and n.name.startswith("img")]
    assert len(placeholders) == 2  # the bool is a constant, not a graph input
    assert torch.allclose(result.program.module()(return_loss=False, img_inputs=(a, b)), a @ b)


def test_exports_a_named_method():
    result = capture(TwoHeads(), Inputs((torch.ones(2),)), method="predict")
    assert torch.equal(result.program.module()(torch.ones(2)), torch.full((2,), 3.0))


def test_named_method_with_dynamic_shapes():
    class Deploy(torch.nn.Module):
        def forward(self, x):
            return x

        def forward_trt(self, images, ranks):
            return images.sum(0) + ranks.float().sum()

    points = torch.export.Dim("points", min=2, max=1000)
    result = capture(Deploy(), Inputs((torch.randn(3, 4), torch.arange(5))),
                     dynamic_shapes=(None, {0: points}), method="forward_trt")
    assert result.strategy == "strict"
    out = result.program.module()(torch.randn(3, 4), torch.arange(9))
    assert out.shape == (4,)


def test_dynamic_shapes_are_honoured():
    batch = torch.export.Dim("batch", min=1, max=32)
    result = capture(Plain(), Inputs((torch.randn(4, 3),)), dynamic_shapes=({0: batch},))
    assert result.program.module()(torch.randn(7, 3)).shape == (7, 3)
