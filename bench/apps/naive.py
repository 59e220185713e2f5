"""Naive baseline: what a user would write in an afternoon. The same model in torch eager, loaded
from the checkpoint, one image per request."""

import io
import os

import numpy as np
import torch
from fastapi import FastAPI, Request
from PIL import Image

from model.checkpoint import load_model

torch.set_num_threads(1)
model, _ = load_model(os.path.join(os.environ["VAE_MODEL_DIR"], "checkpoint.pt"))
app = FastAPI()


@app.post("/encode")
async def encode(request: Request):
    image = Image.open(io.BytesIO(await request.body())).convert("L")
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None, None]
    with torch.no_grad():
        mean, logvar = model.encode(x)
    return {"mean": mean[0].tolist(), "logvar": logvar[0].tolist()}
