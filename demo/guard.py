"""An HTTP guard in front of the page's API: payloads Gradio itself would fail on are answered in one line.

Gradio checks an event's inputs before the app's handler runs: a file path that was never uploaded, an image
input that is not a file payload, or too few input values raise inside Gradio, which logs a traceback and sends
the client `"error": null`. This ASGI middleware reads the JSON body of each event call (`/queue/join`,
`/call/NAME`, `/run/NAME`), looks the event up in the running Blocks, and answers such a call itself with status
422 and one sentence, before Gradio sees it. Everything else passes through unchanged; the page never sends
such payloads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from gradio import components
from gradio.utils import get_upload_folder

MAX_BODY = 1 << 20  # an event call's JSON is small (uploads go to /upload); larger bodies are refused
EVENT_PATHS = ("/queue/join", "/call/", "/run/", "/api/")


def _is_event_call(scope) -> bool:
    return scope["type"] == "http" and scope["method"] == "POST" and any(p in scope["path"] for p in EVENT_PATHS)


def _block_fn(blocks, path: str, body: dict):
    """The BlockFunction a call names: by fn_index (the queue) or by its api_name (the REST routes)."""
    fns = list(blocks.fns.values()) if isinstance(blocks.fns, dict) else list(blocks.fns)
    if path.endswith("/queue/join"):
        index = body.get("fn_index")
        return next((f for f in fns if getattr(f, "id", None) == index), None) if isinstance(index, int) else None
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return next((f for f in fns if getattr(f, "api_name", None) == name), None)


def _uploaded(path) -> bool:
    if not isinstance(path, str) or not path:
        return False
    folder = os.path.realpath(get_upload_folder())
    return os.path.realpath(path).startswith(folder + os.sep)


def image_problem(value) -> str | None:
    """Why an image input's payload cannot be used, or None."""
    if value is None:
        return None
    if not isinstance(value, dict):
        return "the image must be a file uploaded to this server (gradio_client's handle_file uploads one)"
    if value.get("path") is None:
        return None  # the handler says "no image yet"
    if not _uploaded(value.get("path")):
        return (f"the image '{Path(str(value.get('path'))).name[:60]}' was never uploaded to this server: upload it "
                "first (gradio_client's handle_file does)")
    return None


def payload_problem(blocks, path: str, raw: bytes) -> str | None:
    """One sentence saying what is wrong with an event call's body, or None to let Gradio handle it."""
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        return "the request body is not valid JSON"
    data = body.get("data") if isinstance(body, dict) else None
    block_fn = _block_fn(blocks, path, body) if isinstance(data, list) else None
    if block_fn is None:
        return None  # not one of our events, or a body Gradio's own validation answers without a traceback
    inputs = list(block_fn.inputs)
    if len(data) < len(inputs):
        return f"this endpoint takes {len(inputs)} input values, got {len(data)}"
    for component, value in zip(inputs, data):
        if isinstance(component, components.Image):
            problem = image_problem(value)
            if problem:
                return problem
    return None


class PayloadGuard:
    """ASGI middleware: event calls with a payload Gradio would fail on get a 422 and one sentence."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if not _is_event_call(scope):
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_BODY:
                return await _answer(send, 413, "the request body is too large for an event call")
        blocks = scope["app"].get_blocks() if hasattr(scope.get("app"), "get_blocks") else None
        problem = payload_problem(blocks, scope["path"], body) if blocks is not None else None
        if problem:
            return await _answer(send, 422, problem)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


async def _answer(send, status: int, message: str) -> None:
    data = json.dumps({"detail": message, "error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
