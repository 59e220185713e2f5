"""The serving side: FastAPI + onnxruntime. Never imports torch."""
