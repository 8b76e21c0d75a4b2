"""Model I/O: the ONNX graph, its weights beside the proto, and input bounds."""
