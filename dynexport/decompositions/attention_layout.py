"""scaled_dot_product_attention's output copied to contiguous memory where its layout depends
on the CPU kernel torch picks, so that torch.onnx's two passes over the program agree.

On CPU, `aten.scaled_dot_product_attention` runs the flash kernel, whose output is laid out as
its query (`empty_like(query)`), unless `attn_mask` requires grad: then the math kernel, whose
output is contiguous. transformers' Swin computes its mask from a parameter (the relative
position bias) and its query as `linear(x).view(B, L, H, D).transpose(1, 2)`, so the two
layouts differ. torch.onnx re-traces the program below autograd (`run_decompositions`: the mask
does not require grad, flash, so `out.transpose(1, 2).contiguous()` is already contiguous:
the copy is dropped and the following `reshape` recorded as a `view`), then re-runs it with
grad enabled and parameters that require grad (`InsertTypePromotion`: math, contiguous output,
and that `view` of its transpose is illegal): "Cannot view a tensor with shape [B, 16, 2, 16]
and strides (512, 16, 256, 1)". torch 2.13, static or dynamic batch alike.

A contiguous copy of the output makes every later op see the same strides whichever kernel
runs. Only an attention whose query is not contiguous (otherwise both kernels return contiguous
outputs) and whose floating mask is computed from a parameter (otherwise both passes pick the
same kernel: BERT's mask from an input, ViT without one) gets it. Both converters translate
the copy as nothing."""

from __future__ import annotations

import torch
from torch import fx
from torch.export import ExportedProgram

from dynexport.adapters.torch_export import fake_mode_of, named_graph_copy
from dynexport.decompositions.splice import DECOMPOSED_FROM

ATTENTION = torch.ops.aten.scaled_dot_product_attention.default


def kernel_dependent_attentions(graph: fx.Graph) -> list[fx.Node]:
    """The top-level attention nodes of `graph` whose output layout depends on the kernel:
    query not contiguous, a floating mask computed from a parameter, output read by another
    node."""
    return [node for node in graph.nodes
            if node.op == "call_function" and node.target is ATTENTION
            and _query_is_strided(node) and _mask_from_parameter(node)
            and any(user.op != "output" for user in node.users)]


def pin_attention_layouts(program: ExportedProgram) -> ExportedProgram:
    """`program` with a contiguous copy after each kernel-dependent attention (a new program
    sharing the weights), or `program` itself when it has none."""
    if not kernel_dependent_attentions(program.graph):
        return program
    module = fx.GraphModule(program.graph_module, named_graph_copy(program.graph))
    graph = module.graph
    fake_mode = fake_mode_of(program)
    for node in kernel_dependent_attentions(graph):
        with graph.inserting_after(node):
            pinned = graph.call_function(torch.ops.aten.clone.default, (node,),
                                         {"memory_format": torch.contiguous_format})
        # the program's outputs keep naming the attention node: the signature stays valid
        node.replace_all_uses_with(pinned, delete_user_cb=lambda user, pinned=pinned:
                                   user.op != "output" and user is not pinned)
        for key, value in node.meta.items():  # the user's line, module path, provenance
            if key not in ("val", "tensor_meta", "unbacked_bindings"):
                pinned.meta[key] = value
        with fake_mode:
            pinned.meta["val"] = node.meta["val"].clone(memory_format=torch.contiguous_format)
        pinned.meta[DECOMPOSED_FROM] = ATTENTION
    module.recompile()
    return ExportedProgram(
        root=module, graph=graph, graph_signature=program.graph_signature,
        state_dict=program.state_dict, range_constraints=program.range_constraints,
        module_call_graph=program.module_call_graph, example_inputs=program.example_inputs,
        constants=program.constants, verifiers=program.verifiers)


def _query_is_strided(node: fx.Node) -> bool:
    query = node.args[0].meta.get("val") if isinstance(node.args[0], fx.Node) else None
    return isinstance(query, torch.Tensor) and not query.is_contiguous()


def _mask_from_parameter(node: fx.Node) -> bool:
    """Whether the attention's mask is a floating tensor computed from an input that requires
    grad (a parameter): the mask requires grad wherever grad is on."""
    mask = node.kwargs.get("attn_mask", node.args[3] if len(node.args) > 3 else None)
    value = mask.meta.get("val") if isinstance(mask, fx.Node) else None
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        return False
    seen, pending = set(), [mask]
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        if current.op == "placeholder" and getattr(current.meta.get("val"), "requires_grad",
                                                   False):
            return True
        pending.extend(current.all_input_nodes)
    return False
