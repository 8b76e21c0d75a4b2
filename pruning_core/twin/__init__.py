"""The torch backend: the differentiable twin of an ONNX graph and its op table."""
