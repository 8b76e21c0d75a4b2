"""The HTTP side: the FastAPI application, its routes, request handling and the dashboard.

Imports ``app.core`` and the light parts of the library (``pruning_core.spec``, the zip and npz
header checks); never the worker, torch or onnx (tests/service/test_layers.py)."""
