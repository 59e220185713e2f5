"""The ASGI floor: a bare ASGI app on uvicorn that reads the body and sends a constant the size of /encode's
answer, with no framework and no work. What uvicorn's HTTP protocol and the ASGI calls themselves cost per
request: no ASGI server in front of a Python app does less (bench/hot_path.py)."""

from typing import Any

# /encode's answer for a 32-dimensional latent: 32 means and 32 log-variances of about nine characters
_NUMBERS = b",".join([b"-0.1234567"] * 32)
BODY = b'{"model":"m/1","results":[{"index":0,"mean":[' + _NUMBERS + b'],"logvar":[' + _NUMBERS + b"]}]}"
HEAD = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())],
}


async def lifespan(receive: Any, send: Any) -> None:
    """The lifespan protocol with nothing to start or stop (the lean app's model loads at import)."""
    message = await receive()
    if message["type"] == "lifespan.startup":
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        await lifespan(receive, send)
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send(HEAD)
    await send({"type": "http.response.body", "body": BODY})
