"""Ceiling: an async no-op POST that reads the body and returns a constant. What FastAPI and
uvicorn themselves cost per request, served the same way as the product."""

from fastapi import FastAPI, Request
from fastapi.responses import Response

app = FastAPI()
CONSTANT = b'{"ok":true}'


@app.post("/encode")
async def noop(request: Request) -> Response:
    await request.body()
    return Response(CONSTANT, media_type="application/json")
