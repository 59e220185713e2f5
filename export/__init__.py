"""Checkpoint -> ONNX encoder and decoder graphs + manifest. The manifest's format and the graphs'
reader are in `model.core` (torch-free), which the service reads them with."""
