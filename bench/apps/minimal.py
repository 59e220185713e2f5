"""Minimal: the smallest reasonable FastAPI + onnxruntime /encode. No validation, limits,
metrics or error handling: the floor of what the work costs."""

import io
import json
import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, Request
from fastapi.responses import Response
from PIL import Image

options = ort.SessionOptions()
options.intra_op_num_threads = 1
session = ort.InferenceSession(
    os.path.join(os.environ["VAE_MODEL_DIR"], "encoder.onnx"), options, providers=["CPUExecutionProvider"]
)
app = FastAPI()


@app.post("/encode")
async def encode(request: Request) -> Response:
    image = Image.open(io.BytesIO(await request.body())).convert("L")
    x = (np.asarray(image, dtype=np.float32) / 255.0)[None, None]
    mean, logvar = session.run(None, {"image": x})
    return Response(json.dumps({"mean": mean[0].tolist(), "logvar": logvar[0].tolist()}), media_type="application/json")
