"""Backends: an ExportedProgram → a deployable artifact (ONNX file, OpenVINO IR)."""
