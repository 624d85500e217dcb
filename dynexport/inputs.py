"""Example inputs: the (args, kwargs) a model is called with, their tensor leaves, and the
probe (a second, different input) that catches values baked into the graph."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils import _pytree as pytree


class InputStructureError(TypeError):
    """Inputs are not one of the structures contract §2 allows."""


@dataclass
class Inputs:
    """Positional and keyword arguments of one model call."""

    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def tensors(self) -> list[torch.Tensor]:
        """Tensor leaves in the order torch.export makes them graph inputs."""
        return [leaf for leaf in pytree.tree_leaves((self.args, self.kwargs))
                if isinstance(leaf, torch.Tensor)]

    def tensor_names(self) -> list[str]:
        """A readable name per tensor leaf, e.g. `x`, `img_inputs.0`."""
        names = []
        for path, leaf in pytree.tree_flatten_with_path((self.args, self.kwargs))[0]:
            if isinstance(leaf, torch.Tensor):
                names.append(key_path_name(path[1:]) if path else "input")
        return names


def key_path_name(path: tuple) -> str:
    """`img_inputs.0` for the key path of a leaf; `output` for the root."""
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    return ".".join(parts) or "output"


def normalize_inputs(value: Any, source: str = "get_inputs()") -> Inputs:
    """Accept a tuple of positional args, a dict of kwargs, a pair (args, kwargs), or a
    single tensor; anything else is an InputStructureError naming `source`."""
    if isinstance(value, Inputs):
        return value
    if isinstance(value, torch.Tensor):
        return Inputs(args=(value,))
    if isinstance(value, dict):
        _check_keys(value, source)
        return Inputs(kwargs=dict(value))
    if isinstance(value, list):
        value = tuple(value)
    if (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], (tuple, list))
            and isinstance(value[1], dict)):
        _check_keys(value[1], source)
        return Inputs(args=tuple(value[0]), kwargs=dict(value[1]))
    if isinstance(value, tuple):
        if not any(isinstance(leaf, torch.Tensor) for leaf in pytree.tree_leaves(value)):
            raise InputStructureError(
                f"{source} returned a tuple without any tensor ({_describe(value)}). "
                "Return a tuple of positional tensors, a dict of keyword arguments, or a pair "
                "(args_tuple, kwargs_dict) holding the tensors the model is called with.")
        return Inputs(args=value)
    raise InputStructureError(
        f"{source} returned {_describe(value)}, which is not a model input. Return a tuple of "
        "positional arguments, a dict of keyword arguments, or a pair (args_tuple, "
        "kwargs_dict), e.g. `return (torch.randn(1, 3, 224, 224),)`.")


def _check_keys(kwargs: dict, source: str) -> None:
    bad = [k for k in kwargs if not isinstance(k, str) or not k.isidentifier()]
    if bad:
        raise InputStructureError(
            f"{source} returned keyword arguments with keys {bad!r}, which are not Python "
            "identifiers. Use the parameter names of the model's forward as keys.")


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'…' if len(text) > 60 else ''}"


def make_probe(example: Inputs, seed: int = 20261125) -> Inputs:
    """A second input of the same structure: floating-point tensors get new values of similar
    scale, integer and bool tensors are kept (they are usually indices or masks)."""
    generator = torch.Generator().manual_seed(seed)

    def perturb(leaf: Any) -> Any:
        if not isinstance(leaf, torch.Tensor) or not leaf.is_floating_point() or not leaf.numel():
            return leaf
        ref = leaf.detach().to(torch.float64)
        spread = ref.std().item() if ref.numel() > 1 else 0.0
        scale = spread if spread > 0 else max(ref.abs().mean().item(), 1.0)
        noise = torch.randn(leaf.shape, generator=generator, dtype=torch.float64)
        return (ref + scale * noise).to(leaf.dtype)

    args, kwargs = pytree.tree_map(perturb, (example.args, example.kwargs))
    return Inputs(args=args, kwargs=kwargs)


def eager_call(model: torch.nn.Module, method: str = "forward") -> Callable[[Inputs], Any]:
    """The reference: the user's model, called on an Inputs the way the script says."""
    function = getattr(model, method)
    return lambda inputs: function(*inputs.args, **inputs.kwargs)


def flatten_outputs(outputs: Any) -> list[tuple[str, Any]]:
    """Name every leaf of a (nested) model output: `0`, `logits`, `occ.1`, or `output`."""
    leaves, _ = pytree.tree_flatten_with_path(outputs)
    return [(key_path_name(path), leaf) for path, leaf in leaves]


def program_output_names(program: Any) -> list[str] | None:
    """The names `flatten_outputs` gives eager's outputs, for the outputs of an
    ExportedProgram, in order: what the converted models call their outputs (the report's
    verification table uses the same names). None when an output is not a tensor (a
    converted model has no output for it, so names and outputs would not pair), or when two
    names are equal or one is an input's name."""
    signature = program.graph_signature
    values = {node.name: node.meta.get("val") for node in program.graph.nodes}
    if not all(isinstance(values.get(name), torch.Tensor) for name in signature.user_outputs):
        return None
    spec = program.call_spec.out_spec
    names = [name for name, _ in
             flatten_outputs(pytree.tree_unflatten(list(range(spec.num_leaves)), spec))]
    if len(set(names)) != len(names) or set(names) & set(signature.user_inputs):
        return None
    return names


@dataclass(frozen=True)
class Signature:
    """The names a program gives its tensor inputs (in the order of `Inputs.tensors()`) and
    its outputs (None where `program_output_names` cannot name them): both artifacts carry
    these names, and every runtime is fed and read by them."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...] | None

    @classmethod
    def of(cls, program: Any) -> Signature:
        user_inputs = set(program.graph_signature.user_inputs)
        inputs = tuple(node.name for node in program.graph.nodes
                       if node.op == "placeholder" and node.name in user_inputs
                       and isinstance(node.meta.get("val"), torch.Tensor))
        outputs = program_output_names(program)
        return cls(inputs, tuple(outputs) if outputs is not None else None)
