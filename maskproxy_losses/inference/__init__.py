"""Using a trained model: safe model-directory loading, export, batched and cached embedding
extraction, the Python API (embed / enrol / identify / verify), ONNX export and runtime,
and the authors' checkpoint converter."""
