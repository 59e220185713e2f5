"""Checkpoint -> ONNX encoder and decoder graphs + manifest. Only `export.manifest` is torch-free."""
