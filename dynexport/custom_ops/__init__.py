"""dynexport's custom ops: each module holds one op's kernel, fake kernel, autograd,
ONNX translation and OpenVINO conversion side by side (see README.md here)."""
