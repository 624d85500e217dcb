"""Adapters: the only modules of dynexport that touch torch's or OpenVINO's private APIs.

One module per outside system, each a thin layer with a smoke test per private symbol in
tests/test_adapters.py, so an upgrade that moves or changes one of them fails one named test
instead of quietly changing what dynexport computes:

* `torch_export`: torch.export / fx / dispatcher internals (ShapeEnv, fake mode, the
  structured-log intern table, op overload names, fx provenance, size-oblivious config);
* `torch_onnx`: torch.onnx's dynamo exporter internals (torchlib registry, program
  preparation, dispatcher);
* `openvino_frontend`: OpenVINO's PyTorch frontend internals (the fx decoder, its
  decomposition table, partial conversion, framework nodes, conversion extensions).

Nothing here is imported at `import dynexport` time beyond `torch_export`; the other two import
their system lazily, inside the functions.
"""
