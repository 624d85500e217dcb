import pytest
import torch

from dynexport.inputs import (
    Inputs,
    InputStructureError,
    flatten_outputs,
    make_probe,
    normalize_inputs,
)


def test_tuple_dict_and_pair_structures():
    x = torch.ones(2)
    assert normalize_inputs((x,)).args == (x,)
    assert normalize_inputs({"x": x}).kwargs == {"x": x}
    both = normalize_inputs(((x,), {"flag": False}))
    assert both.args == (x,) and both.kwargs == {"flag": False}
    assert normalize_inputs(x).args == (x,)


@pytest.mark.parametrize("value", [3, "images", None, (1, 2), {1: torch.ones(1)}])
def test_wrong_structures_are_named(value):
    with pytest.raises(InputStructureError, match="get_inputs"):
        normalize_inputs(value)


def test_tensor_names_follow_keyword_paths():
    inputs = Inputs(args=(torch.ones(1),),
                    kwargs={"return_loss": False, "img_inputs": (torch.ones(1), torch.ones(1))})
    assert inputs.tensor_names() == ["0", "img_inputs.0", "img_inputs.1"]
    assert len(inputs.tensors()) == 3


def test_probe_changes_floats_and_keeps_integers():
    floats = torch.linspace(-2, 5, 100)
    ranks = torch.arange(10, dtype=torch.int32)
    mask = torch.tensor([True, False])
    probe = make_probe(Inputs(args=(floats, ranks), kwargs={"mask": mask, "flag": 3}))
    new_floats, new_ranks = probe.args
    assert new_floats.shape == floats.shape and new_floats.dtype == floats.dtype
    assert not torch.allclose(new_floats, floats)
    # similar scale: the spread stays within a factor of two of the original
    assert 0.5 < new_floats.std() / floats.std() < 2.0
    assert torch.equal(new_ranks, ranks)
    assert torch.equal(probe.kwargs["mask"], mask) and probe.kwargs["flag"] == 3


def test_probe_is_deterministic():
    x = torch.randn(5)
    assert torch.equal(make_probe(Inputs((x,))).args[0], make_probe(Inputs((x,))).args[0])


def test_outputs_are_flattened_with_names():
    out = {"boxes": torch.ones(1), "aux": [torch.zeros(1), torch.zeros(2)]}
    assert [name for name, _ in flatten_outputs(out)] == ["boxes", "aux.0", "aux.1"]
    assert [name for name, _ in flatten_outputs(torch.ones(1))] == ["output"]
