"""The onnxruntime backend: sessions, figures (params, MACs, latency, fidelity), calibration data."""
