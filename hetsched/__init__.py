"""hetsched: serve one ONNX model on every processor of a machine at once."""
