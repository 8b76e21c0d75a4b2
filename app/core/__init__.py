"""What the API and the worker share: settings, database, blob store, job state, task names and the
Celery factory. Nothing here knows about HTTP, and nothing imports torch or onnx."""
